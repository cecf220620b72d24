"""Constrained decoding: the local model can only write what a JSON schema (or any JSON value) allows.

`response_format` `json_schema` / `json_object` is compiled into a regular expression over the answer's
text (outlines-core's JSON-schema translation), then into an index over the model's vocabulary: for
every state, the tokens that keep the text inside the language. Each generated row walks the index
with a `RowGuide`; before every draw the logits of the tokens it does not allow are set to -inf, and
end-of-sequence is allowed only where the text is complete. So an answer that ends on its own (not cut
by `max_tokens`) is valid JSON matching the schema, with any sampling settings, on any model.

Whitespace between JSON tokens is limited to one optional space (the translation's default), so a
model cannot loop on blank space. Strings and numbers stay unbounded unless the schema bounds them
(`maxLength`, `maxItems`, `enum`...): a row may still run into `max_tokens` (finish_reason `length`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optigraph.errors import InvalidRequest

# Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): every byte is one printable character of this alphabet.
_SPIECE_SPACE = "\u2581"  # SentencePiece's word-start marker


def available() -> bool:
    """Whether constrained decoding can run here (outlines-core is installed with the local extra)."""
    import importlib.util

    return importlib.util.find_spec("outlines_core") is not None


def schema_of(response_format: Any) -> tuple[bool, dict[str, Any] | None]:
    """(whether JSON is asked for, its schema or None for any JSON object) from a `response_format` field.

    Raises a 400 for a malformed field, so a bad request never reaches the model."""
    if response_format is None:
        return False, None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise InvalidRequest("response_format must be an object with a type", param="response_format")
    kind = response_format["type"]
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format json_schema needs json_schema.schema, a JSON schema object",
                param="response_format",
                code="invalid_value",
            )
        return True, schema
    raise InvalidRequest(
        f"unknown response_format type {kind!r}: one of text, json_object, json_schema",
        param="response_format",
        code="invalid_value",
    )


# Any JSON object: the translation of this schema is outlines-core's generic JSON value grammar,
# restricted to an object at the top (what OpenAI's json_object mode returns).
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class Vocab:
    """The model's vocabulary as outlines-core needs it: each token's exact bytes. Built once per model."""

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        from outlines_core import Vocabulary

        eos = sorted(eos_ids)
        if not eos:
            raise InvalidRequest("this local model has no end-of-sequence token: no constrained decoding")
        special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(eos)
        pieces: dict[bytes, list[int]] = {}
        for piece, token in tokenizer.get_vocab().items():
            if token in special:
                continue
            raw = token_bytes(piece)
            if raw:
                pieces.setdefault(raw, []).append(token)
        self.eos = frozenset(eos)
        self.vocabulary = Vocabulary(eos[0], pieces)


def token_bytes(piece: str) -> bytes:
    """The bytes a vocabulary piece stands for: byte-level BPE pieces, SentencePiece byte pieces
    (`<0x0A>`) and SentencePiece words (`\u2581word` is " word")."""
    from optigraph.local.text import _raw_bytes

    raw = _raw_bytes(piece)
    if raw is not None:
        return raw
    return piece.replace(_SPIECE_SPACE, " ").encode("utf-8")


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint for one schema on one model: start a `RowGuide` per generated row."""

    index: Any  # outlines_core.Index
    eos: frozenset[int]
    schema: str  # the schema as compiled (for messages and tests)

    def start(self) -> RowGuide:
        from outlines_core import Guide

        return RowGuide(Guide(self.index), self.eos)


class RowGuide:
    """Where one row stands in the grammar: which tokens it may take next, and the step after each."""

    def __init__(self, guide: Any, eos: frozenset[int]) -> None:
        self.guide = guide
        self.eos = eos

    def allowed(self) -> list[int]:
        """Token ids allowed next; every end-of-sequence id of the model when the text is complete."""
        tokens = list(self.guide.get_tokens())
        if self.guide.is_finished() or any(t in self.eos for t in tokens):
            tokens = [t for t in tokens if t not in self.eos] + sorted(self.eos)
        return tokens or sorted(self.eos)  # a dead end (never expected): end the row rather than draw nothing

    def mask(self, logits: Any) -> Any:
        """`logits` (one row, [vocab]) with every token the grammar forbids set to -inf."""
        import torch

        allowed = torch.tensor(self.allowed(), dtype=torch.long)
        allowed = allowed[allowed < logits.shape[-1]]
        masked = torch.full_like(logits, float("-inf"))
        return masked.index_copy(-1, allowed, logits.index_select(-1, allowed))

    def advance(self, token: int) -> None:
        if token not in self.eos:
            self.guide.advance(token)


def compile_grammar(vocab: Vocab, schema: dict[str, Any] | None) -> Grammar:
    """The constraint for `schema` (None: any JSON object). A schema the translation cannot express is a
    400 that says so, rather than an unconstrained answer."""
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    text = json.dumps(schema if schema is not None else ANY_OBJECT, sort_keys=True)
    try:
        regex = build_regex_from_schema(text)
        index = Index(regex, vocab.vocabulary)
    except Exception as exc:  # outlines-core raises plain ValueError/RuntimeError subclasses
        raise InvalidRequest(
            f"response_format: the local model cannot constrain its output to this schema: {exc}",
            param="response_format",
            code="unsupported_schema",
        ) from exc
    return Grammar(index=index, eos=vocab.eos, schema=text)
