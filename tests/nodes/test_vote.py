import pytest

from optigraph.core.votes import (
    StopRule,
    canonical_arguments,
    group_answers,
    leader_probability,
    majority,
    should_stop,
    tool_call_key,
    vote_candidates,
    vote_margin,
    vote_texts,
)


def test_majority_over_extracted_answers_even_when_texts_differ():
    texts = [
        "Adding 2 and 3 we get 6, final answer: 6",
        "Let me think: 2 + 3 = 5. The answer is 5.",
        r"We compute $2+3$ carefully and obtain \boxed{5}",
        "Final answer: 5.0",
    ]
    result = vote_texts(texts)
    assert result.winner == 1
    assert result.top.key == "5"
    assert result.top.members == (1, 2, 3)


def test_ties_go_to_the_earliest_group():
    result = majority(["7", "8", "8", "7"], ["a", "b", "c", "d"])
    assert result.winner == 0
    result = majority(["9", "8", "8", "7", "7"], ["a", "b", "c", "d", "e"])
    assert result.winner == 1


def test_free_text_falls_back_to_similarity():
    texts = [
        "The capital of France is a lovely city on the Seine.",
        "Bananas are yellow fruits rich in potassium.",
        "The capital of France is a lovely city on the river Seine.",
    ]
    groups = group_answers([None, None, None], texts, threshold=0.8)
    assert [g.members for g in groups] == [(0, 2), (1,)]
    assert majority([None, None, None], texts).winner == 0


def test_free_text_and_extracted_answers_do_not_mix():
    groups = group_answers(["5", None], ["The answer is 5", "5"])
    assert len(groups) == 2


def test_vote_on_nothing_is_an_error():
    with pytest.raises(ValueError):
        majority([], [])


# ---- voting over tool calls -------------------------------------------------------------------


def call(name, arguments, id_="c"):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_candidate(index, *calls, text=""):
    return {
        "index": index,
        "text": text,
        "message": {"role": "assistant", "content": text or None, "tool_calls": list(calls)},
        "finish_reason": "tool_calls",
    }


def test_tool_call_keys_ignore_spelling_of_the_json_and_call_order():
    a = tool_call_key({"tool_calls": [call("get_weather", '{"city": "Paris", "days": 2}')]})
    b = tool_call_key({"tool_calls": [call("get_weather", '{"days":2.0,"city":"Paris"}', id_="other")]})
    assert a == b
    assert a != tool_call_key({"tool_calls": [call("get_weather", '{"city": "paris", "days": 2}')]})
    assert a != tool_call_key({"tool_calls": [call("get_time", '{"city": "Paris", "days": 2}')]})
    two = tool_call_key({"tool_calls": [call("f", "{}"), call("g", '{"x": 1}')]})
    assert two == tool_call_key({"tool_calls": [call("g", '{ "x" : 1 }'), call("f", "")]})
    assert tool_call_key({"content": "hi"}) is None


def test_canonical_arguments():
    assert canonical_arguments('{"b": [1.0, {"z": 1, "a": 2}], "a": "é"}') == '{"a":"é","b":[1,{"a":2,"z":1}]}'
    assert canonical_arguments({"x": 1}) == '{"x":1}'
    assert canonical_arguments("not json ") == "not json"
    assert canonical_arguments(None) == canonical_arguments("") == "{}"


def test_majority_over_tool_calls():
    candidates = [
        tool_candidate(0, call("search", '{"q": "cats"}')),
        tool_candidate(1, call("search", '{"q":"dogs"}')),
        tool_candidate(2, call("search", '{ "q": "dogs" }')),
        {"index": 3, "text": "The answer is dogs.", "message": {"role": "assistant", "content": "The answer is dogs."}},
    ]
    result = vote_candidates(candidates)
    assert result.winner == 1 and result.top.members == (1, 2)
    assert result.top.key.startswith("tool call: search(")


def test_text_answers_can_outvote_tool_calls():
    candidates = [tool_candidate(0, call("f", "{}"))] + [
        {"index": i, "text": "The answer is 4", "message": {"role": "assistant", "content": "The answer is 4"}}
        for i in (1, 2)
    ]
    assert vote_candidates(candidates).winner == 1


def test_leader_probability_is_the_beta_posterior():
    assert leader_probability(4, 0) == 31 / 32
    assert leader_probability(3, 0) == 15 / 16
    assert leader_probability(1, 1) == 0.5
    assert leader_probability(5, 1) < leader_probability(5, 0)
    assert leader_probability(10, 2) > 0.95


def test_cut_responses_vote_only_when_nothing_else_answered():
    cut = [{"text": "so far 12", "finish_reason": "length"}, {"text": "so far 12", "finish_reason": "length"}]
    done = {"text": "The answer is 7.", "finish_reason": "stop"}
    result = vote_candidates([*cut, done])
    assert result.winner == 2 and result.excluded == (0, 1) and [g.members for g in result.groups] == [(2,)]
    assert vote_candidates(cut).winner == 0 and vote_candidates(cut).excluded == ()
    assert majority(["1", "2", "2"], ["a", "b", "c"], cut=[False, True, True]).winner == 0


@pytest.mark.parametrize(
    ("leader", "runner_up", "drawn", "budget", "rule", "stop"),
    [
        (2, 0, 2, 5, StopRule(), True),  # two agreeing: a lead of 2
        (1, 1, 2, 5, StopRule(), False),
        (2, 1, 3, 5, StopRule(), False),
        (3, 1, 4, 5, StopRule(), True),
        (1, 0, 1, 5, StopRule(min_samples=1, min_lead=1), True),
        (2, 0, 2, 5, StopRule(min_samples=3), False),  # not before min_samples
        (3, 0, 3, 5, StopRule(min_lead=5), True),  # 2 left cannot overturn a lead of 3
        (2, 0, 3, 5, StopRule(min_lead=5), False),  # 2 left could tie a lead of 2
        (1, 1, 5, 5, StopRule(), True),  # budget spent
        (3, 0, 3, 12, StopRule(kind="beta"), False),  # Beta: 15/16 < 0.95
        (4, 0, 4, 12, StopRule(kind="beta"), True),  # 31/32
    ],
)
def test_should_stop(leader, runner_up, drawn, budget, rule, stop):
    assert should_stop(leader, runner_up, drawn, budget, rule) is stop


def test_stopping_when_the_rest_cannot_overturn_the_leader_never_changes_the_winner():
    """Over every sequence of 5 answers drawn in rounds of 2, 2, 1: stopping only when the samples left
    could not overturn the leader picks what the whole budget would have picked."""
    import itertools

    lossless = StopRule(min_lead=99)  # the lead rule never fires: only the budget check can stop
    saved = 0
    for sequence in itertools.product("abc", repeat=5):
        full = majority(list(sequence), list(sequence))
        for drawn in (2, 4, 5):
            part = list(sequence[:drawn])
            result = majority(part, part)
            if should_stop(*vote_margin(result), drawn, 5, lossless):
                break
        assert part[result.winner] == sequence[full.winner], sequence
        saved += 5 - drawn
    assert saved > 0  # and it does stop early on some sequences
