import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.rto import DESCRIBE_PROMPT, SPEC, answers_agree, normalize_code  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

SYSTEM = {"role": "system", "content": "You write Python."}
HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
QUERY = "Write is_even(n)."
MESSAGES = [SYSTEM, *HISTORY, {"role": "user", "content": QUERY}]
FIRST = "Here it is:\n```python\ndef is_even(n):\n    return n % 2 == 0\n```"
DESCRIPTION = "Write a Python function is_even(n) returning whether n is even."
SECOND_SAME = "```python\n# checks parity\ndef is_even(n):\n\n    return n % 2  ==  0\n```"
SECOND_DIFFERENT = "```python\ndef is_even(n):\n    return n % 2 == 1\n```"


def stage(body, description=DESCRIPTION):
    prompt = last_user(body)
    if prompt == DESCRIBE_PROMPT:
        return "describe"
    if "The two responses disagree" in prompt:
        return "reconcile"
    if prompt == description:
        return "regenerate"
    return "answer"


def scripted(first=FIRST, description=DESCRIPTION, second=SECOND_DIFFERENT, final="Final:\n```python\nfixed\n```"):
    def respond(body):
        kind = stage(body, description if isinstance(description, str) else DESCRIPTION)
        return {"answer": first, "describe": description, "regenerate": second, "reconcile": final}[kind]

    return respond


async def test_full_round_trip_when_the_answers_differ():
    backend = ScriptedBackend(scripted())
    request = {"temperature": 0.5, "max_tokens": 700, "tools": [{"type": "function", "function": {"name": "f"}}]}
    state, _ = await run_approach(SPEC, MESSAGES, backend, request=request)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({})) == 4
    assert [stage(b) for b in backend.calls] == ["answer", "describe", "regenerate", "reconcile"]
    answer, describe, regenerate, reconcile = backend.calls

    assert answer["messages"] == MESSAGES and answer["temperature"] == 0.5 and answer["max_tokens"] == 700
    # the description is asked in the same conversation, after the first answer
    assert describe["messages"] == [
        *MESSAGES,
        {"role": "assistant", "content": FIRST},
        {"role": "user", "content": DESCRIBE_PROMPT},
    ]
    assert describe["max_tokens"] == 1024 and "tools" not in describe
    # the regeneration sees the description alone (the client's system prompt kept)
    assert regenerate["messages"] == [SYSTEM, {"role": "user", "content": DESCRIPTION}]
    assert regenerate["temperature"] == 0.5
    # the reconciliation compares both against the original query, in the original conversation
    prompt = last_user(reconcile)
    assert QUERY in prompt and FIRST in prompt and SECOND_DIFFERENT in prompt
    assert reconcile["messages"][:3] == MESSAGES[:3]
    assert state["answers"][0]["message"]["content"] == "Final:\n```python\nfixed\n```"
    assert state["description"] == DESCRIPTION and state["agree"] is False
    assert any("differ (code)" in n for n in state["notes"])
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_agreeing_code_returns_the_first_answer_with_its_explanation():
    backend = ScriptedBackend(scripted(second=SECOND_SAME))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert [stage(b) for b in backend.calls] == ["answer", "describe", "regenerate"]
    assert state["answers"][0]["message"]["content"] == FIRST
    assert state["agree"] is True and any("agree (code)" in n for n in state["notes"])


async def test_non_code_answers_compare_their_final_answers():
    question = [{"role": "user", "content": "How many legs do three spiders have?"}]
    backend = ScriptedBackend(
        scripted(first="3 x 8, so the answer is 24.", description="Count legs of 3 spiders.", second="Final answer: 24")
    )
    state, _ = await run_approach(SPEC, question, backend)
    assert len(backend.calls) == 3 and state["answers"][0]["message"]["content"] == "3 x 8, so the answer is 24."
    assert any("agree (final answer)" in n for n in state["notes"])

    backend = ScriptedBackend(scripted(first="The answer is 24.", second="The answer is 16.", final="It is 24."))
    state, _ = await run_approach(SPEC, question, backend)
    assert [stage(b) for b in backend.calls] == ["answer", "describe", "regenerate", "reconcile"]
    assert backend.calls[2]["messages"] == [
        {"role": "user", "content": DESCRIPTION}
    ]  # no system prompt to keep and state["answers"][0]["message"]["content"] == "It is 24."


