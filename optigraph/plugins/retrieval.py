"""Lexical retrieval for long inputs: estimated token counts, overlapping chunks, and a BM25 ranker.

BM25 (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009) with
Lucene's non-negative IDF, log(1 + (N - df + 0.5) / (df + 0.5)), so a term found in most chunks
still counts a little instead of pushing a chunk down. Terms are lower-cased runs of letters and
digits (any script); no stemming, no stop words. Ties keep the chunks' original order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers
_TERM = re.compile(r"\w+", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Tokens `text` is estimated to take: characters / 4, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def terms(text: str) -> list[str]:
    """The terms BM25 matches on: lower-cased words and numbers."""
    return _TERM.findall(text.casefold())


@dataclass(frozen=True)
class Chunk:
    """A piece of a text: its characters [start, end) and what they say."""

    start: int
    end: int
    text: str


def split_chunks(text: str, *, chunk_tokens: int, overlap_tokens: int = 0) -> list[Chunk]:
    """`text` cut into chunks of at most `chunk_tokens` estimated tokens, at whitespace (a longer
    run without whitespace is cut where it must be), each starting about `overlap_tokens` before the
    previous one ended, so a sentence on a border is whole in at least one chunk when the overlap
    is longer than it. Together the chunks cover every non-space character of `text`."""
    size = chunk_tokens * CHARS_PER_TOKEN
    overlap = min(overlap_tokens * CHARS_PER_TOKEN, size - 1)
    words = [(m.start(), m.end()) for m in re.finditer(rf"\S{{1,{size}}}", text)]
    chunks: list[Chunk] = []
    i = 0
    while i < len(words):
        start = words[i][0]
        j = i
        while j + 1 < len(words) and words[j + 1][1] - start <= size:
            j += 1
        end = words[j][1]
        chunks.append(Chunk(start, end, text[start:end]))
        if j == len(words) - 1:
            break
        following = j + 1  # back up over the words that start within the overlap, keeping progress
        while following - 1 > i and words[following - 1][0] >= end - overlap:
            following -= 1
        i = following
    return chunks


class BM25:
    """An Okapi BM25 index over `documents` (k1 = 1.5, b = 0.75 by default)."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.counts = [Counter(terms(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.average = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        frequency: Counter[str] = Counter()
        for c in self.counts:
            frequency.update(c.keys())
        n = len(self.counts)
        self.idf = {t: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for t, df in frequency.items()}

    def scores(self, query: str) -> list[float]:
        """Each document's score for `query` (each distinct query term counted once)."""
        wanted = [t for t in dict.fromkeys(terms(query)) if t in self.idf]
        average = self.average or 1.0
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1.0 - self.b + self.b * length / average)
            score = 0.0
            for t in wanted:
                tf = counts.get(t)
                if tf:
                    score += self.idf[t] * tf * (self.k1 + 1.0) / (tf + norm)
            out.append(score)
        return out

    def rank(self, query: str) -> list[int]:
        """Document indices, best first; equal scores keep the documents' order."""
        scores = self.scores(query)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
