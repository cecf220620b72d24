"""pal (program-aided): programs run in the real sandbox, failing ones are repaired with their error,
printed answers are voted adaptively, prose answers join the vote when programs disagree or none runs,
and the declared cost bounds what a run spends."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest
from scripted import ScriptedBackend, last_user, run_approach

from optigraph.core.cost import evaluate
from optigraph.core.llm import message_text
from optigraph.engine.expression import parse
from optigraph.engine.registry import builtin_registry
from optigraph.errors import InvalidRequest
from optigraph.graphs.pal import SPEC
from optigraph.nodes import execute as execute_module
from optigraph.sandbox import SandboxUnavailable

QUESTION = [{"role": "user", "content": "Ann has 3 boxes of 12 eggs and uses 7. How many eggs are left?"}]


def program(value: str, *, fail: bool = False, silent: bool = False) -> str:
    if fail:
        body = "eggs = 3 * 12\nleft = eggs - used\nprint(left)"  # NameError: used
    elif silent:
        body = "eggs = 3 * 12\nleft = eggs - 7"
    else:
        body = f"eggs = 3 * 12\nused = 7\nprint({value})"
    return f"Multiply the boxes by the eggs per box, then take away the eggs used.\n```python\n{body}\n```"


def kind(body) -> str:
    system = "\n".join(message_text(m) for m in body["messages"] if m.get("role") == "system")
    if "Solve the problem with a Python program" not in system:
        return "prose"
    return "repair" if last_user(body).startswith("The program did not print an answer") else "write"


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind(body) for body in backend.calls]


def scripted(writes: list[str], *, repairs: list[str] = (), prose: str = "So the answer is 29.") -> ScriptedBackend:
    """Program replies in order of writing (one per choice), repairs in order, prose always `prose`."""
    queue, fixes = list(writes), list(repairs)

    def respond(body):
        call = kind(body)
        if call == "write":
            return queue.pop(0)
        if call == "repair":
            return fixes.pop(0)
        return prose

    return ScriptedBackend(respond)


def content(state) -> str:
    return state["answers"][0]["message"]["content"]


async def test_two_agreeing_programs_settle_it_in_one_call():
    backend = scripted([program("eggs - used"), program("36 - 7")])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["write"] and backend.calls[0]["n"] == 2
    asked = last_user(backend.calls[0])
    assert asked.startswith(QUESTION[0]["content"]) and asked.endswith("ends with print(answer).")  # reminder last
    text = content(state)
    assert text.endswith("Final answer: 29")
    assert "Multiply the boxes by the eggs per box" in text  # the explanation in words
    assert "```python\neggs = 3 * 12\nused = 7\nprint(eggs - used)\n```" in text  # the program that produced it
    assert "The program printed: 29" in text and "2 of 2 program(s)" in text
    assert len(state["executions"]) == 2 and all(e["ok"] for e in state["executions"])


async def test_disagreement_draws_more_programs_until_a_lead():
    backend = scripted([program("29"), program("31"), program("29"), program("29")])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["write", "write"]  # 1-1, then 3-1: lead 2 -> stop at 4 of 5
    assert content(state).endswith("Final answer: 29")
    assert any("3 of 4 agree" in n for n in state["notes"])


async def test_a_failing_program_is_repaired_with_its_error():
    backend = scripted([program("", fail=True), program("36 - 7")], repairs=[program("eggs - used")])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["write", "repair"]
    repair_request = last_user(backend.calls[1])
    assert "NameError" in repair_request and "used" in repair_request  # the error, shown to the model
    assert [m["role"] for m in backend.calls[1]["messages"]][-2:] == ["assistant", "user"]
    assert [e["ok"] for e in state["executions"]] == [False, True, True]
    assert content(state).endswith("Final answer: 29")


async def test_a_silent_program_is_repaired_and_repairs_are_bounded():
    silent = program("", silent=True)
    backend = scripted([silent, silent], repairs=[silent] * 4)
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 2, "max_repairs": 2, "prose_samples": 1})
    # two programs, each repaired twice (two concurrent repairs per round), all silent; then prose
    assert kinds(backend) == ["write", "repair", "repair", "repair", "repair", "prose"]
    assert all(e["error_kind"] == "no_output" for e in state["executions"]) and len(state["executions"]) == 6
    assert "printed nothing" in last_user(backend.calls[1])
    assert content(state) == "So the answer is 29."  # the prose answer, the only one left
    assert len(backend.calls) <= evaluate(SPEC.calls, SPEC.validate_params({"samples": 2}))


async def test_programs_that_disagree_at_the_budget_vote_with_a_prose_answer():
    backend = scripted([program("29"), program("31")], prose="36 - 7 = 29. Final answer: 29")
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 2, "adaptive": False})
    assert kinds(backend) == ["write", "prose"]
    text = content(state)
    assert text.endswith("Final answer: 29") and "A direct answer agreed." in text and "```python" in text
    assert state["contested"] is True


async def test_prose_wins_when_it_outvotes_the_programs():
    backend = ScriptedBackend(
        lambda body: {"write": program("31") if body["choice_index"] else program("30")}.get(kind(body), "It is 29.")
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 2, "adaptive": False, "prose_samples": 3})
    assert kinds(backend) == ["write", "prose"] and backend.calls[1]["n"] == 3
    assert content(state) == "It is 29."


async def test_cut_prose_answers_do_not_vote_while_programs_answer():
    backend = ScriptedBackend(
        lambda body: {"write": program("31") if body["choice_index"] else program("29")}.get(
            kind(body), {"content": "Let me think: 36 - 7 = 31", "finish_reason": "length"}
        )
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 2, "adaptive": False, "prose_samples": 2})
    assert content(state).endswith("Final answer: 29")  # two cut "31"s would have outvoted it
    assert any("2 cut at max_tokens not counted" in n for n in state["notes"])


async def test_fixed_draws_every_program_at_once():
    backend = scripted([program("29")] * 5)
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"adaptive": False})
    assert kinds(backend) == ["write"] and backend.calls[0]["n"] == 5
    assert "5 of 5 program(s)" in content(state)


async def test_sandbox_refusal_runs_nothing_and_answers_in_prose(monkeypatch):
    async def refuse(code, **kwargs):
        raise SandboxUnavailable(level="strict", missing={"landlock": "not supported"}, layers=frozenset())

    monkeypatch.setattr(execute_module, "run_python", refuse)
    backend = scripted([program("29"), program("29")], prose="Final answer: 29")
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["write", "prose"]  # no repair of a refusal, no second round
    assert [e["error_kind"] for e in state["executions"]] == ["unavailable", "unavailable"]
    assert content(state) == "Final answer: 29"


def test_cost_declarations():
    params = SPEC.validate_params({})
    assert params["samples"] == 5 and params["adaptive"] is True and params["batch"] == 2
    # 3 write rounds (2 + 2 + 1), 5 x 2 repairs, 1 prose call
    assert evaluate(SPEC.calls, params) == 3 + 10 + 1
    assert evaluate(SPEC.rounds, params) == 3 * 3 + 1
    assert evaluate(SPEC.expected_calls, params) == 1
    fixed = SPEC.validate_params({"adaptive": False, "max_repairs": 0, "prose_samples": 0})
    assert evaluate(SPEC.calls, fixed) == evaluate(SPEC.rounds, fixed) == 1
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"max_repairs": 9})


async def test_the_worst_case_stays_within_the_declared_calls():
    backend = ScriptedBackend(
        lambda body: {"write": program("", fail=True), "repair": program("", fail=True)}.get(kind(body), "no idea")
    )
    params = SPEC.validate_params({})
    await run_approach(SPEC, QUESTION, backend)
    assert len(backend.calls) == evaluate(SPEC.calls, params)  # every program failed every repair


def test_usable_in_expressions():
    registry = builtin_registry()
    assert registry.approach("pal") is SPEC
    assert parse("pal|self_consistency") is not None and parse("re2&pal") is not None


async def test_the_explanation_drops_the_models_own_guess():
    reply = (
        "Multiply, then subtract.\nFinal answer: 31\n```python\nprint(36 - 7)\n```\n```output\n31\n```\n"
        "The final answer is \\( \\boxed{31} \\).\n**Answer:** 31"
    )
    backend = scripted([reply, reply])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    text = content(state)
    assert "31" not in text and text.startswith("Multiply, then subtract.") and text.endswith("Final answer: 29")


async def test_program_calls_take_the_clients_max_tokens_unless_set():
    backend = scripted([program("29"), program("29")])
    await run_approach(SPEC, QUESTION, backend, request={"max_tokens": 300})
    assert backend.calls[0]["max_tokens"] == 300
    backend = scripted([program("29"), program("29")])
    await run_approach(SPEC, QUESTION, backend, request={"max_tokens": 300}, params={"write_max_tokens": 700})
    assert backend.calls[0]["max_tokens"] == 700
    backend = scripted([program("29"), program("29")])
    await run_approach(SPEC, QUESTION, backend)
    assert backend.calls[0]["max_tokens"] == 1024


async def test_a_worked_example_comes_before_the_conversation_and_its_program_is_right():
    from optigraph.evals.grading import extract_code
    from optigraph.graphs.pal import EXAMPLE_PROGRAM, EXAMPLE_QUESTION
    from optigraph.sandbox import DEFAULT_LEVEL

    backend = scripted([program("29"), program("29")])
    await run_approach(SPEC, QUESTION, backend)
    roles = [m["role"] for m in backend.calls[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    shown = backend.calls[0]["messages"][1:3]
    assert shown[0]["content"].startswith(EXAMPLE_QUESTION) and shown[1]["content"] == EXAMPLE_PROGRAM
    assert backend.calls[0]["messages"][-1]["content"].startswith(QUESTION[0]["content"])
    ran = await execute_module.execute(extract_code(EXAMPLE_PROGRAM), node="t", attempt=1, level=DEFAULT_LEVEL)
    assert ran["executions"][0]["stdout"].strip() == "3"  # (4 * 12 - 30) // 6

    backend = scripted([program("29"), program("29")])
    await run_approach(SPEC, QUESTION, backend, params={"example": False})
    assert [m["role"] for m in backend.calls[0]["messages"]] == ["system", "user"]


async def test_program_calls_stop_where_the_block_closes():
    from optigraph.graphs.pal import CODE_END

    cut = "Multiply, then subtract.\n```python\nprint(3 * 12 - 7)"  # as an upstream returns it, stopped at CODE_END
    backend = scripted([cut, cut])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert all(body.get("stop") == [CODE_END] for body in backend.calls)
    text = content(state)
    assert text.startswith("Multiply, then subtract.\n\n```python\nprint(3 * 12 - 7)\n```")
    assert text.endswith("Final answer: 29")
    backend = scripted(["no program here", "still none"], repairs=[cut, cut])
    await run_approach(SPEC, QUESTION, backend, params={"samples": 2})
    assert [kind(b) for b in backend.calls][:3] == ["write", "repair", "repair"]
    assert all(b.get("stop") == [CODE_END] for b in backend.calls if kind(b) != "prose")


async def test_a_copy_of_the_worked_example_is_repaired_not_voted():
    from optigraph.graphs.pal import COPIED_EXAMPLE, EXAMPLE_PROGRAM

    copied = EXAMPLE_PROGRAM.replace("print(answer)", 'print("Final answer:", answer)  # the example again')
    backend = scripted([copied, program("29"), program("29")], repairs=[program("29")])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"batch": 1})
    assert content(state).endswith("Final answer: 29")
    repair_bodies = [b for b in backend.calls if kind(b) == "repair"]
    assert repair_bodies and COPIED_EXAMPLE in last_user(repair_bodies[0])
    assert "printed: 3" not in content(state)
