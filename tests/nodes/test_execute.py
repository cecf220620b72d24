from functools import partial

import pytest

from optigraph.nodes import execute as execute_module
from optigraph.nodes.execute import (
    code_blocks,
    execute,
    extract_code,
    failure_report,
    unavailable,
    without_code,
)
from optigraph.sandbox import run_python

PROGRAM = "print(6 * 7)"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (f"Here:\n```python\n{PROGRAM}\n```\nDone.", PROGRAM),
        (f"```py\nprint(1)\n```\nthen the real one\n```python\n{PROGRAM}\n```", PROGRAM),  # the last Python block
        (f"```text\nnot code\n```\n```\n{PROGRAM}\n```", PROGRAM),  # else the last unlabelled one
        (f"<think>```python\nprint('draft')\n```</think>\n```python\n{PROGRAM}\n```", PROGRAM),
        (f"Cut off mid-program:\n```python\n{PROGRAM}\nprint(", f"{PROGRAM}\nprint("),
        ("No code at all.", None),
        ("```python\n\n```", None),
    ],
)
def test_extract_code(text, code):
    assert (extract_code(text) or None) == (code + "\n" if code and not code.endswith("(") else code)


def test_code_blocks_and_prose():
    text = "Analysis.\n```python\nx = 1\n```\nMore prose.\n~~~\nraw\n~~~"
    assert code_blocks(text) == [("python", "x = 1\n"), ("", "raw\n")]
    assert without_code(text) == "Analysis.\n\nMore prose."


async def test_a_successful_run_is_recorded():
    update = await execute(PROGRAM, node="execute", attempt=1, level="strict")
    [record] = update["executions"]
    assert record["ok"] and record["error_kind"] is None and record["stdout"] == "42\n"
    assert record["attempt"] == 1 and record["code"] == PROGRAM and "audit_hook" in record["layers"]
    assert update["notes"] == [f"execute: run 1 succeeded in {record['seconds']:.2f} s"]


@pytest.mark.parametrize(
    ("code", "kind", "hint"),
    [
        ("raise ValueError('bad input')", "error", "ValueError: bad input"),
        ("x = 1", "no_output", "printed nothing"),
        ("print(open('/etc/passwd').read())", "forbidden", "/etc/passwd"),
        ("while True:\n    pass", "timeout", "time limit"),
        ("def broken(:\n    pass", "error", "SyntaxError"),
    ],
)
async def test_failures_are_recorded_not_raised(code, kind, hint):
    update = await execute(code, node="execute", attempt=2, level="strict", timeout_s=2)
    [record] = update["executions"]
    assert (record["ok"], record["error_kind"]) == (False, kind)
    assert f"run 2 failed ({kind})" in update["notes"][0]
    assert hint in failure_report(record)


async def test_without_a_required_layer_nothing_runs_and_the_note_says_why(tmp_path, monkeypatch):
    # the sandbox as on a kernel without namespaces and Landlock (and the hook off): only the level's
    # check stands between the program and a file next to the test
    monkeypatch.setattr(
        execute_module, "run_python", partial(run_python, withhold_layers=("namespaces", "landlock"), audit_guard=False)
    )
    sentinel = tmp_path / "ran.txt"
    code = f"open({str(sentinel)!r}, 'w').write('ran')\nprint('ran')"

    update = await execute(code, node="execute", attempt=1, level="strict")
    [record] = update["executions"]
    assert not sentinel.exists()
    assert (record["ok"], record["error_kind"], record["exit_code"]) == (False, "unavailable", None)
    assert record["stdout"] == record["stderr"] == ""
    assert unavailable(record)
    assert set(record["missing_layers"]) == {"namespaces", "tmpfs", "landlock"}
    assert "seccomp" in record["layers"] and "landlock" not in record["layers"]
    [note] = update["notes"]
    assert note.startswith("execute: run 1 not started: sandbox level 'strict' requires layers that are not in force")
    assert "landlock (withheld (testing))" in note and note.endswith("the program was not run")
    assert "not run" in failure_report(record)

    update = await execute(code, node="execute", attempt=1, level="minimal")  # the explicit lower level
    [record] = update["executions"]
    assert record["ok"] and record["stdout"] == "ran\n" and not unavailable(record)
    assert sentinel.read_text() == "ran"
