import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, UpstreamError  # noqa: E402
from optigraph.graphs.deepthink import REASONING_MODULES, SPEC, parse_module_numbers  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

QUESTION = [{"role": "user", "content": "A train leaves at 3 pm and travels 2 hours. When does it arrive?"}]
STRUCTURE = '{"Step 1: find the start": "", "Step 2: add the duration": ""}'


def step(body):
    prompt = last_user(body)
    if prompt.startswith("Task:") and "Reply with a JSON list" in prompt:
        return "select"
    if "Rephrase each selected module" in prompt:
        return "adapt"
    if "Turn these into a step-by-step reasoning structure" in prompt:
        return "implement"
    return "greedy" if body.get("temperature") == 0.0 else "sample"


def scripted(samples=("Final answer: 5 pm",) * 3, greedy="<think>3+2</think>Final answer: 5 pm", **overrides):
    replies = {
        "select": "[2, 3, 19]",
        "adapt": "Add 2 hours to 3 pm; check am/pm.",
        "implement": STRUCTURE,
        **overrides,
    }

    emulated = iter(range(1000))  # sample calls, in arrival order, when n is emulated

    def respond(body):
        kind = step(body)
        if kind == "sample":
            reply = samples[body["choice_index"] if body.get("n", 1) > 1 else next(emulated) % len(samples)]
        elif kind == "greedy":
            reply = greedy
        else:
            reply = replies[kind]
        return reply(body) if callable(reply) else reply

    return respond


async def test_self_discover_then_samples_and_greedy():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, QUESTION, backend, request={"max_tokens": 800})
    kinds = [step(b) for b in backend.calls]
    assert kinds[:3] == ["select", "adapt", "implement"] and sorted(kinds[3:]) == ["greedy", "sample"]
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({})) == 5
    select, adapt, implement = backend.calls[:3]
    assert "20. Reflect on the reasoning" in last_user(select)
    # the selected modules (numbers 2, 3 and 19) are what the adapt step rephrases
    for i in (1, 2, 18):
        assert REASONING_MODULES[i] in last_user(adapt)
    assert "Add 2 hours to 3 pm" in last_user(implement)
    sample = next(b for b in backend.calls if step(b) == "sample")
    greedy = next(b for b in backend.calls if step(b) == "greedy")
    assert sample["n"] == 3 and sample["temperature"] == 0.7 and sample["top_p"] == 0.95 and sample["max_tokens"] == 800
    assert "top_p" not in greedy and "n" not in greedy and greedy["max_tokens"] == 800
    for call in (sample, greedy):
        assert call["messages"][0]["role"] == "system" and STRUCTURE in call["messages"][0]["content"]
        assert call["messages"][1:] == QUESTION
    assert state["answers"][0]["message"]["content"] == "Final answer: 5 pm"
    assert any("confidence 1.00" in n and "majority sample" in n for n in state["notes"])


async def test_agreeing_samples_return_the_majority():
    samples = ["So: Final answer: 5 pm", "Final answer: 4 pm", "It arrives at 5 PM. Final answer: 5 pm"]
    backend = ScriptedBackend(scripted(samples=samples, greedy="Final answer: 6 pm"))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"confidence_threshold": 0.6})
    assert state["answers"][0]["message"]["content"] == samples[0]
    assert any("confidence 0.67" in n and "majority sample" in n for n in state["notes"])


async def test_disagreeing_samples_return_the_greedy_answer():
    samples = ["Final answer: 5 pm", "Final answer: 4 pm", "Final answer: 5 pm"]
    backend = ScriptedBackend(scripted(samples=samples, greedy="Final answer: 6 pm"))
    state, _ = await run_approach(SPEC, QUESTION, backend)  # 2 of 3 < 0.7
    assert state["answers"][0]["message"]["content"] == "Final answer: 6 pm"
    assert any("confidence 0.67" in n and "greedy answer" in n for n in state["notes"])


