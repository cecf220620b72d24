"""From token ids back to text as they are generated: incremental decoding, stop sequences, streaming holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class Detokenizer:
    """Turns a growing list of token ids into text, a piece per token, without re-decoding everything.

    Decoding a window of recent tokens with some context before it keeps word-initial spaces and
    multi-byte characters right; a token that ends inside a character yields nothing until it completes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens already turned into text
        self.text = ""

    def add(self, token: int) -> str:
        """Adds a token; returns the new text (maybe empty)."""
        self.ids.append(token)
        before = decode(self.tokenizer, self.ids[self.prefix : self.read])
        after = decode(self.tokenizer, self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += new
            return new
        return ""

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end)."""
        rest = decode(self.tokenizer, self.ids[self.prefix :])[
            len(decode(self.tokenizer, self.ids[self.prefix : self.read])) :
        ]
        self.read = len(self.ids)
        self.text += rest
        return rest


def find_stop(text: str, stops: Sequence[str], since: int = 0) -> int:
    """Index of the first stop sequence in `text` that ends after `since`, or -1."""
    if not stops:
        return -1
    start = max(0, since - max(len(s) for s in stops))
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else -1


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (not safe to stream yet)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def token_text(tokenizer: Any, token: int) -> tuple[str, bytes]:
    """One token on its own, for logprobs: its text and its exact bytes. A token that is part of a
    multi-byte character has no text of its own: it reads `bytes:\\xe2\\x80` as in OpenAI's API."""
    text = tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if "\ufffd" not in text:
        return text, text.encode("utf-8")
    raw = _raw_bytes(tokenizer.convert_ids_to_tokens(token))
    if raw is None:
        return text, text.encode("utf-8")
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def _raw_bytes(piece: str) -> bytes | None:
    """The bytes behind a vocabulary piece: SentencePiece byte pieces (`<0xE2>`) or GPT-2 byte-level pieces."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    if all(c in BYTE_LEVEL for c in piece):
        return bytes(BYTE_LEVEL[c] for c in piece)
    return None


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the others to chars from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_LEVEL = _byte_level_table()  # a constant: char of a byte-level vocabulary piece -> byte
