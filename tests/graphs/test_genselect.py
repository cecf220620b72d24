import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.errors import InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.genselect import SPEC  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 12 * 12?"}]
CANDIDATES = ["12 * 12 = 124.", "<think>12*12, 12*10+12*2</think>12 * 12 = 144.", "It is 142.", "144? No: 124."]


def is_comparison(body):
    return "BEST CANDIDATE:" in last_user(body)


def scripted(verdict="Candidate 2 multiplies correctly.\nBEST CANDIDATE: 2", candidates=CANDIDATES):
    def respond(body):
        if is_comparison(body):
            return verdict if not callable(verdict) else verdict(body)
        return candidates[body["choice_index"]]

    return respond


async def test_samples_then_one_comparison_picks_the_named_candidate():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.9, "max_tokens": 500})
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({})) == 2
    sample, comparison = backend.calls
    assert sample["n"] == 4 and sample["temperature"] == 0.9 and sample["max_tokens"] == 500
    assert comparison["temperature"] == 0.3 and comparison["max_tokens"] == 2048 and "n" not in comparison
    prompt = last_user(comparison)
    for i, text in enumerate(["12 * 12 = 124.", "12 * 12 = 144.", "It is 142.", "144? No: 124."]):
        assert f"Candidate {i + 1}:\n{text}" in prompt
    assert "<think>" not in prompt
    # the answer is the full candidate, scratch work included
    assert state["answers"][0]["message"]["content"] == CANDIDATES[1]


async def test_default_temperature_is_0_7():
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, QUESTION, backend)
    assert backend.calls[0]["temperature"] == 0.7


async def test_unreadable_verdict_falls_back_to_the_majority_with_a_note():
    backend = ScriptedBackend(scripted("They all look plausible to me."))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert state["answers"][0]["message"]["content"] == CANDIDATES[0]  # 124 twice
    assert any("no candidate named" in n for n in state["notes"])
    assert any("fell back to a majority vote" in n for n in state["notes"])


async def test_failed_comparison_falls_back_to_the_majority():
    backend = ScriptedBackend(scripted(lambda body: UpstreamError("judge down")))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert state["answers"][0]["message"]["content"] == CANDIDATES[0]
    assert any("comparison failed: judge down" in n for n in state["notes"])
    assert state["usage"]["calls"] == 1


async def test_failed_samples_are_left_out_of_the_comparison():
    replies = [UpstreamError("lost"), "It is 144.", "", "It is 124."]

    def respond(body):
        return "BEST CANDIDATE: 1" if is_comparison(body) else replies[body["call_index"]]

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend)
    prompt = last_user(backend.calls[-1])
    assert "Candidate 2:\nIt is 124." in prompt and "Candidate 3" not in prompt
    assert state["answers"][0]["message"]["content"] == "It is 144."
    assert any("2 of 4 samples failed or came back empty" in n for n in state["notes"])


async def test_a_lone_survivor_needs_no_comparison():
    replies = [UpstreamError("lost"), "It is 144.", UpstreamError("lost"), ""]
    backend = ScriptedBackend(lambda body: replies[body["call_index"]], capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert len(backend.calls) == 4 and not any(is_comparison(b) for b in backend.calls)
    assert state["answers"][0]["message"]["content"] == "It is 144."


async def test_two_rounds_with_concurrent_samples():
    backend = ScriptedBackend(
        scripted(candidates=["a 1", "b 2", "c 3", "d 4"]), capabilities={"n_sampling": False}, waves=[4, 1]
    )
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert backend.wave_errors == []  # the 4 samples together, then the selection
    assert len(backend.calls) == 5 and backend.max_in_flight == 4
    assert evaluate(SPEC.rounds, SPEC.validate_params({})) == 2
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_all_sampling_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("down"), capabilities={"n_sampling": False})
    with pytest.raises(UpstreamError, match="down"):
        await run_approach(SPEC, QUESTION, backend)


def test_params():
    assert SPEC.validate_params({}) == {
        "num_candidates": 4,
        "temperature": None,
        "comparison_temperature": 0.3,
        "comparison_max_tokens": 2048,
    }
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"num_candidates": 1})