async def test_without_self_discover_two_concurrent_calls():
    backend = ScriptedBackend(scripted(), waves=[2])
    params = {"enable_self_discover": False}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert sorted(step(b) for b in backend.calls) == ["greedy", "sample"]
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 2
    assert backend.wave_errors == [] and backend.max_in_flight == 2  # in flight together
    assert "<think>" in backend.calls[0]["messages"][0]["content"]  # plain chain of thought


async def test_four_rounds_with_samples_and_greedy_concurrent():
    waves = [1, 1, 1, 4]  # select, adapt, implement the structure; then 3 samples and the greedy answer at once
    backend = ScriptedBackend(scripted(), capabilities={"n_sampling": False}, waves=waves)
    state, _ = await run_approach(SPEC, QUESTION, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == []
    assert rounds == len(waves) == 4 and len(backend.calls) == sum(waves) == 3 + 3 + 1
    assert backend.max_in_flight == 4
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_failed_self_discover_steps_degrade_gracefully():
    backend = ScriptedBackend(
        scripted(
            select="I like them all.", adapt=UpstreamError("adapt lost"), implement=UpstreamError("implement lost")
        )
    )
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert any("no module numbers" in n for n in state["notes"])
    assert any("adapt_modules: failed" in n for n in state["notes"])
    assert any("implement_structure: failed" in n for n in state["notes"])
    sample = next(b for b in backend.calls if step(b) == "sample")
    # the default modules stand in for the structure
    assert REASONING_MODULES[0] in sample["messages"][0]["content"]
    assert state["answers"][0]["message"]["content"] == "Final answer: 5 pm"


async def test_failed_samples_fall_back_to_greedy_and_count_as_disagreement():
    samples = [UpstreamError("lost"), "Final answer: 5 pm", UpstreamError("lost")]
    backend = ScriptedBackend(
        scripted(samples=samples, greedy="Final answer: 6 pm"), capabilities={"n_sampling": False}
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"enable_self_discover": False})
    assert state["answers"][0]["message"]["content"] == "Final answer: 6 pm"
    assert any("confidence 0.33" in n for n in state["notes"])


async def test_all_samples_failing_uses_greedy_and_greedy_failing_uses_samples():
    backend = ScriptedBackend(scripted(samples=[UpstreamError("lost")]), capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"enable_self_discover": False})
    assert state["answers"][0]["message"]["content"].endswith("Final answer: 5 pm")
    assert any("every sample failed" in n for n in state["notes"])

    samples = ["Final answer: 1", "Final answer: 2", "Final answer: 3"]
    backend = ScriptedBackend(scripted(samples=samples, greedy=UpstreamError("greedy lost")))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"enable_self_discover": False})
    assert state["answers"][0]["message"]["content"] == "Final answer: 1"
    assert any("greedy failed" in n for n in state["notes"])


async def test_everything_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("down"), capabilities={"n_sampling": False})
    with pytest.raises(UpstreamError):
        await run_approach(SPEC, QUESTION, backend, params={"enable_self_discover": False})


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=2))
    state = {"messages": QUESTION, "request": {}, "params": SPEC.validate_params({}), "stream_choice": None}
    with pytest.raises(BudgetExceeded):
        await SPEC.build().compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))


@pytest.mark.parametrize(
    ("reply", "limit", "expected"),
    [
        ("[2, 5, 9]", 7, [1, 4, 8]),
        ("Selected: ```json\n[3, 3, 1]\n```", 7, [2, 0]),
        ("Modules 4 and 6 fit best.", 7, [3, 5]),
        ("[1, 2, 3, 4, 5, 6, 7, 8]", 5, [0, 1, 2, 3, 4]),
        ("[0, 99, 2]", 7, [1]),
        ("none", 7, []),
    ],
)
def test_module_selection_parsing(reply, limit, expected):
    assert parse_module_numbers(reply, limit) == expected


def test_params():
    params = SPEC.validate_params({})
    assert params["deepthink_samples"] == 3 and params["confidence_threshold"] == 0.7
    assert params["enable_self_discover"] is True and params["reasoning_modules_limit"] == 7
    assert evaluate(SPEC.rounds, params) == 4
