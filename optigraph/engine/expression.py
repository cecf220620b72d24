"""Approach expressions: `a&b` is a pipeline, `a|b` runs branches in parallel, parentheses group.

Grammar (whitespace is ignored between tokens; `&` binds tighter than `|`)::

    expr     := pipeline ('|' pipeline)*
    pipeline := atom ('&' atom)*
    atom     := NAME | '(' expr ')'
    NAME     := [A-Za-z0-9_]+

The AST is made of frozen (hashable, comparable) dataclasses. Nested nodes of the same kind are
flattened, so `a&(b&c)` and `(a&b)&c` both parse to `Pipeline((a, b, c))`.

Plugins: the parser does not know which names are plugins. `with_plugins` rewrites a parsed AST so
that each plugin wraps the rest of its pipeline: `privacy&readurls&moa` becomes
`Plugin(privacy, Plugin(readurls, moa))`, and a plugin with nothing after it wraps the default
expression (`readurls` alone wraps the server's default approach). `to_text` of a wrapped tree is
the plain `&` form again, with the default written out, so the recorded expression is what ran.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from optigraph.errors import ExpressionError, ExpressionTooLarge, UnknownApproach

__all__ = [
    "Approach",
    "Limits",
    "Node",
    "Parallel",
    "Pipeline",
    "Plugin",
    "check_size",
    "check_text",
    "choice_count",
    "is_name",
    "names",
    "parse",
    "to_text",
    "validate",
    "with_plugins",
]

MAX_DEPTH = 64  # parenthesis nesting limit: keeps a hostile expression from exhausting the stack

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_SPACE = frozenset(" \t\r\n\f\v")


@dataclass(frozen=True, slots=True)
class Approach:
    """One approach, by slug."""

    name: str


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Stages run in order; each stage works on what the previous one produced."""

    stages: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Parallel:
    """Branches run concurrently; each contributes its own choices to the answer."""

    branches: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Plugin:
    """A plugin around what it wraps: its pre stage, then `inner`, then its post stage."""

    name: str
    inner: Node


Node: TypeAlias = Approach | Pipeline | Parallel | Plugin


def is_name(text: str) -> bool:
    """Whether `text` is a single NAME token (a possible slug)."""
    return bool(text) and all(c in _NAME_CHARS for c in text)


def pipeline(*nodes: Node) -> Node:
    """A flattened pipeline of `nodes` (the node itself when there is only one)."""
    stages: list[Node] = []
    for node in nodes:
        stages.extend(node.stages if isinstance(node, Pipeline) else (node,))
    return stages[0] if len(stages) == 1 else Pipeline(tuple(stages))


def parallel(*nodes: Node) -> Node:
    """A flattened parallel node of `nodes` (the node itself when there is only one)."""
    branches: list[Node] = []
    for node in nodes:
        branches.extend(node.branches if isinstance(node, Parallel) else (node,))
    return branches[0] if len(branches) == 1 else Parallel(tuple(branches))


class _Parser:
    """Recursive descent over `text[start:end]`; errors report offsets into the whole `text`."""

    def __init__(self, text: str, start: int, end: int) -> None:
        self.text = text
        self.start = start
        self.pos = start
        self.end = end
        self.depth = 0

    def error(self, message: str, position: int) -> ExpressionError:
        return ExpressionError(message, expression=self.text, position=position)

    def skip_space(self) -> None:
        while self.pos < self.end and self.text[self.pos] in _SPACE:
            self.pos += 1

    def peek(self) -> str:
        """The next non-space character, or '' at the end."""
        self.skip_space()
        return self.text[self.pos] if self.pos < self.end else ""

    def parse(self) -> Node:
        if not self.peek():
            raise self.error("empty expression", self.start)
        node = self.expr()
        char = self.peek()
        if char:
            if char == ")":
                raise self.error("unbalanced ')' with no matching '('", self.pos)
            raise self.unexpected(char)
        return node

    def unexpected(self, char: str) -> ExpressionError:
        if char in _NAME_CHARS:
            return self.error("expected '&' or '|' before another approach name", self.pos)
        return self.error(f"unexpected character {char!r}", self.pos)

    def expr(self) -> Node:
        branches = [self.pipeline()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.pipeline())
        return parallel(*branches)

    def pipeline(self) -> Node:
        stages = [self.atom()]
        while self.peek() == "&":
            self.pos += 1
            stages.append(self.atom())
        return pipeline(*stages)

    def atom(self) -> Node:
        char = self.peek()
        if char == ")" and not self.depth:
            raise self.error("unbalanced ')' with no matching '('", self.pos)
        if not char or char in "&|)":
            raise self.error("missing approach name (an operator needs an operand on each side)", self.pos)
        if char == "(":
            return self.group()
        if char not in _NAME_CHARS:
            raise self.error(f"unexpected character {char!r}", self.pos)
        start = self.pos
        while self.pos < self.end and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        return Approach(self.text[start : self.pos])

    def group(self) -> Node:
        opened = self.pos
        self.pos += 1
        if self.peek() == ")":
            raise self.error("empty parentheses", opened)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"parentheses nested deeper than {MAX_DEPTH}", opened)
        node = self.expr()
        char = self.peek()
        if not char:
            raise self.error("unclosed '('", opened)
        if char != ")":
            raise self.unexpected(char)
        self.pos += 1
        self.depth -= 1
        return node


