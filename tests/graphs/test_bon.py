import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.errors import InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.bon import SPEC  # noqa: E402
from optigraph.nodes.rate import RATING_REQUEST  # noqa: E402

QUESTION = [{"role": "user", "content": "Name a prime number."}]
CANDIDATES = ["Four.", "Seven is prime.", "Nine."]


def is_rating(body):
    return last_user(body) == RATING_REQUEST


def scripted(ratings, candidates=CANDIDATES):
    """Candidates by choice index; a rating by the text of the candidate it is asked about."""

    def respond(body):
        if is_rating(body):
            return ratings[body["messages"][-2]["content"]]
        return candidates[body["choice_index"]]

    return respond


async def test_picks_the_best_rated_candidate_with_one_sampling_call():
    backend = ScriptedBackend(scripted({"Four.": "2", "Seven is prime.": "9", "Nine.": "3"}))
    request = {"temperature": 0.7, "max_tokens": 100, "tools": [{"type": "function", "function": {"name": "f"}}]}
    state, _ = await run_approach(SPEC, QUESTION, backend, request=request)
    assert state["answers"][0]["message"] == {"role": "assistant", "content": "Seven is prime."}

    sample, *ratings = backend.calls
    assert sample["n"] == 3 and sample["messages"] == QUESTION
    assert sample["temperature"] == 0.7 and sample["max_tokens"] == 100 and sample["tools"]
    assert len(ratings) == 3
    assert sorted(r["messages"][-2]["content"] for r in ratings) == sorted(CANDIDATES)
    for r in ratings:
        assert r["messages"][:-2] == QUESTION
        assert r["messages"][-2]["role"] == "assistant"
        assert r["temperature"] == 0.1 and r["max_tokens"] == 256
        assert "tools" not in r and "n" not in r
    assert sorted((s["index"], s["score"]) for s in state["scores"]) == [(0, 2.0), (1, 9.0), (2, 3.0)]


async def test_loosely_written_ratings():
    ratings = {"Four.": "Rating: 7/10", "Seven is prime.": "I'd give it a 9 out of 10", "Nine.": "**8**"}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(ratings)))
    assert state["answers"][0]["message"]["content"] == "Seven is prime."
    assert sorted(s["score"] for s in state["scores"]) == [7.0, 8.0, 9.0]


async def test_unreadable_rating_is_none_and_noted_not_zero():
    ratings = {"Four.": "Pretty good!", "Seven is prime.": "1", "Nine.": "0.5"}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(ratings)))
    by_index = {s["index"]: s for s in state["scores"]}
    assert by_index[0]["score"] is None and by_index[0]["raw"] == "Pretty good!"
    assert state["answers"][0]["message"]["content"] == "Seven is prime."
    assert any("no rating found for candidate 0" in n for n in state["notes"])


async def test_failed_ratings_leave_the_survivors():
    ratings = {"Four.": "6", "Seven is prime.": UpstreamError("boom"), "Nine.": "5"}
    backend = ScriptedBackend(scripted(ratings))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert state["answers"][0]["message"]["content"] == "Four."
    by_index = {s["index"]: s["score"] for s in state["scores"]}
    assert by_index == {0: 6.0, 1: None, 2: 5.0}
    assert any("rating candidate 1 failed: boom" in n for n in state["notes"])
    # usage counts only the calls that answered
    assert state["usage"]["calls"] == 3


async def test_all_ratings_failing_returns_the_first_candidate():
    ratings = {c: UpstreamError("down") for c in CANDIDATES}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(ratings)))
    assert state["answers"][0]["message"]["content"] == "Four."
    assert sum("failed" in n for n in state["notes"]) == 3


async def test_all_sampling_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("upstream is down", upstream_status=500))
    with pytest.raises(UpstreamError, match="upstream is down"):
        await run_approach(SPEC, QUESTION, backend)


async def test_failed_and_empty_samples_are_skipped_without_n_support():
    def respond(body):
        if is_rating(body):
            return "5"
        return [UpstreamError("one failed"), "", "Seven."][body["call_index"]]

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend)
    # one usable candidate: nothing to rate
    assert state["answers"][0]["message"]["content"] == "Seven."
    assert len(backend.calls) == 3
    assert any("2 of 3 samples failed or came back empty" in n for n in state["notes"])


