import pathlib
import sys
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import message_text  # noqa: E402
from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.engine.registry import builtin_registry  # noqa: E402
from optigraph.errors import InvalidRequest  # noqa: E402
from optigraph.graphs.z3 import SPEC, solver_applies  # noqa: E402
from optigraph.nodes import execute as execute_module  # noqa: E402
from optigraph.sandbox import run_python  # noqa: E402

QUESTION = [{"role": "user", "content": "Two numbers sum to 10 and differ by 2. What are they?"}]

SOLVES = """from z3 import *
x, y = Ints("x y")
s = Solver()
s.add(x + y == 10, x - y == 2)
s.check()
m = s.model()
print(f"x={m[x]} y={m[y]}")"""
FAILS = "print(undefined_name)"


def analysis(code: str | None, applies: bool = True) -> str:
    text = f"The unknowns are x and y, with two linear constraints.\nSOLVER_CAN_BE_APPLIED: {applies}\n"
    return text + (f"```python\n{code}\n```\n" if code is not None else "")


def fixed(code: str) -> str:
    return f"Here is the corrected program:\n```python\n{code}\n```"


def kind(body) -> str:
    """Which of the approach's calls this request is."""
    system = "\n".join(message_text(m) for m in body["messages"] if m.get("role") == "system")
    if last_user(body).startswith("The program failed."):
        return "fix"
    if "What the program printed" in system:
        return "answer"
    if "SOLVER_CAN_BE_APPLIED" in system:
        return "analyze"
    return "reason"


def scripted(analysis_text: str, fixes: list[str] = ()):
    fix_replies = iter(fixes)

    def respond(body):
        call = kind(body)
        if call == "analyze":
            return analysis_text
        if call == "fix":
            return next(fix_replies)
        if call == "answer":
            return "The numbers are 6 and 4."
        return "Plain reasoning: 6 and 4."

    return respond


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind(b) for b in backend.calls]


async def test_success_path_answers_from_the_solver_output_in_two_calls():
    backend = ScriptedBackend(scripted(analysis(SOLVES)))
    request = {"temperature": 0.5, "max_tokens": 300, "tools": [{"type": "function", "function": {"name": "f"}}]}
    state, _ = await run_approach(SPEC, QUESTION, backend, request=request)

    assert kinds(backend) == ["analyze", "answer"]
    analyze_call, answer_call = backend.calls
    assert analyze_call["temperature"] == 0.1 and analyze_call["max_tokens"] == 1024 and "tools" not in analyze_call
    grounded = message_text(answer_call["messages"][0])
    assert "x=6 y=4" in grounded and "SOLVER_CAN_BE_APPLIED" not in grounded
    assert answer_call["messages"][1:] == QUESTION
    assert answer_call["temperature"] == 0.5 and answer_call["max_tokens"] == 300 and answer_call["tools"]
    assert state["answers"][0]["message"]["content"] == "The numbers are 6 and 4."

    [run] = state["executions"]
    assert run["ok"] and run["attempt"] == 1 and run["stdout"].strip() == "x=6 y=4"
    assert "audit_hook" in run["layers"]
    params = SPEC.validate_params(None)
    assert len(backend.calls) <= evaluate(SPEC.calls, params)


async def test_a_failing_program_is_fixed_with_its_error_then_answered():
    backend = ScriptedBackend(scripted(analysis(FAILS), [fixed(SOLVES)]))
    state, _ = await run_approach(SPEC, QUESTION, backend)

    assert kinds(backend) == ["analyze", "fix", "answer"]
    fix_request = last_user(backend.calls[1])
    assert "NameError" in fix_request and "undefined_name" in fix_request
    assert backend.calls[1]["messages"][-2] == {"role": "assistant", "content": analysis(FAILS)}
    first, second = state["executions"]
    assert (first["ok"], first["error_kind"], second["ok"]) == (False, "error", True)
    assert "x=6 y=4" in message_text(backend.calls[2]["messages"][0])
    assert any("run 1 failed (error)" in n for n in state["notes"])


async def test_every_run_failing_falls_back_to_plain_reasoning_without_a_wasted_fix():
    # a timeout, a refused file read, then a program that prints nothing: three different failures
    backend = ScriptedBackend(
        scripted(analysis("while True:\n    pass"), [fixed("print(open('/etc/passwd').read())"), fixed("x = 1")])
    )
    params = {"timeout_s": 2}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)

    assert kinds(backend) == ["analyze", "fix", "fix", "reason"]  # no fix after the third run
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params))
    assert [r["error_kind"] for r in state["executions"]] == ["timeout", "forbidden", "no_output"]
    assert "time limit" in last_user(backend.calls[1])
    assert "/etc/passwd" in last_user(backend.calls[2])
    assert backend.calls[3]["messages"] == QUESTION  # the plain answer sees the conversation as sent
    assert state["answers"][0]["message"]["content"] == "Plain reasoning: 6 and 4."
    assert any("no attempts left after 3 run(s)" in n for n in state["notes"])
    assert any("answering without the solver; 3 run(s) failed, last: no_output" in n for n in state["notes"])
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected  # summed over all four calls


