"""What the `privacy` plugin counts as personal data: Presidio's pattern recognizers (no language
model, nothing downloaded at run time) and two recognizers of our own for person names: one for names
introduced by a cue, one for common first names from census lists (optigraph/plugins/person_names.py).

Detected (placeholder label: what, by which recognizer):
- EMAIL: e-mail addresses with a known public suffix (Presidio; tldextract's bundled list, never fetched)
- PHONE: numbers valid in the US, UK, DE, FR, IL, IN, CA or BR, or with a country code (Presidio, libphonenumber)
- CARD: Luhn-valid payment card numbers; IBAN: checksum-valid IBANs (Presidio)
- IP: IPv4 and IPv6 addresses; MAC: MAC addresses (Presidio)
- SSN: US social security numbers; CRYPTO: Bitcoin addresses (Presidio)
- NAME: person names after a cue: "my name is", "I am" / "I'm", "call me", "name:", or a title (Mr, Mrs,
  Ms, Miss, Dr, Prof); and, without a cue, a common first name with the surnames after it ("ask Alice
  Smith"), where first names that are also words ("Will", "Grace", "Ruby") need a surname. Ours: a
  named-entity model would find more, and none ships on PyPI.

Not detected: rare first names without a cue, a surname alone, postal addresses, dates (of birth or
other), passport and other national numbers, organisations, locations.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

# Presidio's entity type -> our placeholder label.
LABELS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
    "US_SSN": "SSN",
    "CRYPTO": "CRYPTO",
    "MAC_ADDRESS": "MAC",
    "PERSON": "NAME",
}
# A name found by the lists alone: below the cue patterns' scores, so a cue's wider match wins.
NAME_LIST_SCORE = 0.5
# Below this score a match is too weak to act on (Presidio gives 0.05 to 0.3 to shapes it could not
# validate, such as an SSN-shaped number with a known-fake prefix).
MIN_SCORE = 0.4

# A capitalised word (letters, an inner apostrophe or hyphen): O'Brien, Anne-Marie, José.
_WORD = r"\p{Lu}[\p{Ll}'\-]*\p{Ll}"
_NAME = rf"{_WORD}(?:\s+{_WORD}){{0,2}}"
_NAME_PATTERNS = (
    (r"(?i:\bmy name is|\bi am|\bi'm|\bi’m|\bcall me|\bname:)\s+", 0.6),
    (r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+", 0.7),
)


class Finding(NamedTuple):
    """One detected value: where it is in the text and which placeholder label it gets."""

    start: int
    end: int
    label: str


@functools.cache
def _recognizers() -> tuple[Any, ...]:
    """Built once per process, on first use (importing Presidio takes seconds); read-only after."""
    import regex
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    # tldextract's default fetches the public suffix list from the internet; the bundled snapshot
    # is enough to tell a real domain from `user@localhost`, and nothing leaves the machine.
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text.rsplit("@", 1)[-1]).fqdn != ""

    # Variable-width look-behind: Presidio matches with the `regex` module, which allows it. Case
    # matters here (Presidio ignores it by default): "I am happy" names no one.
    names = PatternRecognizer(
        supported_entity="PERSON",
        name="NameAfterCueRecognizer",
        global_regex_flags=regex.MULTILINE,
        patterns=[
            Pattern(f"name after {i}", rf"(?<={cue}){_NAME}", score) for i, (cue, score) in enumerate(_NAME_PATTERNS)
        ],
    )
    return (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        CryptoRecognizer(),
        MacAddressRecognizer(),
        names,
    )


def find(text: str) -> list[Finding]:
    """The personal data in `text`, in order, without overlaps: where two findings overlap the one
    with the higher score wins (an IP address is not also a phone number), then the longer one."""
    from presidio_analyzer import RecognizerResult

    from optigraph.plugins.person_names import find_names

    candidates = []
    for recognizer in _recognizers():
        for r in recognizer.analyze(text, recognizer.supported_entities, None):
            if r.score >= MIN_SCORE and r.entity_type in LABELS:
                candidates.append(r)
    candidates += [RecognizerResult("PERSON", span.start, span.end, NAME_LIST_SCORE) for span in find_names(text)]
    candidates.sort(key=lambda r: (-r.score, -(r.end - r.start), r.start))
    kept: list[Finding] = []
    for r in candidates:
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(Finding(r.start, r.end, LABELS[r.entity_type]))
    return sorted(kept)
