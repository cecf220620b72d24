"""What kind of problem a prompt is: a small text classifier trained on data shipped with the package.

The `router` plugin picks an approach from the type and `spl` keeps its strategies per type. The
classifier runs on this machine and downloads nothing: TF-IDF features (word unigrams and bigrams,
and character 3- to 5-grams inside words, sublinear term frequency, L2-normalised rows) and a
multinomial logistic regression trained by full-batch gradient descent from zero weights, so the
same data always gives the same model. It is trained from `data/problem_types.jsonl` (a few hundred
hand-written prompts, each labelled with one of `PROBLEM_TYPES`) the first time it is needed, in well
under a second of one core; `load_classifier` keeps that one model for the life of the process.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

PROBLEM_TYPES = ("arithmetic", "word_problem", "logic", "code", "writing", "factual", "chat")
DATA_FILE = "problem_types.jsonl"
EPOCHS = 100
LEARNING_RATE = 8.0
L2 = 1e-4
MAX_CHARS = 4000  # a prompt's last characters are what is classified (the question is usually last)
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass(frozen=True)
class Example:
    """One labelled prompt."""

    prompt: str
    label: str


@dataclass(frozen=True)
class Prediction:
    """The most likely label, its probability, and every label's probability."""

    label: str
    confidence: float
    probabilities: dict[str, float]


def load_examples() -> list[Example]:
    """The shipped labelled prompts."""
    text = resources.files("optigraph.plugins").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Example(prompt=r["prompt"], label=r["type"]) for r in rows]


def split_examples(examples: Sequence[Example], every: int = 4) -> tuple[list[Example], list[Example]]:
    """A deterministic stratified split: within each label, every `every`-th example (from the
    second) is held out; the rest train."""
    seen: Counter[str] = Counter()
    train: list[Example] = []
    held: list[Example] = []
    for ex in examples:
        seen[ex.label] += 1
        (held if seen[ex.label] % every == 2 % every else train).append(ex)
    return train, held


def features(text: str) -> Counter[str]:
    """The terms of a text: words, word bigrams, and character 3- to 5-grams of each word."""
    words = _WORD.findall(text[-MAX_CHARS:].lower())
    out: Counter[str] = Counter(f"w:{w}" for w in words)
    out.update(f"b:{a} {b}" for a, b in zip(words, words[1:]))
    for w in words:
        padded = f" {w} "
        for n in (3, 4, 5):
            out.update(f"c:{padded[i : i + n]}" for i in range(max(len(padded) - n + 1, 0)))
    return out


class ProblemClassifier:
    """TF-IDF + multinomial logistic regression (module docstring)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        if not examples:
            raise ValueError("no examples to train on")
        self.labels = sorted({ex.label for ex in examples})
        counted = [features(ex.prompt) for ex in examples]
        df: Counter[str] = Counter(term for c in counted for term in c)
        self.vocabulary = {term: i for i, term in enumerate(sorted(df))}
        n = len(examples)
        self.idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in sorted(df)])
        rows = [self._vector(c) for c in counted]
        x = _Sparse([cols for cols, _ in rows], [vals for _, vals in rows], len(self.vocabulary))
        y = np.zeros((n, len(self.labels)))
        y[np.arange(n), [self.labels.index(ex.label) for ex in examples]] = 1.0
        self.weights, self.bias = _train(x, y)

    def _vector(self, counted: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
        """The TF-IDF row of a text, as its nonzero columns and their values."""
        known = sorted((self.vocabulary[t], c) for t, c in counted.items() if t in self.vocabulary)
        cols = np.array([i for i, _ in known], dtype=np.int64)
        vals = np.array([(1.0 + math.log(c)) * self.idf[i] for i, c in known])
        norm = float(np.linalg.norm(vals)) if len(vals) else 0.0
        return cols, (vals / norm if norm else vals)

    def predict(self, text: str) -> Prediction:
        """The label of `text` and how sure the model is of it."""
        cols, vals = self._vector(features(text))
        scores = vals @ self.weights[cols] + self.bias
        probs = _softmax(scores[None, :])[0]
        best = int(np.argmax(probs))
        return Prediction(
            label=self.labels[best],
            confidence=float(probs[best]),
            probabilities={label: round(float(p), 4) for label, p in zip(self.labels, probs)},
        )

    def accuracy(self, examples: Sequence[Example]) -> float:
        """The share of `examples` whose label it predicts."""
        if not examples:
            return 0.0
        return sum(self.predict(ex.prompt).label == ex.label for ex in examples) / len(examples)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Sparse:
    """A matrix of a few nonzeros per row (numpy only): products with dense matrices both ways,
    summed with `reduceat` over entries sorted by row (for `dot`) and by column (for `tdot`)."""

    def __init__(self, cols: list[np.ndarray], vals: list[np.ndarray], width: int) -> None:
        if any(len(c) == 0 for c in cols):
            raise ValueError("every training example needs at least one term")
        self.height, self.width = len(cols), width
        self.rows = np.repeat(np.arange(len(cols)), [len(c) for c in cols])
        self.cols = np.concatenate(cols)
        self.vals = np.concatenate(vals)
        self.row_starts = np.concatenate([[0], np.cumsum([len(c) for c in cols])[:-1]])
        self.by_col = np.argsort(self.cols, kind="stable")
        sorted_cols = self.cols[self.by_col]
        self.col_ids, self.col_starts = np.unique(sorted_cols, return_index=True)

    def dot(self, w: np.ndarray) -> np.ndarray:
        """self @ w"""
        return np.add.reduceat(self.vals[:, None] * w[self.cols], self.row_starts, axis=0)

    def tdot(self, g: np.ndarray) -> np.ndarray:
        """self.T @ g"""
        out = np.zeros((self.width, g.shape[1]))
        i = self.by_col
        out[self.col_ids] = np.add.reduceat(self.vals[i, None] * g[self.rows[i]], self.col_starts, axis=0)
        return out


def _train(x: _Sparse, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias minimising the mean cross-entropy plus an L2 penalty (gradient descent)."""
    w = np.zeros((x.width, y.shape[1]))
    b = np.zeros(y.shape[1])
    for _ in range(EPOCHS):
        grad = (_softmax(x.dot(w) + b) - y) / x.height
        w -= LEARNING_RATE * (x.tdot(grad) + L2 * w)
        b -= LEARNING_RATE * grad.sum(axis=0)
    return w, b


@functools.cache
def load_classifier() -> ProblemClassifier:
    """The classifier trained on every shipped example, trained once per process at first use
    (call it off the event loop: training takes a fraction of a second)."""
    return ProblemClassifier(load_examples())