def parse(text: str) -> Node:
    """Parse an approach expression; raises ExpressionError with the 0-based offset of the problem."""
    return _Parser(text, 0, len(text)).parse()


def parse_span(text: str, start: int, end: int) -> Node:
    """Parse `text[start:end]`, reporting errors as offsets into the whole `text`."""
    return _Parser(text, start, end).parse()


def _walk(node: Node) -> Iterator[str]:
    if isinstance(node, Approach):
        yield node.name
    elif isinstance(node, Plugin):
        yield node.name
        yield from _walk(node.inner)
    else:
        for child in node.stages if isinstance(node, Pipeline) else node.branches:
            yield from _walk(child)


def names(node: Node) -> list[str]:
    """The approach names in the expression, left to right, with repeats."""
    return list(_walk(node))


def choice_count(node: Node) -> int:
    """Choices one run produces: 1 per approach, summed over branches, multiplied along a pipeline."""
    if isinstance(node, Approach):
        return 1
    if isinstance(node, Plugin):
        return choice_count(node.inner)
    if isinstance(node, Parallel):
        return sum(choice_count(b) for b in node.branches)
    count = 1
    for stage in node.stages:
        count *= choice_count(stage)
    return count


def to_text(node: Node) -> str:
    """Canonical text with minimal parentheses and no spaces; `parse(to_text(x)) == x` for parsed x."""
    if isinstance(node, Approach):
        return node.name
    if isinstance(node, Plugin):
        inner = node.inner
        return f"{node.name}&" + (f"({to_text(inner)})" if isinstance(inner, Parallel) else to_text(inner))
    if isinstance(node, Pipeline):
        return "&".join(f"({to_text(s)})" if isinstance(s, Parallel) else to_text(s) for s in node.stages)
    return "|".join(to_text(b) for b in node.branches)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one expression may ask for, so that no request makes the server parse, compile
    or run without bound. Each is a server setting (`max_expression_chars`, ...), named in the 400."""

    max_chars: int = 512  # characters of the expression text
    max_nodes: int = 64  # approach names in it, repeats counted
    max_choices: int = 64  # choices one request produces: choice_count(expression) * n


def check_text(text: str, limits: Limits, *, param: str | None = "model") -> None:
    """Raise ExpressionTooLarge when `text` is longer than the limit (checked before it is parsed)."""
    if len(text) > limits.max_chars:
        raise ExpressionTooLarge(
            f"the approach expression is {len(text)} characters long; this server allows at "
            f"most {limits.max_chars} (max_expression_chars)",
            param=param,
        )


def check_size(node: Node, limits: Limits, *, n: int = 1, param: str | None = "model") -> None:
    """Raise ExpressionTooLarge when `node` names too many approaches, or its `n` runs would produce
    too many choices. Cheap: one walk of a tree that parsing has already built."""
    count = sum(1 for _ in _walk(node))
    if count > limits.max_nodes:
        raise ExpressionTooLarge(
            f"the approach expression names {count} approaches; this server allows at most "
            f"{limits.max_nodes} (max_expression_nodes)",
            param=param,
        )
    per_run = choice_count(node)
    if per_run * n > limits.max_choices:
        detail = f" ({per_run} per run, n={n})" if n > 1 else ""
        blame = "n" if n > 1 and per_run <= limits.max_choices else param  # n alone made it too many
        raise ExpressionTooLarge(
            f"the request would produce {per_run * n} choices{detail}; this server allows at "
            f"most {limits.max_choices} (max_choices)",
            param=blame,
        )


def validate(node: Node, known: Collection[str]) -> None:
    """Raise UnknownApproach for the first name in `node` that is not in `known`."""
    for name in _walk(node):
        if name not in known:
            raise UnknownApproach(f"unknown approach {name!r}; known: {', '.join(sorted(known))}", param="model")


def with_plugins(node: Node, plugins: Collection[str], default: Node) -> Node:
    """`node` with every plugin wrapping the rest of its pipeline (or `default` when nothing follows).

    `default` is itself rewritten with `Approach("none")` as its own default, so a default made of
    plugins only still ends in an approach."""
    if not plugins or not any(name in plugins for name in _walk(node)):
        return node
    fallback = with_plugins(default, plugins, Approach("none")) if default != Approach("none") else default
    return _wrap(node, frozenset(plugins), fallback)


def _wrap(node: Node, plugins: frozenset[str], default: Node) -> Node:
    if isinstance(node, Approach):
        return Plugin(node.name, default) if node.name in plugins else node
    if isinstance(node, Plugin):
        return Plugin(node.name, _wrap(node.inner, plugins, default))
    if isinstance(node, Parallel):
        return Parallel(tuple(_wrap(b, plugins, default) for b in node.branches))
    stages = list(node.stages)
    for k, stage in enumerate(stages):
        if isinstance(stage, Approach) and stage.name in plugins:
            rest = pipeline(*stages[k + 1 :]) if k + 1 < len(stages) else default
            wrapped = Plugin(stage.name, _wrap(rest, plugins, default))
            return pipeline(*[_wrap(s, plugins, default) for s in stages[:k]], wrapped)
    return Pipeline(tuple(_wrap(s, plugins, default) for s in stages))
