"""`privacy`: personal data never leaves the machine. `pre` replaces what its detectors find in the
conversation with stable placeholders (`[EMAIL_1]`, `[PHONE_2]`...); the wrapped approach and the
upstream see only those; `post` puts the originals back in every answer, and while streaming a
placeholder split across chunks is held back until it is whole, then restored.

Detected (pattern detectors, each checked by a test): e-mail addresses, phone numbers written with a
country code or grouped digits, payment card numbers (Luhn-valid), IBANs (checksum-valid), IPv4 and
IPv6 addresses. Not detected by this version: person names, postal addresses, dates of birth.

The same value gets the same placeholder everywhere in the conversation. The mapping is this
plugin's private state: it is kept with the run's checkpoints (on this machine) so that a resumed
run can still restore the answer; nothing with the originals is sent upstream.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import PluginSpec
from optigraph.core.state import Answer, PluginState

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*(?![\w:])")
_PLACEHOLDER = re.compile(r"\[(?:EMAIL|CARD|IBAN|PHONE|IP)_\d+\]")
_LONGEST_PLACEHOLDER = len("[PHONE_99999]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban(text: str) -> bool:
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return 15 <= len(compact) <= 34 and int(number) % 97 == 1


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _phone(text: str) -> bool:
    """7 to 15 digits, and not shaped like a date."""
    return 7 <= len(re.sub(r"\D", "", text)) <= 15 and not _DATE.match(text)


# (label, pattern, check) in the order they are applied: the most specific first, so a card number
# is not also taken for a phone number.
DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    ("EMAIL", _EMAIL, lambda _: True),
    ("IBAN", _IBAN, _iban),
    ("CARD", _CARD, _card),
    ("IP", _IPV6, _ip),
    ("IP", _IPV4, _ip),
    ("PHONE", _PHONE, _phone),
)


class Anonymizer:
    """Replaces detected values with placeholders; the same value always gets the same one."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self.mapping: dict[str, str] = dict(mapping or {})  # placeholder -> original
        self._by_value = {v: k for k, v in self.mapping.items()}

    def _placeholder(self, label: str, value: str) -> str:
        found = self._by_value.get(value)
        if found is None:
            count = sum(1 for k in self.mapping if k.startswith(f"[{label}_")) + 1
            found = f"[{label}_{count}]"
            self.mapping[found] = value
            self._by_value[value] = found
        return found

    def text(self, text: str) -> str:
        for label, pattern, check in DETECTORS:
            text = pattern.sub(lambda m, lb=label, ck=check: self._placeholder(lb, m.group(0)) if ck(m.group(0))
                               else m.group(0), text)
        return text

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.text(content)}
        if isinstance(content, list):
            parts = [{**p, "text": self.text(p["text"])} if isinstance(p, dict) and p.get("type") == "text"
                     and isinstance(p.get("text"), str) else p for p in content]
            return {**message, "content": parts}
        return message


def restore(text: str, mapping: dict[str, str]) -> str:
    """`text` with every known placeholder replaced by its original (unknown ones are left as they are)."""
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


class Restorer:
    """The streaming form of `restore`: holds back a trailing `[...` that may be a placeholder's start."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self.pending = ""

    def feed(self, text: str) -> str:
        data = self.pending + text
        cut = data.rfind("[")
        if cut != -1 and "]" not in data[cut:] and len(data) - cut < _LONGEST_PLACEHOLDER:
            self.pending, data = data[cut:], data[:cut]
        else:
            self.pending = ""
        return restore(data, self.mapping)

    def flush(self) -> str:
        data, self.pending = self.pending, ""
        return restore(data, self.mapping)


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    anonymizer = Anonymizer()
    messages = [anonymizer.message(m) for m in state["messages"]]
    counts: dict[str, int] = {}
    for placeholder in anonymizer.mapping:
        label = placeholder[1:].split("_")[0]
        counts[label] = counts.get(label, 0) + 1
    found = ", ".join(f"{n} {label.lower()}" for label, n in sorted(counts.items())) or "nothing"
    return {"messages": messages, "private": {"mapping": anonymizer.mapping},
            "notes": [f"privacy: replaced {found}"]}


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    mapping = (state.get("private") or {}).get("mapping") or {}
    answers: list[Answer] = []
    for answer in state.get("answers") or []:
        message = dict(answer.get("message") or {})
        if isinstance(message.get("content"), str):
            message["content"] = restore(message["content"], mapping)
        answers.append({**answer, "message": message})
    return {"answers": answers}


def stream(request: dict[str, Any], private: dict[str, Any]) -> Restorer:
    return Restorer(private.get("mapping") or {})


SPEC = PluginSpec(
    name="privacy",
    description="Replaces personal data (e-mails, phones, cards, IBANs, IPs) with placeholders before "
                "anything goes upstream, and restores them in the answer (streaming too).",
    pre=pre,
    post=post,
    stream=stream,
)
