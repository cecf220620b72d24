import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, run_approach  # noqa: E402

from optigraph.errors import UpstreamError  # noqa: E402
from optigraph.graphs.self_consistency import SPEC  # noqa: E402

QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"}]
PATHS = [
    "3 + 4 = 8, so the answer is 8.",
    "He starts with 3. Buying 4 more gives 3 + 4. The answer is 7.",
    r"Counting: three plus four is seven, so $\boxed{7}$",
    "Final answer: 7.0",
    "Maybe 12? Final answer: 12",
]


async def test_majority_extracted_answer_wins_even_when_texts_differ():
    backend = ScriptedBackend(lambda body: PATHS[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.9, "max_tokens": 64})
    # the full response of the first member of the winning group
    assert state["answers"][0]["message"]["content"] == PATHS[1]
    assert len(backend.calls) == 1
    call = backend.calls[0]
    assert call["n"] == 5 and call["messages"] == QUESTION
    assert call["temperature"] == 0.9 and call["max_tokens"] == 64
    assert any("3 of 5 agree" in n for n in state["notes"])


async def test_default_temperature_and_sample_count():
    backend = ScriptedBackend(lambda body: "The answer is 1.")
    await run_approach(SPEC, QUESTION, backend, params={"samples": 7})
    assert backend.calls[0]["n"] == 7 and backend.calls[0]["temperature"] == 1.0


async def test_ties_go_to_the_earliest_answer():
    replies = ["The answer is 5", "The answer is 6", "The answer is 6.", "The answer is 5."]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 4})
    assert state["answers"][0]["message"]["content"] == "The answer is 5"


async def test_free_text_groups_by_similarity():
    replies = [
        "Sunsets look red because light travels further through air.",
        "Because the moon reflects it.",
        "Sunsets look red because light travels farther through the air.",
    ]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"samples": 3})
    assert state["answers"][0]["message"]["content"] == replies[0]


async def test_one_round_without_n_support():
    backend = ScriptedBackend(lambda body: "The answer is 7.", latency=0.1, capabilities={"n_sampling": False})
    started = time.perf_counter()
    state, _ = await run_approach(SPEC, QUESTION, backend)
    elapsed = time.perf_counter() - started
    assert len(backend.calls) == 5 and backend.max_in_flight == 5
    assert all(b.get("n", 1) == 1 for b in backend.calls)
    assert elapsed < 0.25, f"took {elapsed:.3f}s: samples ran one after another"
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_failed_and_empty_samples_are_skipped():
    replies = ["", UpstreamError("lost"), "The answer is 9.", "The answer is 7.", "So 7."]
    backend = ScriptedBackend(lambda body: replies[body["call_index"]], capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert state["answers"][0]["message"]["content"] == "The answer is 7."
    assert state["usage"]["calls"] == 4
    assert any("2 of 5 samples failed or came back empty" in n for n in state["notes"])


async def test_all_samples_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("gone"), capabilities={"n_sampling": False})
    with pytest.raises(UpstreamError, match="gone"):
        await run_approach(SPEC, QUESTION, backend)


async def test_usage_is_summed_exactly_with_n():
    backend = ScriptedBackend(lambda body: PATHS[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend)
    expected = backend.total_usage()
    assert expected["calls"] == 1
    assert {k: state["usage"][k] for k in expected} == expected
    assert state["usage"]["completion_tokens"] == sum(len(p.split()) for p in PATHS)


def test_spec():
    assert (SPEC.calls, SPEC.rounds) == ("1", "1")
    assert SPEC.validate_params({}) == {"samples": 5, "temperature": None, "similarity_threshold": 0.8}
