"""The package's layers: every import points down, lazy imports included, and no module is in a circle.

The layers (docs/architecture.md): cli -> evals -> api -> engine -> graphs, plugins -> nodes -> core;
engine -> backends -> local -> core; core -> memory, sandbox, telemetry -> config, errors. A package may import
itself and what `ALLOWED` lists for it (transitively closed below), nothing else.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "optigraph"

# What each top-level part of the package may import directly (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "config_file": {"config", "errors"},  # the YAML settings file (serve --config, config check)
    "memory": {"config", "errors"},
    "sandbox": {"config", "errors"},
    "telemetry": {"config", "errors"},
    "core": {"memory", "sandbox", "telemetry"},
    "local": {"core"},
    "backends": {"local", "core"},
    "nodes": {"core"},
    "graphs": {"nodes", "local"},
    "plugins": {"nodes"},
    "engine": {"graphs", "plugins", "backends"},
    "api": {"engine"},
    "evals": {"api"},
    "optillm_compat": {"config"},  # OptILLM's flags and variables as settings
    "doctor": {"engine", "config_file"},  # `optigraph doctor`: probes the database, upstreams and sandbox
    "cli": {"evals", "optillm_compat", "config_file", "doctor"},
    "__init__": {"engine"},  # the public authoring API, re-exported lazily,
    "__main__": {"cli"},
}


def _closure() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}

    def below(part: str) -> set[str]:
        if part not in out:
            found: set[str] = set()
            for dep in ALLOWED[part]:
                found |= {dep} | below(dep)
            out[part] = found
        return out[part]

    for part in ALLOWED:
        below(part)
    return out


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every optigraph module a file imports, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("optigraph")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("optigraph"):
                continue
            # `from optigraph.nodes import rate` imports the module optigraph.nodes.rate
            found.append((node.lineno, module))
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    found.append((node.lineno, candidate))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _files() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_every_part_is_placed_in_a_layer() -> None:
    parts = {_part(_module_name(p)) for p in _files()}
    assert parts <= set(ALLOWED), f"place these in ALLOWED: {sorted(parts - set(ALLOWED))}"


def test_imports_point_down() -> None:
    allowed = _closure()
    wrong = []
    for path in _files():
        own = _part(_module_name(path))
        for line, module in _imports(path):
            target = _part(module)
            if target != own and target not in allowed[own] and module != "optigraph":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({target})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = {_module_name(p): p for p in _files()}
    graph = {m: sorted({t for _, t in _imports(p) if t in modules and t != m}) for m, p in modules.items()}
    # A package's __init__ is imported before its children: an import of `a.b` also imports `a`.
    for m in list(graph):
        for t in list(graph[m]):
            parent = t.rpartition(".")[0]
            while parent and parent != "optigraph":
                if parent in modules and parent != m and not m.startswith(parent + "."):
                    graph[m].append(parent)
                parent = parent.rpartition(".")[0]
    cycles = _strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative; the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, []))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found
