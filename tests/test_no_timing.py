"""No test asserts wall-clock time: such checks fail on a loaded machine and prove little. Concurrency is
shown by gates and counters instead (tests/scripted.py `waves`, tests/upstream.py `ChunkGate` and
`UpstreamLog.hold_until`). Clocks may still bound a wait (a hang guard), never decide a verdict."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCKS = {
    "time",
    "perf_counter",
    "perf_counter_ns",
    "monotonic",
    "monotonic_ns",
    "time_ns",
    "process_time",
    "thread_time",
    "now",
    "utcnow",
}
CLOCK_OWNERS = {"time", "datetime", "loop"}


def _is_clock_call(node: ast.AST) -> bool:
    """time.perf_counter(), time.monotonic(), time.time(), datetime.now(), loop.time() and the like."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in CLOCKS:
        owner = func.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        return name in CLOCK_OWNERS or (isinstance(owner, ast.Call) and _called_name(owner) == "get_running_loop")
    return isinstance(func, ast.Name) and func.id in {"perf_counter", "monotonic", "perf_counter_ns"}


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _uses(node: ast.AST, tainted: set[str]) -> bool:
    return any(_is_clock_call(n) or (isinstance(n, ast.Name) and n.id in tainted) for n in ast.walk(node))


def _target_names(target: ast.AST) -> set[str]:
    """The variables an assignment target writes (x, x[k], x.attr, tuples of them)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Subscript | ast.Attribute | ast.Starred):
        return _target_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(e) for e in target.elts))
    return set()


def _scopes(tree: ast.Module) -> list[ast.AST]:
    """Each outermost function (with what it nests) and the module's own statements, analysed apart."""
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    functions += [
        m
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        for m in c.body
        if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    rest = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return [*functions, ast.Module(body=rest, type_ignores=[])]


def _tainted_asserts(scope: ast.AST) -> list[int]:
    tainted: set[str] = set()
    for _ in range(5):  # propagate through chains of assignments (started -> elapsed -> gaps)
        before = len(tainted)
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and _uses(node.value, tainted):
                for t in node.targets:
                    tainted |= _target_names(t)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
                if _uses(node.value, tainted):
                    tainted |= _target_names(node.target)
            elif isinstance(node, ast.comprehension) and _uses(node.iter, tainted):
                tainted |= _target_names(node.target)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"append", "extend", "add", "insert", "update", "setdefault"}
                and any(_uses(a, tainted) for a in node.args)
            ):
                tainted |= _target_names(node.func.value)
        if len(tainted) == before:
            break
    return [n.lineno for n in ast.walk(scope) if isinstance(n, ast.Assert) and _uses(n, tainted)]


def timing_assertions(source: str) -> list[int]:
    """Lines of `assert` statements whose verdict depends on a clock reading, directly or through variables."""
    return sorted(line for scope in _scopes(ast.parse(source)) for line in _tainted_asserts(scope))


def test_no_test_asserts_wall_clock_time() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for line in timing_assertions(path.read_text()):
            found.append(f"{path.relative_to(TESTS.parent)}:{line}")
    assert found == [], "assertions that depend on wall-clock time:\n" + "\n".join(found)


def test_the_scan_finds_the_usual_shapes() -> None:
    source = """
import time
async def t(backend):
    started = time.perf_counter()
    elapsed = time.perf_counter() - started
    assert elapsed < 0.25
    arrivals = []
    arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 0.06
    finished = {}
    finished["x"] = time.perf_counter()
    assert finished["x"] < 3
    assert time.time() - 5 > 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass
    assert backend.max_in_flight == 3
"""
    assert timing_assertions(source) == [6, 10, 13, 14]
