import json
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
from optigraph.graphs.leap import (  # noqa: E402
    SPEC,
    examples_from_text,
    examples_from_turns,
    learned_principles,
    parse_examples,
    same_answer,
)
from optigraph.memory.records import NullRecorder  # noqa: E402

SYSTEM = {"role": "system", "content": "Answer arithmetic questions."}
# examples written so that only the model can find them
PROSE = [
    SYSTEM,
    {
        "role": "user",
        "content": "Worked examples. Twelve plus thirty gives 42; seven times six gives 42; "
        "nine minus four gives 5. Now: what is eight times seven?",
    },
]
EXAMPLES = [
    {"question": "What is 12 + 30?", "answer": "42"},
    {"question": "What is 7 * 6?", "answer": "42"},
    {"question": "What is 9 - 4?", "answer": "5"},
]
FEW_SHOT = [
    SYSTEM,
    {
        "role": "user",
        "content": "Q: What is 2 + 2?\nA: 4\n\nQ: What is 3 * 3?\nA: The answer is 9.\n\nQ: What is 8 * 7?\nA:",
    },
]


def stage(body):
    prompt = last_user(body)
    if "worked examples" in prompt and "<output>" in prompt:
        return "find_examples"
    if "Solve this step by step" in prompt:
        return "attempt"
    if "Compare your answer with the correct answer" in prompt:
        return "learn"
    if "Condense them" in prompt:
        return "condense"
    if "Before it is answered" in prompt:
        return "principles_for_question"
    return "answer"


def scripted(
    examples=EXAMPLES,
    attempt="Final answer: 41",
    learn=None,
    condense="1. Recheck every product.\n2. Carry digits carefully.",
    question_principles="1. Multiply digit by digit.",
    answer="56",
):
    def respond(body):
        kind = stage(body)
        prompt = last_user(body)
        if kind == "find_examples":
            return (
                examples if isinstance(examples, (str, BaseException)) else f"<output>{json.dumps(examples)}</output>"
            )
        if kind == "attempt":
            return attempt(prompt) if callable(attempt) else attempt
        if kind == "learn":
            if learn is not None:
                return learn(prompt) if callable(learn) else learn
            question = prompt.split("\n")[1]
            return f"I slipped.\nPrinciples:\n1. Check {question}\n2. Recheck every product."
        if kind == "condense":
            return condense
        if kind == "principles_for_question":
            return question_principles
        return answer

    return respond


async def test_full_path_with_model_extracted_examples():
    backend = ScriptedBackend(scripted())
    params = {"max_examples": 2}
    state, _ = await run_approach(SPEC, PROSE, backend, params=params, request={"temperature": 0.2, "max_tokens": 50})
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 7
    assert [stage(b) for b in backend.calls] == [
        "find_examples",
        "attempt",
        "attempt",
        "learn",
        "learn",
        "condense",
        "answer",
    ]
    assert [e["question"] for e in state["examples"]] == ["What is 12 + 30?", "What is 7 * 6?"]  # at most 2

    extract = backend.calls[0]
    assert PROSE[1]["content"] in last_user(extract) and extract["temperature"] == 0.3

    # each example is answered alone: the system prompt and its question, never its given answer
    attempts = [b for b in backend.calls if stage(b) == "attempt"]
    assert sorted(last_user(b).split("\n")[0] for b in attempts) == ["What is 12 + 30?", "What is 7 * 6?"]
    for b in attempts:
        assert b["messages"][0] == SYSTEM and len(b["messages"]) == 2 and b["temperature"] == 0.7
        assert "42" not in last_user(b) and "max_tokens" not in b

    # each reflection sees the question, the wrong attempt and the given answer
    for b in (b for b in backend.calls if stage(b) == "learn"):
        prompt = last_user(b)
        assert "Final answer: 41" in prompt and "Correct answer:\n42" in prompt

    condense = next(b for b in backend.calls if stage(b) == "condense")
    condense_prompt = last_user(condense)
    # the low-level principles of both examples, duplicates merged
    assert "Check What is 12 + 30?" in condense_prompt and "Check What is 7 * 6?" in condense_prompt
    assert condense_prompt.count("Recheck every product.") == 1 and "at most 8 general principles" in condense_prompt

    # the condensed principles reach the final prompt; the conversation is otherwise the client's
    final = backend.calls[-1]
    assert "1. Recheck every product.\n2. Carry digits carefully." in final["messages"][0]["content"]
    assert final["messages"][0]["content"].startswith(SYSTEM["content"])
    assert final["messages"][1:] == PROSE[1:]
    assert final["temperature"] == 0.2 and final["max_tokens"] == 50
    assert state["principles"] == ["Recheck every product.", "Carry digits carefully."]
    assert state["answers"][0]["message"]["content"] == "56"
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_rounds_are_concurrent():
    waves = [1, 3, 3, 1, 1]  # find examples; answer each; derive its principles; condense; final answer
    backend = ScriptedBackend(scripted(), waves=waves)
    await run_approach(SPEC, PROSE, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == []
    assert rounds == len(waves) == 5 and len(backend.calls) == sum(waves) == 2 * 3 + 3
    assert backend.max_in_flight == 3


async def test_final_answer_streams():
    sink = StreamSink()
    backend = ScriptedBackend(scripted(answer="eight sevens are 56"))
    state, _ = await run_approach(SPEC, PROSE, backend, sink=sink, stream_choice=0)
    assert backend.calls[-1].get("stream") is True and all(b.get("stream") is None for b in backend.calls[:-1])
    assert sink.streamed == {0}
    assert state["answers"][0]["message"]["content"] == "eight sevens are 56"


async def test_examples_in_the_message_need_no_extraction_call():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, FEW_SHOT, backend)
    assert [stage(b) for b in backend.calls] == ["attempt", "attempt", "learn", "learn", "condense", "answer"]
    assert [(e["question"], e["answer"]) for e in state["examples"]] == [
        ("What is 2 + 2?", "4"),
        ("What is 3 * 3?", "The answer is 9."),
    ]
    assert len(backend.calls) == 2 * 2 + 2 < evaluate(SPEC.calls, SPEC.validate_params({}))