async def test_calls_are_dependent_rounds():
    backend = ScriptedBackend(scripted(), waves=[1, 1, 1, 1])
    await run_approach(SPEC, MESSAGES, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == []  # each call waits for the one before it
    assert rounds == 4 == len(backend.calls) and backend.max_in_flight == 1


async def test_reconciliation_streams():
    sink = StreamSink()
    backend = ScriptedBackend(scripted(final="merged answer here"))
    state, _ = await run_approach(SPEC, MESSAGES, backend, sink=sink, stream_choice=0)
    assert backend.calls[-1].get("stream") is True and all(b.get("stream") is None for b in backend.calls[:-1])
    assert sink.streamed == {0}
    assert state["answers"][0]["message"]["content"] == "merged answer here"


@pytest.mark.parametrize(
    ("failing", "calls"),
    [("describe", 2), ("regenerate", 3), ("reconcile", 4)],
)
async def test_failed_later_steps_return_the_first_answer(failing, calls):
    kwargs = {
        "description" if failing == "describe" else "second" if failing == "regenerate" else "final": UpstreamError(
            f"{failing} down"
        )
    }
    backend = ScriptedBackend(scripted(**kwargs))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert len(backend.calls) == calls
    assert state["answers"][0]["message"]["content"] == FIRST
    assert any(f"{failing}: failed, returning the first answer: {failing} down" in n for n in state["notes"])


async def test_empty_steps_return_the_first_answer():
    backend = ScriptedBackend(scripted(description=""))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert len(backend.calls) == 2 and state["answers"][0]["message"]["content"] == FIRST
    backend = ScriptedBackend(scripted(second=""))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert len(backend.calls) == 3 and state["answers"][0]["message"]["content"] == FIRST
    assert any("no regenerated answer (empty)" in n for n in state["notes"])


async def test_empty_or_tool_call_first_answer_is_returned_as_it_is():
    backend = ScriptedBackend(scripted(first=""))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert len(backend.calls) == 1 and state["answers"][0]["message"]["content"] == ""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    backend = ScriptedBackend(scripted(first={"content": None, "tool_calls": [call], "finish_reason": "tool_calls"}))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert len(backend.calls) == 1
    assert state["answers"][0]["message"]["tool_calls"] == [call]
    assert state["answers"][0]["finish_reason"] == "tool_calls"


async def test_first_failure_raises_and_budget_propagates():
    backend = ScriptedBackend(scripted(first=UpstreamError("upstream is down")))
    with pytest.raises(UpstreamError, match="upstream is down"):
        await run_approach(SPEC, MESSAGES, backend)
    llm = LLM(
        backend=ScriptedBackend(scripted()), model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=2)
    )
    with pytest.raises(BudgetExceeded):
        await (
            SPEC.build()
            .compile()
            .ainvoke(
                {"messages": MESSAGES, "request": {}, "params": SPEC.validate_params({})},
                context=RunContext(run_id="t", llm=llm),
            )
        )


async def test_temperature_precedence():
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, MESSAGES, backend)
    assert [b["temperature"] for b in backend.calls] == [0.1] * 4
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, MESSAGES, backend, request={"temperature": 0.9}, params={"temperature": 0.0})
    assert [b["temperature"] for b in backend.calls] == [0.0] * 4


# ---- pieces -------------------------------------------------------------------------------------


def test_normalize_code_ignores_layout_and_comment_lines():
    assert normalize_code("def f():\n\n    # note\n    return  1  \n") == normalize_code("def f():\n    return 1")
    assert normalize_code("#include <x>\nint a;") == "#include <x>\nint a;"  # a directive is not a comment


def test_answers_agree():
    assert answers_agree(FIRST, SECOND_SAME) == (True, "code")
    assert answers_agree(FIRST, SECOND_DIFFERENT) == (False, "code")
    assert answers_agree(FIRST, "no code at all") == (False, "code")
    assert answers_agree("The answer is 1,000.", "Final answer: 1000") == (True, "final answer")
    assert answers_agree("Blue skies.", "blue   skies.") == (True, "text")
    # every block counts, in order; prose around them does not
    two = "First:\n```python\na = 1\n```\nthen:\n```\nb = 2\n```"
    assert answers_agree(two, "```python\na = 1\n```\n```python\nb = 2\n```") == (True, "code")
    assert answers_agree(two, "```python\nb = 2\n```\n```python\na = 1\n```") == (False, "code")


def test_graph_structure_and_params():
    graph = SPEC.build().compile().get_graph()
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "answer"),
        ("answer", "describe"),
        ("describe", "regenerate"),
        ("regenerate", "compare"),
        ("compare", "reconcile"),
        ("compare", "keep_first"),
        ("reconcile", "__end__"),
    } <= edges
    assert (SPEC.calls, SPEC.rounds, SPEC.streams_final) == ("4", "4", True)
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"describe_max_tokens": 0})


async def test_reconciliation_failing_before_any_token_falls_back_when_streaming():
    sink = StreamSink()
    backend = ScriptedBackend(scripted(final=UpstreamError("reconciler down")))
    state, _ = await run_approach(SPEC, MESSAGES, backend, sink=sink, stream_choice=0)
    assert sink.streamed == set()  # nothing reached the client, so the runner sends the first answer
    assert state["answers"][0]["message"]["content"] == FIRST
