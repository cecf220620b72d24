"""Person names without a cue, for the `privacy` plugin: a gazetteer of first names and surnames.

No named-entity model ships as a PyPI package, so names are recognised from lists that do: the `names`
package's frequency-ranked US census lists (5,494 first names, 88,799 surnames). A capitalised word
that is a common first name is a name ("ask Alice about it"), with the capitalised surnames that follow
it ("Alice Smith"). First names that are also ordinary English words, places or programming languages
("Will", "May", "Grace", "Ruby", "Georgia"...) count only when a surname follows ("Will Smith"), so
"Will you help?" and "Ruby on Rails" stay as they are. Lower-case and all-capitals words never count.
What it misses: rare first names (beyond the most common 1,200 female and 700 male), names outside the US lists,
and a surname alone ("ask Smith").
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import regex

# The most common first names of each list (by census frequency): further down, the lists hold more
# rare spellings and words than names ("Numbers" is the 753rd male name).
FEMALE_NAMES_KEPT = 1200
MALE_NAMES_KEPT = 700
SURNAMES_KEPT = 30000  # the most common surnames

# First names that are also words, places, titles or languages: names only when a surname follows.
AMBIGUOUS = frozenset(
    """
    ada alma alta amber angel april art august augusta aurora austin autumn bill billie bobbie brandy
    candy carolina chance charity chase cherry christian clay cleveland cliff constance crystal cruz
    dale dallas dawn dean dee destiny drew earl earnest ebony ernest faith fay faye florence frank gay
    gene georgia ginger glen grace grant guadalupe guy hazel heath helena holly hope houston india iris
    israel ivy jackson jade jan jewel jordan joy julia june kenya king kitty lane lee lincoln lou lupe
    madison major marshall mark mason max may merry miles misty nick noble noel olive pat pearl penny
    phoenix queen ray reed rich rob rocky rod rose ruby rusty sandy santa savannah sierra sterling
    sue summer sun sydney taylor trinidad venus vera victoria violet wade will young chelsea daisy lily
    iva ina ora ola una ila oma vida nova rene son ma mai wm al ed ty don art
    """.split()
)

_WORD = regex.compile(r"\b\p{Lu}[\p{Ll}'\-]*\p{Ll}\b")


class NameSpan(NamedTuple):
    start: int
    end: int


@functools.cache
def _lists() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lower-case; read once per process from the `names` package's files."""
    from importlib.resources import files

    folder = files("names")

    def ranked(name: str, keep: int) -> list[str]:
        lines = folder.joinpath(name).read_text().splitlines()
        return [line.split()[0].lower() for line in lines[:keep] if line.strip()]

    first = ranked("dist.female.first", FEMALE_NAMES_KEPT) + ranked("dist.male.first", MALE_NAMES_KEPT)
    return frozenset(first), frozenset(ranked("dist.all.last", SURNAMES_KEPT))


def find_names(text: str) -> list[NameSpan]:
    """Where person names are in `text` by the lists (see the module's docstring)."""
    first_names, surnames = _lists()
    words = list(_WORD.finditer(text))
    found: list[NameSpan] = []
    i = 0
    while i < len(words):
        word = words[i]
        key = word.group().lower()
        if len(key) < 3 or key not in first_names:
            i += 1
            continue
        end, j = word.end(), i + 1
        # the capitalised surnames right after it (one space or a hyphen apart): "Alice Smith-Jones"
        while j < len(words) and j - i <= 2 and text[end : words[j].start()] in (" ", "-"):
            if words[j].group().lower() not in surnames:
                break
            end, j = words[j].end(), j + 1
        if key not in AMBIGUOUS or j > i + 1:
            found.append(NameSpan(word.start(), end))
        i = j
    return found
