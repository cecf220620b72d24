"""Answer extraction without an LLM: the final answer a response commits to, normalised for voting.

Tried in order, the last occurrence winning within each pattern: `\\boxed{...}`, "final answer: X",
"the answer is X", a GSM8K-style "#### X" line, a lone choice letter, the last number. `<think>`
blocks are removed first, so a reasoning model's scratch work never counts as its answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_ANSWER = re.compile(r"final\s+answer[\s*]*(?:is\b|:)[\s*:]*(.+)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\bthe\s+(?:correct\s+)?answer\s+is\s*:?\s*(.+)", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*\**answer\**\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"^\s*#{3,}\s*(.+?)\s*$", re.MULTILINE)
_CHOICE = re.compile(r"^\s*\(?\s*([A-Ea-e])\s*[).:]?\s*$")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_GROUPED = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_DELIMITERS = re.compile(r"\\[\[\]()]")  # \[ \] \( \): math delimiters around an answer
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")


@dataclass(frozen=True)
class Extracted:
    """An answer and how it was found (`boxed`, `final_answer`, `answer_is`, `hashes`, `choice`,
    `last_number`)."""

    answer: str
    method: str


def strip_think(text: str) -> str:
    """Removes `<think>...</think>` blocks; with only a closing tag, keeps what follows it."""
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    return text.strip()


def _last_boxed(text: str) -> str | None:
    found: str | None = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return found


def _clause(text: str) -> str:
    """The answer part of "the answer is X. Because ...": up to the sentence end or line end."""
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


# "the final answer is: Final answer: 223": a label the model repeats after the one we matched
_REPEATED_LABEL = re.compile(r"^(?:\s*(?:\*\*)?\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)[\s*:]*)+", re.IGNORECASE)


def extract_answer(text: str) -> Extracted | None:
    """The answer a response commits to, or None when it commits to none."""
    body = strip_think(text)
    if not body:
        return None
    boxed = _last_boxed(body)
    if boxed is not None and boxed.strip():
        return Extracted(boxed.strip(), "boxed")
    for pattern, method in ((_FINAL_ANSWER, "final_answer"), (_ANSWER_IS, "answer_is"), (_ANSWER_LINE, "final_answer")):
        matches = list(pattern.finditer(body))
        if matches:
            value = _clause(_REPEATED_LABEL.sub("", matches[-1].group(1)))
            if value:
                inner = _last_boxed(value)
                return Extracted((inner or value).strip(), method)
    hashes = _HASHES.findall(body)
    if hashes:
        return Extracted(hashes[-1], "hashes")
    choice = _CHOICE.match(body)
    if choice:
        return Extracted(choice.group(1), "choice")
    numbers = _NUMBER.findall(body)
    if numbers:
        return Extracted(numbers[-1], "last_number")
    return None


def normalize_number(value: str) -> str | None:
    """ "1,000" / "1000.0" / "$1000" -> "1000"; "0.50" -> "0.5"; None when not a number."""
    s = value.strip().replace("$", "").replace("\\%", "").rstrip("%").strip()
    if _GROUPED.match(s):
        s = s.replace(",", "")
    try:
        number = float(s)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    if number.is_integer():
        return str(int(number))
    return repr(number)


def normalize_answer(value: str) -> str:
    """A canonical form for comparing answers: numbers as numbers, text lowercased and trimmed."""
    s = _LATEX_TEXT.sub(r"\1", value)
    s = _LATEX_DELIMITERS.sub(" ", s)
    s = _REPEATED_LABEL.sub("", s.replace("**", "").replace("`", "").strip()).strip()
    s = s.strip("$ ").strip()
    number = normalize_number(s.rstrip("."))
    if number is not None:
        return number
    choice = _CHOICE.match(s)
    if choice:
        return choice.group(1).lower()
    s = re.sub(r"\s+", " ", s).lower()
    return s.strip(" .,;:!?\"'")


def extract_normalized(text: str) -> str | None:
    """`extract_answer` then `normalize_answer`; None when no answer is found."""
    found = extract_answer(text)
    if found is None:
        return None
    return normalize_answer(found.answer) or None


def tag_content(text: str, tag: str) -> str | None:
    """The content of the last `<tag>...</tag>` section (an unclosed last section runs to the end);
    None when the tag does not appear."""
    opening = list(re.finditer(rf"<{re.escape(tag)}\s*>", text, re.IGNORECASE))
    if not opening:
        return None
    rest = text[opening[-1].end() :]
    closing = re.search(rf"</{re.escape(tag)}\s*>", rest, re.IGNORECASE)
    return (rest[: closing.start()] if closing else rest).strip()


# ---- code blocks ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON = {"python", "python3", "py", "py3"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) for each closed fenced block of `text`, in order; `<think>` is ignored."""
    return [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(strip_think(text))]


def extract_code(text: str) -> str | None:
    """The program a response gives: its last block labelled Python, else its last unlabelled block;
    a fence the response never closed (it was cut off) runs to the end. None when there is none."""
    blocks = code_blocks(text)
    for wanted in (_PYTHON, {""}):
        found = [code for lang, code in blocks if lang in wanted and code.strip()]
        if found:
            return found[-1]
    body = strip_think(text)
    opened = re.search(
        r"^[ \t]*```[ \t]*(python3?|py)?[ \t]*\n(.*)\Z",
        body[_last_fence_end(body) :],
        re.DOTALL | re.MULTILINE | re.IGNORECASE,
    )
    return opened.group(2) if opened and opened.group(2).strip() else None


def _last_fence_end(text: str) -> int:
    return max((m.end() for m in _FENCE.finditer(text)), default=0)


def without_code(text: str) -> str:
    """The prose of a response: its fenced blocks removed."""
    return _FENCE.sub("", strip_think(text)).strip()