async def test_examples_from_earlier_turns():
    turns = [
        SYSTEM,
        {"role": "user", "content": "What is 5 + 5?"},
        {"role": "assistant", "content": "10"},
        {"role": "user", "content": "What is 6 + 6?"},
    ]
    backend = ScriptedBackend(scripted(attempt="Final answer: 11"))
    await run_approach(SPEC, turns, backend)
    attempt = next(b for b in backend.calls if stage(b) == "attempt")
    assert attempt["messages"] == [SYSTEM, {"role": "user", "content": attempt["messages"][1]["content"]}]
    assert last_user(attempt).startswith("What is 5 + 5?")
    assert backend.calls[-1]["messages"][1:] == turns[1:]


async def test_correct_attempts_teach_nothing():
    def attempt(prompt):
        return "So the final answer is 42." if "12 + 30" in prompt else "Final answer: 41"

    backend = ScriptedBackend(scripted(attempt=attempt))
    state, _ = await run_approach(SPEC, PROSE, backend)
    learned = [last_user(b) for b in backend.calls if stage(b) == "learn"]
    assert len(learned) == 2 and not any("12 + 30" in p for p in learned)
    assert [a["mistakes"] for a in sorted(state["attempts"], key=lambda a: a["index"])][0] == []

    backend = ScriptedBackend(
        scripted(
            attempt=lambda p: (
                "Final answer: " + {"12 + 30": "42", "7 * 6": "42"}.get(p.split("What is ")[1].split("?")[0], "5")
            )
        )
    )
    state, _ = await run_approach(SPEC, PROSE, backend)
    assert [stage(b) for b in backend.calls] == ["find_examples", "attempt", "attempt", "attempt", "answer"]
    assert backend.calls[-1]["messages"] == PROSE  # no principles to add
    assert any("no mistakes to learn from" in n for n in state["notes"])


async def test_reflection_can_say_the_attempt_was_right():
    backend = ScriptedBackend(scripted(learn="NONE"))
    state, _ = await run_approach(SPEC, PROSE, backend)
    assert "condense" not in [stage(b) for b in backend.calls]
    assert state["principles"] == [] and backend.calls[-1]["messages"] == PROSE


async def test_no_examples_learns_principles_from_the_question():
    question = [{"role": "user", "content": "What is 8 * 7?"}]
    backend = ScriptedBackend(scripted(examples="<output>[]</output>"))
    state, _ = await run_approach(SPEC, question, backend)
    assert [stage(b) for b in backend.calls] == ["find_examples", "principles_for_question", "answer"]
    assert "What is 8 * 7?" in last_user(backend.calls[1])
    final = backend.calls[-1]["messages"]
    assert final[0]["role"] == "system" and "1. Multiply digit by digit." in final[0]["content"]
    assert final[1:] == question
    assert state["principles"] == ["Multiply digit by digit."]

    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, question, backend, params={"extract_with_llm": False})
    assert [stage(b) for b in backend.calls] == ["principles_for_question", "answer"]  # the 2-call fallback


async def test_unreadable_or_failed_extraction_falls_back():
    for examples in ("Sure, here they are: question 1 ...", UpstreamError("extractor down")):
        backend = ScriptedBackend(scripted(examples=examples))
        state, _ = await run_approach(SPEC, PROSE, backend)
        assert [stage(b) for b in backend.calls] == ["find_examples", "principles_for_question", "answer"]
        assert state["notes"]


async def test_failed_learning_steps_are_skipped():
    backend = ScriptedBackend(
        scripted(
            attempt=lambda p: UpstreamError("a down") if "12 + 30" in p else "Final answer: 1",
            learn=lambda p: UpstreamError("l down") if "7 * 6" in p else "Principles:\n- P",
        )
    )
    state, _ = await run_approach(SPEC, PROSE, backend)
    assert any("attempt: example 0 failed: a down" in n for n in state["notes"])
    assert any("learn: example 1 failed: l down" in n for n in state["notes"])
    condense = next(last_user(b) for b in backend.calls if stage(b) == "condense")
    assert "1. P" in condense
    assert state["answers"][0]["message"]["content"] == "56"


