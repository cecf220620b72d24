"""The lexical retrieval under the memory plugin: token estimates, overlapping chunks, BM25 ranking."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from optigraph.plugins.retrieval import BM25, estimate_tokens, split_chunks, terms


def test_tokens_are_estimated_as_characters_over_four_rounded_up() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_terms_are_casefolded_words_and_numbers_in_any_script() -> None:
    assert terms("The Vault-code: 7391, Straße ÉTÉ!") == ["the", "vault", "code", "7391", "strasse", "été"]
    assert terms("STRASSE") == terms("straße")  # casefolding matches the two spellings


def test_the_chunk_with_the_rare_query_term_ranks_first() -> None:
    docs = ["the cat sat on the mat", "the dog sat on the log", "a zeppelin flew over the cat", "the cat and the dog"]
    ranking = BM25(docs).rank("where did the zeppelin fly")
    assert ranking[0] == 2


def test_equal_scores_keep_the_documents_order() -> None:
    docs = ["alpha beta", "gamma delta", "alpha beta", "epsilon", "alpha beta"]
    assert BM25(docs).rank("alpha") == [0, 2, 4, 1, 3]
    assert BM25(docs).rank("nothing matches") == [0, 1, 2, 3, 4]


def test_scores_follow_the_bm25_formula() -> None:
    docs = ["apple apple pear", "pear plum", "fig"]
    k1, b = 1.5, 0.75
    average = (3 + 2 + 1) / 3
    idf_apple = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_pear = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def part(idf: float, tf: int, length: int) -> float:
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))

    scores = BM25(docs, k1=k1, b=b).scores("Apple pear apple")  # a repeated query term counts once
    assert scores[0] == pytest.approx(part(idf_apple, 2, 3) + part(idf_pear, 1, 3))
    assert scores[1] == pytest.approx(part(idf_pear, 1, 2))
    assert scores[2] == 0.0


def test_a_term_in_every_document_still_counts_a_little() -> None:
    scores = BM25(["common rare", "common", "common"]).scores("common")
    assert all(s > 0 for s in scores)
    assert BM25(["common rare", "common", "common"]).rank("common rare")[0] == 0


def test_an_empty_index_ranks_nothing() -> None:
    assert BM25([]).rank("anything") == []


@pytest.mark.parametrize("chunk_tokens,overlap_tokens", [(20, 0), (20, 5), (50, 10), (100, 99)])
def test_chunks_are_bounded_overlap_and_cover_every_word(chunk_tokens: int, overlap_tokens: int) -> None:
    text = " ".join(f"w{i}" + "x" * (i % 7) for i in range(3000)) + "\n\nthe end"
    chunks = split_chunks(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    size = chunk_tokens * 4
    assert all(len(c.text) <= size and text[c.start : c.end] == c.text for c in chunks)
    assert all(b.start > a.start for a, b in itertools.pairwise(chunks))  # progress
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    # chunks start and end on word borders
    assert all(c.start == 0 or text[c.start - 1].isspace() for c in chunks)
    assert all(c.end == len(text) or text[c.end].isspace() for c in chunks)
    if overlap_tokens:
        shared = [a.end - b.start for a, b in itertools.pairwise(chunks)]
        assert all(s > 0 for s in shared)  # each chunk repeats the end of the one before
        assert all(s <= overlap_tokens * 4 for s in shared)


def test_a_run_without_spaces_is_cut_where_it_must_be() -> None:
    text = "short " + "x" * 250 + " tail"
    chunks = split_chunks(text, chunk_tokens=20, overlap_tokens=0)
    assert all(len(c.text) <= 80 for c in chunks)
    assert "".join(re.sub(r"\s", "", c.text) for c in chunks) == re.sub(r"\s", "", text)


def test_empty_and_blank_texts_have_no_chunks() -> None:
    assert split_chunks("", chunk_tokens=20) == []
    assert split_chunks(" \n\t ", chunk_tokens=20) == []