async def test_usage_is_summed_exactly_over_every_call():
    backend = ScriptedBackend(scripted({"Four.": "2", "Seven is prime.": "9", "Nine.": "3"}))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    expected = backend.total_usage()
    assert expected["calls"] == 4
    assert {k: state["usage"][k] for k in expected} == expected


async def test_ratings_run_concurrently_without_n_support():
    def respond(body):
        return "7" if is_rating(body) else f"candidate {body['call_index']}"

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False}, waves=[4, 4])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"n": 4})
    assert len(backend.calls) == 8  # 4 emulated samples + 4 ratings
    assert backend.wave_errors == []  # the samples together, then the ratings together
    assert state["usage"]["calls"] == 8


async def test_temperature_precedence():
    def respond(body):
        return "5" if is_rating(body) else "x"

    backend = ScriptedBackend(respond)
    await run_approach(SPEC, QUESTION, backend)
    assert backend.calls[0]["temperature"] == 1.0
    backend = ScriptedBackend(respond)
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.2})
    assert backend.calls[0]["temperature"] == 0.2
    backend = ScriptedBackend(respond)
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.2}, params={"temperature": 1.3})
    assert backend.calls[0]["temperature"] == 1.3


async def test_a_single_candidate_needs_no_rating():
    backend = ScriptedBackend(lambda body: "only")
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"n": 1})
    assert len(backend.calls) == 1 and "n" not in backend.calls[0]
    assert state["answers"][0]["message"]["content"] == "only"


def test_params_are_bounded():
    assert SPEC.validate_params(None)["n"] == 3
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"n": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"best_of": 3})
    assert (SPEC.calls, SPEC.rounds) == ("1 + n", "2")


ARITH = [{"role": "user", "content": "How many boxes?"}]


async def test_candidates_with_the_same_answer_pool_their_ratings():
    # A self-rating model rates everything 8: the first of equals is arbitrary, the majority is not.
    candidates = [
        "Work... Final answer: 31",
        "Other work... Final answer: 44",
        "More work...\n\\[ Final answer: 44 \\]",
    ]
    ratings = dict.fromkeys(candidates, "8")
    state, _ = await run_approach(SPEC, ARITH, ScriptedBackend(scripted(ratings, candidates)))
    assert state["answers"][0]["message"]["content"] == candidates[1]  # the best-rated member of the '44' group
    assert "weighted vote" in state["notes"][-1] and "'44' 16 (2)" in state["notes"][-1]

    # `selection: score` is OptILLM's rule: the best rating, the first on ties.
    state, _ = await run_approach(
        SPEC, ARITH, ScriptedBackend(scripted(ratings, candidates)), params={"selection": "score"}
    )
    assert state["answers"][0]["message"]["content"] == candidates[0]


async def test_a_rating_that_discriminates_still_wins_over_a_weak_majority():
    candidates = ["Final answer: 5", "Final answer: 6", "Final answer: 6"]
    ratings = {"Final answer: 5": "9", "Final answer: 6": "2"}
    state, _ = await run_approach(SPEC, ARITH, ScriptedBackend(scripted(ratings, candidates)))
    assert state["answers"][0]["message"]["content"] == "Final answer: 5"  # 9 against 2 + 2


def test_weighted_vote_leaves_out_an_answer_cut_at_max_tokens_and_breaks_ties_by_support():
    from optigraph.nodes.select import weighted_vote_index

    cands = [
        {"index": 0, "text": "Final answer: 7", "finish_reason": "length"},  # unfinished: no vote
        {"index": 1, "text": "Final answer: 8", "finish_reason": "stop"},
        {"index": 2, "text": "Final answer: 9", "finish_reason": "stop"},
        {"index": 3, "text": "Final answer: 9", "finish_reason": "stop"},
    ]
    scores = [
        {"index": 0, "score": 10.0},
        {"index": 1, "score": 6.0},
        {"index": 2, "score": 3.0},
        {"index": 3, "score": 3.0},
    ]
    assert weighted_vote_index(cands, scores)[0] == 2  # '9' 6 (2 members) ties '8' 6 (1): more members win
    no_scores = weighted_vote_index(cands, [])  # no readable rating: the plain majority
    assert no_scores[0] == 2
