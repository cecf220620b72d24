"""Reading what a model-as-judge wrote: ratings, choices between candidates, verdicts, scores.

One copy of every judgment parser, shared by the nodes (rate, compare, verify) and the approaches
(mcts). Every reader is loose about formatting and strict about ambiguity: a reply it cannot read
gives None, never a silent 0 or a silent first candidate.

Scales: `parse_rating` and `parse_labelled_score` give 0-10 (what the prompts ask for);
`parse_unit_score` gives a value in [0, 1] (what search algorithms use as a reward).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from optigraph.core.answers import strip_think

# ---- ratings (0-10) ---------------------------------------------------------------------------------

_RATING_NUM = r"(\d+(?:\.\d+)?)"

_RATING_OUT_OF = re.compile(_RATING_NUM + r"\s*(?:/|out\s+of|of)\s*(10|100|5)\b", re.IGNORECASE)

_LABELLED = re.compile(r"\b(?:rating|score|grade)\b\s*(?:is|of|:|=)?\s*[*_]*\s*" + _RATING_NUM, re.IGNORECASE)

_BOLD = re.compile(r"[*_]{1,2}\s*" + _RATING_NUM + r"\s*[*_]{1,2}")

_ANY = re.compile(r"(?<![\w.])" + _RATING_NUM + r"(?![\w]|\.\d)")


def _in_range(value: float) -> float | None:
    return value if 0.0 <= value <= 10.0 else None


def parse_rating(text: str) -> float | None:
    """A 0-10 rating from a loosely written reply; None when there is none or it is ambiguous."""
    body = strip_think(text)
    out_of = _RATING_OUT_OF.findall(body)
    if out_of:
        value, scale = out_of[-1]
        return _in_range(float(value) * 10.0 / float(scale))
    for pattern in (_LABELLED, _BOLD):
        found = [v for v in (_in_range(float(m)) for m in pattern.findall(body)) if v is not None]
        if found:
            return found[-1]
    numbers = {v for v in (_in_range(float(m)) for m in _ANY.findall(body)) if v is not None}
    # A lone number is the rating; several unlabelled ones are ambiguous.
    return numbers.pop() if len(numbers) == 1 else None


# ---- choices between candidates ---------------------------------------------------------------------

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}

_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "1st": 1,
    "2nd": 2,
    "3rd": 3,
    "4th": 4,
    "5th": 5,
    "last": -1,
}

_CHOICE_NUM = r"(\d+|" + "|".join(_WORDS) + r")\b"

_NOUN = r"(?:candidate|response|solution|answer|option|choice)s?"

_VERB = r"(?:is|was|would\s+be|:|=|-)"

_FILL = r"[\s*_\[\]()#:.\-]*"  # markup between a label and its number

_PATTERNS = (
    # "BEST CANDIDATE: 2", "The best response is Candidate 2", "best candidate: **#2**"
    re.compile(
        r"\bbest(?:\s+(?:"
        + _NOUN
        + r"|one)\s*"
        + _VERB
        + r"?|\s*"
        + _VERB
        + r")"
        + _FILL
        + r"(?:"
        + _NOUN
        + r"|number|no\.)?"
        + _FILL
        + _CHOICE_NUM,
        re.IGNORECASE,
    ),
    re.compile(r"\[\[\s*" + _CHOICE_NUM + r"\s*\]\]", re.IGNORECASE),
    # "Candidate 2 is the best", "Response 1 is better"
    re.compile(
        r"\b" + _NOUN + r"\s*#?\s*" + _CHOICE_NUM + r"[*_)\s]*(?:is|was)\s+(?:clearly\s+|the\s+|much\s+)*"
        r"(?:best|better|correct|strongest|stronger|superior|preferred|preferable|winner|most\s+accurate)",
        re.IGNORECASE,
    ),
    # "I choose Candidate 2", "I'd pick 3", "winner: Response 1"
    re.compile(
        r"\b(?:choose|chose|pick|picked|select|selected|prefer|go\s+with|winner\s*(?:is|:))\s+"
        r"(?:is\s+)?[*_]*(?:" + _NOUN + r")?" + _FILL + _CHOICE_NUM,
        re.IGNORECASE,
    ),
    re.compile(r"\*\*\s*(?:" + _NOUN + r")?\s*#?\s*" + _CHOICE_NUM + r"\s*\*\*", re.IGNORECASE),
)

_ORDINAL = re.compile(r"\bthe\s+(" + "|".join(_ORDINALS) + r")\s+(?:one|" + _NOUN + r")\b", re.IGNORECASE)

_BARE = re.compile(r"^\W*(?:" + _NOUN + r")?\s*#?\s*" + _CHOICE_NUM + r"\W*$", re.IGNORECASE)

_MENTION = re.compile(r"\b" + _NOUN + r"\s*#?\s*" + _CHOICE_NUM, re.IGNORECASE)


def _number(token: str) -> int:
    token = token.lower()
    return _WORDS[token] if token in _WORDS else int(token)


def parse_choice(text: str, count: int) -> int | None:
    """The 0-based position of the candidate a reply picks among `count`, or None."""
    body = strip_think(text)

    def valid(numbers: Sequence[int]) -> list[int]:
        return [n for n in numbers if 1 <= n <= count]

    for pattern in _PATTERNS:
        found = valid([_number(m) for m in pattern.findall(body)])
        if found:
            return found[-1] - 1
    ordinals = valid([count if _ORDINALS[m.lower()] == -1 else _ORDINALS[m.lower()] for m in _ORDINAL.findall(body)])
    if ordinals:
        return ordinals[-1] - 1
    bare = _BARE.match(body)
    if bare and valid([_number(bare.group(1))]):
        return _number(bare.group(1)) - 1
    mentioned = set(valid([_number(m) for m in _MENTION.findall(body)]))
    return mentioned.pop() - 1 if len(mentioned) == 1 else None


# ---- verdicts and labelled scores -------------------------------------------------------------------

_PASS = frozenset(
    {
        "correct",
        "pass",
        "passed",
        "passes",
        "valid",
        "true",
        "accept",
        "accepted",
        "accurate",
        "right",
        "sound",
        "verified",
    }
)

_FAIL = frozenset(
    {
        "incorrect",
        "fail",
        "failed",
        "fails",
        "invalid",
        "false",
        "reject",
        "rejected",
        "inaccurate",
        "wrong",
        "unsound",
        "flawed",
        "incomplete",
        "erroneous",
        "unverified",
    }
)

_NEGATIONS = frozenset({"not", "never", "isn't", "isnt", "wasn't", "nor"})

_QUALIFIERS = frozenset({"partially", "partly", "mostly", "almost", "largely", "nearly", "somewhat", "half"})

_LABEL = re.compile(
    r"\b(?:final\s+)?(?:verdict|assessment|judge?ment)\b[\s*_`#]*(?:is\b)?[\s*_`]*[:=\-–—]?(.*)", re.IGNORECASE
)

_JUDGING = re.compile(
    r"\b(?:solution|answer|proof|response|reasoning|derivation|it|this)\s+"
    r"(?:is|was|appears(?:\s+to\s+be)?|seems(?:\s+to\s+be)?|looks)(n't|\s+not)?\s+((?:[a-z]+\s+){0,2}?)"
    r"(correct|incorrect|right|wrong|valid|invalid|flawed|sound|unsound|accurate|inaccurate)\b",
    re.IGNORECASE,
)

_SHOUTED = re.compile(r"\b(CORRECT|INCORRECT|PASS|FAIL|VALID|INVALID)\b")

_SCORE_LINE = re.compile(r"^[^\n]*\b(?:score|confidence)\b[^\n]*$", re.IGNORECASE | re.MULTILINE)

_ISSUES = re.compile(r"^[\W_]*issues?(?:\s+found)?[\s*_`]*:(.*)", re.IGNORECASE | re.MULTILINE)

_SECTION_END = re.compile(
    r"^[\W_]*(?:score|confidence|verdict|final\s+verdict|assessment)\b", re.IGNORECASE | re.MULTILINE
)

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")

_NONE = re.compile(
    r"^(?:none|no issues?(?: found)?|no problems?(?: found)?|no errors?(?: found)?|n/?a|nothing)\W*$", re.IGNORECASE
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def _judge_phrase(phrase: str, *, limit: int = 10) -> bool | None:
    """The verdict a short phrase states ("CORRECT", "not correct", "The solution is wrong")."""
    words = _words(phrase)[:limit]
    negated = qualified = False
    for word in words:
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
        elif word in _QUALIFIERS:
            qualified = True
        elif word in _PASS or word in _FAIL:
            if qualified:
                return False
            return (word in _PASS) != negated
    return None


def parse_verdict(text: str) -> bool | None:
    """True (pass), False (fail), or None when the reply states no readable verdict."""
    body = strip_think(text)
    if not body:
        return None
    for match in reversed(list(_LABEL.finditer(body))):
        phrase = match.group(1)
        found = {w for w in _words(phrase)[:10] if w in _PASS or w in _FAIL}
        if found & _PASS and found & _FAIL and " or " in phrase.lower():
            continue  # the template echoed back: "CORRECT or INCORRECT"
        verdict = _judge_phrase(phrase)
        if verdict is not None:
            return verdict
    judged = list(_JUDGING.finditer(body))
    if judged:
        m = judged[-1]
        negated = bool(m.group(1))
        qualifiers = set(_words(m.group(2) or ""))
        if qualifiers & _QUALIFIERS:
            return False
        negated ^= bool(qualifiers & _NEGATIONS)
        return (m.group(3).lower() in _PASS) != negated
    words = _words(body)
    if 0 < len(words) <= 3:
        verdict = _judge_phrase(body)
        if verdict is not None:
            return verdict
    shouted = _SHOUTED.findall(body)
    if shouted:
        return shouted[-1] in ("CORRECT", "PASS", "VALID")
    return None


def parse_labelled_score(text: str) -> float | None:
    """The 0-10 score of the last `Score:` (or `Confidence:`) line; None when there is none."""
    lines = _SCORE_LINE.findall(strip_think(text))
    for line in reversed(lines):
        value = parse_rating(line)
        if value is not None:
            return value
    return None


def parse_issues(text: str) -> list[str]:
    """The problems listed after the last `Issues:` label (bullets, lines or semicolons); [] for
    "none" or when there is no such section."""
    body = strip_think(text)
    found = list(_ISSUES.finditer(body))
    if not found:
        return []
    start = found[-1]
    rest = start.group(1) + body[start.end() :]
    end = _SECTION_END.search(rest, len(start.group(1)))
    section = rest[: end.start()] if end else rest
    lines = [ln for ln in section.splitlines() if ln.strip()]
    items = lines if len(lines) > 1 else [p for ln in lines for p in ln.split(";")]
    issues = [_BULLET.sub("", item).strip().strip("*_`").strip() for item in items]
    return [i for i in issues if i and not _NONE.match(i)]


# ---- scores in [0, 1] -------------------------------------------------------------------------------

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")

_SCALE_OUT_OF = re.compile(r"\d\s*(?:/|out\s+of)\s*\d", re.IGNORECASE)

_FRACTION = re.compile(r"(?<![\d.])(?:0?\.\d+|1\.0+)(?![\d.])")


def parse_unit_score(text: str) -> float | None:
    """A score in [0, 1] from a loosely written evaluation: "7", "**7/10**", "Score: 0.8", "80%".

    Asked for 0-10; a decimal between 0 and 1 with no scale ("0.8") is read as a fraction, since
    a judge writing it almost always means that scale. None when there is no readable score."""
    body = strip_think(text)
    percents = _PERCENT.findall(body)
    if percents and not _SCALE_OUT_OF.search(body):
        value = float(percents[-1]) / 100.0
        return value if 0.0 <= value <= 1.0 else None
    rating = parse_rating(body)
    if rating is None:
        return None
    if rating <= 1.0 and not _SCALE_OUT_OF.search(body) and _FRACTION.search(body):
        return rating
    return rating / 10.0
