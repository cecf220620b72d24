import pytest

from optigraph.nodes.select import best_index

CANDS = [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}, {"index": 2, "text": "c"}]


def test_argmax():
    assert best_index(CANDS, [{"index": 0, "score": 3}, {"index": 1, "score": 9}, {"index": 2, "score": 5}]) == 1


def test_first_on_ties():
    assert best_index(CANDS, [{"index": 0, "score": 4}, {"index": 1, "score": 8}, {"index": 2, "score": 8}]) == 1


def test_none_scores_are_ignored_unless_all_none():
    assert (
        best_index(CANDS, [{"index": 0, "score": None}, {"index": 1, "score": 0.0}, {"index": 2, "score": None}]) == 1
    )
    assert best_index(CANDS, [{"index": 0, "score": None}, {"index": 1, "score": None}]) == 0
    assert best_index(CANDS, []) == 0


def test_scores_match_candidates_by_index_not_position():
    cands = [{"index": 3, "text": "x"}, {"index": 5, "text": "y"}]
    assert best_index(cands, [{"index": 5, "score": 2}, {"index": 3, "score": 1}]) == 1


def test_no_candidates_is_an_error():
    with pytest.raises(ValueError):
        best_index([], [])
