import pytest

from optigraph.nodes.vote import group_answers, majority, vote_texts


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