async def test_one_attempt_means_no_fix_call():
    backend = ScriptedBackend(scripted(analysis(FAILS)))
    params = {"max_attempts": 1}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert kinds(backend) == ["analyze", "reason"]
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 2
    assert len(state["executions"]) == 1


async def test_solver_not_applicable_answers_directly():
    backend = ScriptedBackend(scripted(analysis(SOLVES, applies=False)))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["analyze", "reason"]
    assert not state.get("executions")
    assert state["answers"][0]["message"]["content"] == "Plain reasoning: 6 and 4."
    assert any("does not apply" in n for n in state["notes"])
    assert any("it was not applied" in n for n in state["notes"])


async def test_analysis_without_a_program_answers_directly():
    backend = ScriptedBackend(scripted("SOLVER_CAN_BE_APPLIED: True\nbut I forgot the program."))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["analyze", "reason"]
    assert any("no program in the analysis" in n for n in state["notes"])


async def test_a_fix_without_a_program_stops_the_loop():
    backend = ScriptedBackend(scripted(analysis(FAILS), ["I cannot fix it."]))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["analyze", "fix", "reason"]
    assert len(state["executions"]) == 1
    assert any("the reply had no program" in n for n in state["notes"])


async def test_usage_is_summed_over_every_call():
    backend = ScriptedBackend(scripted(analysis(FAILS), [fixed(SOLVES)]))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    expected = backend.total_usage()
    assert expected["calls"] == 3
    assert {k: state["usage"][k] for k in expected} == expected


async def test_the_final_answer_streams():
    backend = ScriptedBackend(scripted(analysis(SOLVES)))
    sink = StreamSink()
    state, _ = await run_approach(SPEC, QUESTION, backend, sink=sink, stream_choice=0)
    assert sink.streamed == {0}
    assert backend.calls[0].get("stream") is None and backend.calls[1]["stream"] is True
    assert state["answers"][0]["message"]["content"] == "The numbers are 6 and 4."


def writes(path: pathlib.Path) -> str:
    """A program that leaves a file behind when it runs (where nothing confines it), then solves."""
    return f"open({str(path)!r}, 'w').write('ran')\n{SOLVES}"


@pytest.fixture
def no_namespaces_or_landlock(monkeypatch):
    """The sandbox as on a kernel that offers neither namespaces nor Landlock (the hook off too)."""
    monkeypatch.setattr(
        execute_module, "run_python", partial(run_python, withhold_layers=("namespaces", "landlock"), audit_guard=False)
    )


async def test_a_sandbox_missing_a_required_layer_answers_without_running_the_program(
    tmp_path, no_namespaces_or_landlock
):
    sentinel = tmp_path / "ran.txt"
    backend = ScriptedBackend(scripted(analysis(writes(sentinel))))
    state, _ = await run_approach(SPEC, QUESTION, backend)  # the default level: strict

    assert not sentinel.exists()
    assert kinds(backend) == ["analyze", "reason"]  # no fix requested: the program is not at fault
    assert backend.calls[1]["messages"] == QUESTION
    assert state["answers"][0]["message"]["content"] == "Plain reasoning: 6 and 4."
    [run] = state["executions"]
    assert (run["ok"], run["error_kind"], run["stdout"]) == (False, "unavailable", "")
    assert set(run["missing_layers"]) == {"namespaces", "tmpfs", "landlock"}
    assert any(
        n.startswith("execute: run 1 not started: sandbox level 'strict' requires") and "landlock" in n
        for n in state["notes"]
    )
    assert (
        "reason: answering without the solver; the sandbox could not run the program "
        "(missing: namespaces, tmpfs, landlock)"
    ) in state["notes"]
    assert not any("no attempts left" in n for n in state["notes"])


async def test_an_explicit_lower_level_runs_the_program_without_those_layers(tmp_path, no_namespaces_or_landlock):
    sentinel = tmp_path / "ran.txt"
    backend = ScriptedBackend(scripted(analysis(writes(sentinel))))
    state, _ = await run_approach(SPEC, QUESTION, backend, sandbox_level="minimal")

    assert sentinel.read_text() == "ran"
    assert kinds(backend) == ["analyze", "answer"]
    [run] = state["executions"]
    assert run["ok"] and run["stdout"].strip() == "x=6 y=4"


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("SOLVER_CAN_BE_APPLIED: True", True),
        ("**SOLVER_CAN_BE_APPLIED:** false", False),
        ("solver_can_be_applied = yes", True),
        ("no verdict here", None),
    ],
)
def test_solver_verdict(text, verdict):
    assert solver_applies(text) is verdict


def test_params_formulas_and_registration():
    params = SPEC.validate_params(None)
    assert params["max_attempts"] == 3 and params["timeout_s"] == 30.0
    assert (SPEC.calls, SPEC.rounds) == ("max_attempts + 1", "max_attempts + 1")
    assert evaluate(SPEC.calls, params) == 4
    assert SPEC.streams_final
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"max_attempts": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"attempts": 3})
    assert builtin_registry().get("z3") is SPEC