async def test_failed_condensation_uses_the_principles_as_learned():
    backend = ScriptedBackend(scripted(condense=UpstreamError("condenser down")))
    state, _ = await run_approach(SPEC, PROSE, backend, params={"max_principles": 3})
    assert state["principles"] == ["Check What is 12 + 30?", "Recheck every product.", "Check What is 7 * 6?"]
    assert "3. Check What is 7 * 6?" in backend.calls[-1]["messages"][0]["content"]
    assert any("condense: failed" in n for n in state["notes"])


async def test_final_failure_raises_and_budget_propagates():
    backend = ScriptedBackend(scripted(answer=UpstreamError("answer down")))
    with pytest.raises(UpstreamError, match="answer down"):
        await run_approach(SPEC, PROSE, backend)

    llm = LLM(
        backend=ScriptedBackend(scripted()), model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=3)
    )
    with pytest.raises(BudgetExceeded):
        await (
            SPEC.build()
            .compile()
            .ainvoke(
                {"messages": PROSE, "request": {}, "params": SPEC.validate_params({})},
                context=RunContext(run_id="t", llm=llm),
            )
        )


async def test_several_samples_per_example_in_one_call():
    backend = ScriptedBackend(
        lambda body: (
            ["Final answer: 42", "Final answer: 40", "Final answer: 40"][body["choice_index"]]
            if stage(body) == "attempt"
            else scripted()(body)
        )
    )
    state, _ = await run_approach(SPEC, PROSE, backend, params={"samples_per_example": 3, "max_examples": 1})
    attempt_call = next(b for b in backend.calls if stage(b) == "attempt")
    assert attempt_call["n"] == 3
    assert state["attempts"][0]["mistakes"] == ["Final answer: 40"]  # duplicates merged, the right one dropped
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({"max_examples": 1}))


# ---- pieces -------------------------------------------------------------------------------------


def test_examples_from_text():
    assert [(e["question"], e["answer"]) for e in examples_from_text(FEW_SHOT[1]["content"])] == [
        ("What is 2 + 2?", "4"),
        ("What is 3 * 3?", "The answer is 9."),
    ]
    io = "Input: 3\nOutput: 9\n\nInput: 4\nOutput: 16\n\nInput: 5"
    assert [(e["question"], e["answer"]) for e in examples_from_text(io)] == [("3", "9"), ("4", "16")]
    bold = "**Question:** 1+1?\n**Answer:** 2\n**Question:** 2+5?"
    assert [(e["question"], e["answer"]) for e in examples_from_text(bold)] == [("1+1?", "2")]
    # a specification that mentions inputs and outputs, with no question left to answer, is no example
    assert examples_from_text("Write a function.\nInput: a list of ints\nOutput: the sorted list") == []
    assert examples_from_text("What is 2 + 2?") == []
    assert examples_from_text("Q: only a question?\nA:") == []


def test_examples_from_turns():
    messages = [
        SYSTEM,
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
        {"role": "user", "content": "q3"},
    ]
    assert [(e["question"], e["answer"]) for e in examples_from_turns(messages)] == [("q1", "a1")]
    assert examples_from_turns([{"role": "user", "content": "q"}]) == []


def test_parse_examples():
    assert parse_examples('<output>[{"question": "a", "answer": 1}]</output>') == [
        {"question": "a", "answer": "1", "source": "model"}
    ]
    fenced = 'Here:\n```json\n[{"input": "x", "output": "y"}, {"question": "", "answer": "z"}, 3]\n```'
    assert [(e["question"], e["answer"]) for e in parse_examples(fenced)] == [("x", "y")]
    assert parse_examples("<output>[]</output>") == []
    assert parse_examples("<output>[{broken</output>") == []
    assert parse_examples("no json here") == []


def test_same_answer():
    assert same_answer("so the final answer is 1,000", "1000")
    assert same_answer("Final answer: Paris", "Paris")
    assert same_answer("Final answer: 42", "Twelve plus thirty. The answer is 42.")
    assert not same_answer("Final answer: 41", "42")
    assert not same_answer("I am not sure", "42")


def test_learned_principles():
    assert learned_principles("NONE", 8) == []
    assert learned_principles("I forgot to carry.\n**Principles:**\n- carry digits\n- recheck", 8) == [
        "carry digits",
        "recheck",
    ]
    assert learned_principles("Principles: \n1. a\n2. b\n3. c", 2) == ["a", "b"]
    assert learned_principles("1. only a list", 8) == ["only a list"]


def test_graph_structure_and_params():
    graph = SPEC.build().compile().get_graph()
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "find_examples"),
        ("find_examples", "attempt"),
        ("attempt", "learn"),
        ("learn", "condense"),
        ("condense", "answer"),
        ("find_examples", "principles_for_question"),
        ("principles_for_question", "answer"),
        ("answer", "__end__"),
    } <= edges
    assert (SPEC.calls, SPEC.rounds, SPEC.streams_final) == ("2 * max_examples + 3", "5", True)
    assert evaluate(SPEC.calls, SPEC.validate_params({})) == 11
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"max_examples": 0})
