import pytest

from optigraph.core.judgments import parse_rating
from optigraph.nodes.rate import RATING_REQUEST, rate_each, rating_messages


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("7", 7.0),
        ("8.5", 8.5),
        ("Rating: 7/10", 7.0),
        ("**8**", 8.0),
        ("I'd give it a 9 out of 10.", 9.0),
        ("Score: 6", 6.0),
        ("rating = 4.5", 4.5),
        ("Rating: **9**", 9.0),
        ("Correctness 8/10, clarity 6/10. Overall 7/10", 7.0),
        ("85/100", 8.5),
        ("4 out of 5", 8.0),
        ("<think>maybe 2/10</think>10", 10.0),
        ("I'd give it a 9.", 9.0),
        ("0", 0.0),
    ],
)
def test_parse_loose_ratings(reply, score):
    assert parse_rating(reply) == score


@pytest.mark.parametrize(
    "reply",
    ["", "Great answer!", "It has 3 issues and 2 typos.", "Rating: 15", "12/10", "I rate it highly"],
)
def test_unreadable_or_ambiguous_ratings_are_none(reply):
    assert parse_rating(reply) is None


def test_rating_messages_show_the_candidate_as_the_answer():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    candidate = {"index": 0, "text": "4", "message": {"role": "assistant", "content": "4"}}
    out = rating_messages(messages, candidate)
    assert out[:2] == messages
    assert out[2] == {"role": "assistant", "content": "4"}
    assert out[3] == {"role": "user", "content": RATING_REQUEST}


def test_tool_calls_are_written_out_for_the_rater():
    candidate = {
        "index": 0,
        "text": "",
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}],
        },
    }
    out = rating_messages([{"role": "user", "content": "q"}], candidate)
    assert out[1]["content"] == '[tool call] add({"a": 2})'


def test_rate_each_sends_one_branch_per_candidate_in_order():
    state = {
        "messages": [{"role": "user", "content": "q"}],
        "request": {"temperature": 0.3},
        "params": {"n": 2},
        "candidates": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}],
    }
    sends = rate_each(state)
    assert [s.node for s in sends] == ["rate", "rate"]
    assert [s.arg["branch"]["index"] for s in sends] == [0, 1]
    assert sends[0].arg["branch"]["candidate"]["text"] == "a"
    assert sends[0].arg["messages"] == state["messages"] and sends[0].arg["params"] == {"n": 2}
