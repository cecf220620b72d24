import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.judgments import parse_choice  # noqa: E402
from optigraph.errors import UpstreamError  # noqa: E402
from optigraph.nodes.compare import (  # noqa: E402
    PairwiseState,
    compare,
    compare_pair,
    pairs_each,
    select_by_wins,
    wins,
)

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("BEST CANDIDATE: 2", 1),
        ("Candidate 2", 1),
        ("**2**", 1),
        ("the second one", 1),
        ("[[2]]", 1),
        ("2", 1),
        ("The best response is Candidate 3 because it checks its work.", 2),
        ("Candidate 1 has an arithmetic slip. Candidate 3 is off too. Candidate 2 is the best.", 1),
        ("Candidate 1 is wrong. The best is candidate 3.", 2),
        ("I choose candidate two.", 1),
        ("best candidate: **#2**", 1),
        ("Analysis... BEST CANDIDATE: **3**", 2),
        ("The last one is right.", 2),
        ("The second response is more accurate.", 1),
        ("<think>Candidate 1 looks best</think>BEST CANDIDATE: 3", 2),
        ("Response 1 is better. [[1]]", 0),
    ],
)
def test_parse_loose_choices(reply, choice):
    assert parse_choice(reply, 3) == choice


@pytest.mark.parametrize(
    "reply",
    ["", "They are all fine.", "Candidate 1 is wrong, candidate 2 is wrong too.", "BEST CANDIDATE: 7", "Candidate 9"],
)
def test_unreadable_or_out_of_range_choices_are_none(reply):
    assert parse_choice(reply, 3) is None


