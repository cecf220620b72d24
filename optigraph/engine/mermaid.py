"""Mermaid text of a compiled graph: LangGraph's drawing, with the nodes it leaves out put back.

LangGraph's `draw_mermaid` writes each node once, inside the block of its child graph, but skips the
child graphs of a child graph that has no edges of its own to draw (the `2.re2` step of `bon&re2|moa`).
Their nodes then appear in edges only, and Mermaid labels a node it meets only in an edge with its
escaped id (`bon\\26re2\\3a2\\2ere2\\3areread_answer`). They are declared here, with their own name as the
label, in a block for their child graph placed in its parent's block.
"""

from __future__ import annotations

import re
import string
from typing import Any

SAFE = frozenset(string.ascii_letters + string.digits + "_-")


def safe_id(name: str) -> str:
    """A node's Mermaid id as LangGraph writes it: other characters become a backslash and hex code."""
    return "".join(ch if ch in SAFE else "\\" + format(ord(ch), "x") for ch in name)


def draw_mermaid(drawable: Any) -> str:
    """`drawable.draw_mermaid()` (a langchain_core Graph) with every node declared with a label."""
    text: str = drawable.draw_mermaid()
    lines = text.split("\n")
    declared = {m.group(1) for line in lines if (m := re.match(r"\t(\S+?)(?:\(|\[)", line))}
    missing: dict[str, list[str]] = {}  # child graph prefix -> its undeclared nodes
    for name in drawable.nodes:
        if safe_id(name) not in declared and ":" in name:
            missing.setdefault(name.rsplit(":", 1)[0], []).append(name)
    for prefix, names in missing.items():
        block = [f"\tsubgraph {prefix.rsplit(':', 1)[-1]}"]
        block += [f"\t{safe_id(n)}({n.rsplit(':', 1)[-1]})" for n in names]
        block.append("\tend")
        parent = prefix.rsplit(":", 1)[0] if ":" in prefix else None
        header = f"\tsubgraph {parent.rsplit(':', 1)[-1]}" if parent else None
        at = next((i + 1 for i, line in enumerate(lines) if header and line == header), None)
        if at is None:  # a top-level child graph: before the styles
            at = next((i for i, line in enumerate(lines) if line.startswith("\tclassDef")), len(lines))
        lines[at:at] = block
    return "\n".join(lines)
