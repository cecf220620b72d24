import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.errors import UpstreamError  # noqa: E402
from optigraph.graphs.moa import SPEC  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why is the sky blue?"}]
CANDIDATES = ["Rayleigh scattering.", "Because of the ocean.", "Blue light scatters more."]


def stage(body):
    prompt = last_user(body)
    if "Critique each candidate" in prompt:
        return "critique"
    if "write the best possible response" in prompt:
        return "aggregate"
    return "sample"


def scripted(critique="Candidate 2 is wrong.", final="Shorter wavelengths scatter more (Rayleigh)."):
    def respond(body):
        return {
            "sample": lambda: CANDIDATES[body["choice_index"]],
            "critique": lambda: critique,
            "aggregate": lambda: final,
        }[stage(body)]()

    return respond


async def test_sample_critique_aggregate():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, MESSAGES, backend, request={"temperature": 0.5, "max_tokens": 300})
    assert [stage(b) for b in backend.calls] == ["sample", "critique", "aggregate"]
    sample, critique, aggregate = backend.calls
    assert sample["n"] == 3 and sample["messages"] == MESSAGES and sample["temperature"] == 0.5

    critique_prompt = critique["messages"][-1]["content"]
    assert critique["messages"][0] == MESSAGES[0]
    assert "Why is the sky blue?" in critique_prompt
    assert all(f"Candidate {i + 1}:\n{c}" in critique_prompt for i, c in enumerate(CANDIDATES))
    assert critique["temperature"] == 0.1 and critique["max_tokens"] == 512

    aggregate_prompt = aggregate["messages"][-1]["content"]
    assert all(c in aggregate_prompt for c in CANDIDATES) and "Candidate 2 is wrong." in aggregate_prompt
    assert aggregate["temperature"] == 0.5 and aggregate["max_tokens"] == 300  # the client's
    assert state["answers"][0]["message"]["content"] == "Shorter wavelengths scatter more (Rayleigh)."
    assert state["critique"] == "Candidate 2 is wrong."


async def test_aggregate_streams_to_the_client():
    sink = StreamSink()
    backend = ScriptedBackend(scripted(final="one two three"))
    state, _ = await run_approach(SPEC, MESSAGES, backend, sink=sink, stream_choice=0)
    assert backend.calls[-1].get("stream") is True
    assert [c.get("stream") for c in backend.calls[:2]] == [None, None]
    pieces = []
    while not sink.queue.empty():
        pieces.append(sink.queue.get_nowait().delta.get("content", ""))
    assert "".join(pieces) == "one two three"
    assert sink.streamed == {0}
    assert state["answers"][0]["message"]["content"] == "one two three"


async def test_failed_critique_aggregates_without_it():
    backend = ScriptedBackend(scripted(critique=UpstreamError("critic down")))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    aggregate = backend.calls[-1]
    assert stage(aggregate) == "aggregate"
    assert "Critique of the candidates" not in aggregate["messages"][-1]["content"]
    assert any("critique: failed" in n for n in state["notes"])
    assert state["answers"][0]["message"]["content"].startswith("Shorter")
    assert state["usage"]["calls"] == 2


async def test_failed_aggregate_raises():
    backend = ScriptedBackend(scripted(final=UpstreamError("no final")))
    with pytest.raises(UpstreamError):
        await run_approach(SPEC, MESSAGES, backend)


async def test_usage_is_summed_exactly():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    expected = backend.total_usage()
    assert expected["calls"] == 3
    assert {k: state["usage"][k] for k in expected} == expected


async def test_three_rounds_without_n_support():
    def respond(body):
        return CANDIDATES[body["call_index"] % 3] if stage(body) == "sample" else "ok"

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False}, waves=[3, 1, 1])
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert backend.wave_errors == []  # 3 concurrent samples, then the critique, then the synthesis
    assert len(backend.calls) == 5 and backend.max_in_flight == 3
    assert state["usage"]["calls"] == 5


def test_spec():
    assert (SPEC.calls, SPEC.rounds, SPEC.streams_final) == ("3", "3", True)
    assert SPEC.validate_params({})["n"] == 3