def seeded(texts, node, *, state=PairwiseState, fan_out=None):
    """A graph that seeds candidates, then runs `node` (or a fan-out to it) and, for pairs, the tally."""

    async def seed(state):
        return {
            "candidates": [
                {"index": i, "text": t, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ]
        }

    graph = StateGraph(state, context_schema=RunContext)
    graph.add_node("seed", seed)
    graph.add_edge(START, "seed")
    if fan_out is None:
        graph.add_node("compare", node)
        graph.add_edge("seed", "compare")
        graph.add_edge("compare", END)
    else:
        graph.add_node("compare_pair", compare_pair)
        graph.add_node("select_by_wins", select_by_wins)
        graph.add_conditional_edges("seed", fan_out, ["compare_pair"])
        graph.add_edge("compare_pair", "select_by_wins")
        graph.add_edge("select_by_wins", END)
    return graph


CANDIDATES = ["<think>3+4 is 8?</think>The answer is 8.", "The answer is 7.", "The answer is 8."]


async def test_compare_shows_every_candidate_and_picks_the_named_one():
    backend = ScriptedBackend(lambda body: "Candidate 1 and 3 add wrong. BEST CANDIDATE: 2")
    state, _ = await run_approach(seeded(CANDIDATES, compare), QUESTION, backend, params={})
    assert state["answers"][0]["message"]["content"] == "The answer is 7."
    (call,) = backend.calls
    prompt = last_user(call)
    assert "What is 3 + 4?" in prompt and "Candidate 3:\nThe answer is 8." in prompt
    assert "<think>" not in prompt  # the judge reads answers, not scratch work
    assert call["messages"][0] == QUESTION[0]
    assert call["temperature"] == 0.3 and call["max_tokens"] == 2048
    assert any("picked candidate 2 of 3" in n for n in state["notes"])


async def test_unreadable_comparison_falls_back_to_a_vote_with_a_note():
    backend = ScriptedBackend(lambda body: "All of them have merit.")
    state, _ = await run_approach(seeded(CANDIDATES, compare), QUESTION, backend, params={})
    # "8" has two votes: the first of them wins
    assert state["answers"][0]["message"]["content"] == CANDIDATES[0]
    assert any("no candidate named" in n for n in state["notes"])
    assert any("fell back to a majority vote" in n for n in state["notes"])


async def test_failed_comparison_falls_back_to_a_vote():
    backend = ScriptedBackend(lambda body: UpstreamError("judge down"))
    state, _ = await run_approach(seeded(CANDIDATES, compare), QUESTION, backend, params={})
    assert state["answers"][0]["message"]["content"] == CANDIDATES[0]
    assert any("comparison failed: judge down" in n for n in state["notes"])


async def test_one_candidate_needs_no_comparison():
    backend = ScriptedBackend()
    state, _ = await run_approach(seeded(["only"], compare), QUESTION, backend, params={})
    assert backend.calls == [] and state["answers"][0]["message"]["content"] == "only"


def judge_preferring(text):
    """A pairwise judge that prefers `text` wherever it is shown, else Response 1."""

    def respond(body):
        prompt = last_user(body)
        first = prompt.split("Response 1:\n", 1)[1].split("\n\nResponse 2:", 1)[0]
        second = prompt.split("Response 2:\n", 1)[1].split("\n\nWhich response", 1)[0]
        if second == text:
            return "Response 2 is better. [[2]]"
        return "[[1]]" if first == text else "The first one is better."

    return respond


async def test_every_ordered_pair_is_judged_and_the_most_wins_is_chosen():
    texts = ["A", "B", "C"]
    backend = ScriptedBackend(judge_preferring("B"))
    state, _ = await run_approach(seeded(texts, None, fan_out=pairs_each), QUESTION, backend, params={})
    assert len(backend.calls) == 6  # k * (k - 1) ordered pairs
    shown = sorted(
        (last_user(b).split("Response 1:\n")[1][0], last_user(b).split("Response 2:\n")[1][0]) for b in backend.calls
    )
    assert shown == [("A", "B"), ("A", "C"), ("B", "A"), ("B", "C"), ("C", "A"), ("C", "B")]
    assert state["answers"][0]["message"]["content"] == "B"
    assert {s["index"]: s["score"] for s in state["scores"]} == {0: 1.0, 1: 4.0, 2: 1.0}


async def test_position_bias_cancels_and_ties_go_to_the_earliest():
    backend = ScriptedBackend(lambda body: "[[1]]")  # always prefers whatever is shown first
    state, _ = await run_approach(seeded(["A", "B", "C"], None, fan_out=pairs_each), QUESTION, backend, params={})
    assert state["answers"][0]["message"]["content"] == "A"
    assert {s["score"] for s in state["scores"]} == {2.0}


async def test_failed_and_unreadable_pairs_count_for_no_one():
    def respond(body):
        prompt = last_user(body)
        if prompt.split("Response 1:\n")[1][0] == "A":
            return UpstreamError("flaky")
        return "Hard to say." if prompt.split("Response 1:\n")[1][0] == "B" else "[[1]]"

    state, _ = await run_approach(
        seeded(["A", "B", "C"], None, fan_out=pairs_each), QUESTION, ScriptedBackend(respond), params={}
    )
    assert state["answers"][0]["message"]["content"] == "C"
    assert sum("failed: flaky" in n for n in state["notes"]) == 2
    assert sum("no winner named" in n for n in state["notes"]) == 2
    assert any("4 undecided" in n for n in state["notes"])


def test_wins_tally():
    candidates = [{"index": 5}, {"index": 7}]
    outcomes = [{"first": 5, "second": 7, "winner": 7, "raw": ""}, {"first": 7, "second": 5, "winner": None, "raw": ""}]
    assert wins(candidates, outcomes) == [0, 1]


def test_pairs_each_maps_parameters():
    state = {
        "messages": QUESTION,
        "candidates": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}],
        "params": {"x": 1},
    }
    sends = pairs_each(state, params={"comparison_temperature": 0.0})
    assert len(sends) == 2 and all(s.arg["params"] == {"comparison_temperature": 0.0} for s in sends)
    assert pairs_each(state)[0].arg["params"] == {"x": 1}
