"""Multi-step arithmetic word problems generated from templates, with answers computed by code.

Each template draws its numbers from a seeded `random.Random`, writes the story, and computes the
answer from the same numbers, so every answer is exact (no typed arithmetic to get wrong). A draw
that would give a fractional or negative answer is redrawn. The same seed always gives the same
problems; the numbers each problem was built from are kept in `Problem.extra["values"]`, so a test
can check every answer against a formula of its own.

Every problem takes two to four dependent operations (the kind where a small model that reasons in
prose slips and one that writes a program does not).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from optigraph.evals.problems import Problem, load_problems

CATEGORY = "multistep"
DEFAULT_COUNT = 120
DEFAULT_SEED = 2211
NAMES = ("Maya", "Leo", "Ana", "Omar", "Grace", "Ivan", "Lena", "Tariq", "Sofia", "Ben", "Priya", "Kofi")

Draw = dict[str, int]


@dataclass(frozen=True)
class Template:
    """One kind of story: `draw` picks the numbers (None: draw again), `text` writes the question,
    `answer` computes the result from the same numbers."""

    name: str
    draw: Callable[[random.Random], Draw | None]
    text: str
    answer: Callable[[Draw], int]


def _boxes(r: random.Random) -> Draw | None:
    v = {"trays": r.randint(3, 9), "per": r.choice((6, 8, 12, 15)), "morning": r.randint(5, 20)}
    v["afternoon"] = r.randint(3, 15)
    rest = v["trays"] * v["per"] - v["morning"] - v["afternoon"]
    sizes = [s for s in (3, 4, 5, 6, 7) if rest > s and rest % s == 0]
    if not sizes:
        return None
    v["box"] = r.choice(sizes)
    return v


def _savings(r: random.Random) -> Draw | None:
    v = {"rate": r.randint(11, 24), "hours": r.randint(10, 30), "food": r.randint(40, 90)}
    v["transport"] = r.randint(10, 35)
    v["weeks"] = r.randint(3, 8)
    return v if v["rate"] * v["hours"] > v["food"] + v["transport"] else None


def _discount(r: random.Random) -> Draw | None:
    v = {"price": r.choice(range(40, 200, 20)), "off": r.choice((10, 15, 20, 25, 30)), "coupon": r.randint(3, 12)}
    v["count"] = r.randint(2, 5)
    return v if v["price"] * v["off"] % 100 == 0 else None


def _average_speed(r: random.Random) -> Draw | None:
    v = {"v1": r.choice(range(40, 100, 5)), "t1": r.randint(2, 5), "v2": r.choice(range(30, 90, 5))}
    v["t2"] = r.randint(2, 5)
    total = v["v1"] * v["t1"] + v["v2"] * v["t2"]
    return v if total % (v["t1"] + v["t2"]) == 0 and v["v1"] != v["v2"] else None


def _ages(r: random.Random) -> Draw | None:
    return {"age": 2 * r.randint(5, 20), "older": r.randint(2, 9), "years": r.randint(3, 12)}


def _fence(r: random.Random) -> Draw | None:
    return {"length": r.randint(8, 40), "width": r.randint(5, 25), "gate": r.randint(1, 4), "cost": r.randint(6, 19)}


def _warehouse(r: random.Random) -> Draw | None:
    v = {"start": r.randint(200, 600), "arrive": r.randint(50, 250), "days": r.randint(3, 7), "ship": r.randint(20, 90)}
    return v if v["start"] + v["arrive"] > v["days"] * v["ship"] else None


def _bus(r: random.Random) -> Draw | None:
    v = {"classes": r.randint(4, 12), "size": r.randint(18, 32), "bus": r.choice((20, 25, 40, 50, 60, 75))}
    v["absent"] = r.randint(1, 9)
    return v if v["classes"] * v["size"] * v["bus"] % 100 == 0 else None


def _flour(r: random.Random) -> Draw | None:
    v = {"cups": r.randint(2, 5), "batch": r.choice((12, 16, 20, 24)), "bag": r.choice((4, 5, 6))}
    v["cookies"] = v["batch"] * r.randint(3, 9)
    return v if v["cups"] * v["cookies"] // v["batch"] % v["bag"] != 0 else None


def _change(r: random.Random) -> Draw | None:
    v = {"adult": r.randint(9, 25), "child": r.randint(4, 12), "people": r.randint(4, 9)}
    v["children"] = r.randint(1, v["people"] - 1)
    cost = (v["people"] - v["children"]) * v["adult"] + v["children"] * v["child"]
    v["paid"] = 100 * (cost // 100 + 1)
    return v if v["adult"] > v["child"] else None


def _reading(r: random.Random) -> Draw | None:
    v = {"pages": r.randint(180, 520), "first": r.randint(10, 25), "days": r.randint(3, 8), "then": r.randint(26, 45)}
    return v if v["pages"] > v["first"] * v["days"] + v["then"] else None


def _pencils(r: random.Random) -> Draw | None:
    v = {"pack": r.choice((10, 12, 24)), "each": r.randint(2, 5), "students": r.randint(13, 37)}
    return v if v["each"] * v["students"] % v["pack"] else None


TEMPLATES: tuple[Template, ...] = (
    Template(
        "boxes",
        _boxes,
        "{name} bakes {trays} trays of muffins with {per} muffins on each tray. {name} sells {morning} muffins "
        "in the morning and {afternoon} in the afternoon, then packs all the muffins that are left into boxes of "
        "{box}. How many boxes does she fill?",
        lambda v: (v["trays"] * v["per"] - v["morning"] - v["afternoon"]) // v["box"],
    ),
    Template(
        "savings",
        _savings,
        "{name} earns ${rate} per hour and works {hours} hours each week. Every week {name} spends ${food} on "
        "food and ${transport} on transport and saves the rest. How many dollars does {name} save in {weeks} "
        "weeks?",
        lambda v: v["weeks"] * (v["rate"] * v["hours"] - v["food"] - v["transport"]),
    ),
    Template(
        "discount",
        _discount,
        "A jacket costs ${price}. It is on sale for {off}% off, and after the discount a ${coupon} coupon is "
        "taken off the price of each jacket. {name} buys {count} jackets. How many dollars does {name} pay in "
        "total?",
        lambda v: v["count"] * (v["price"] - v["price"] * v["off"] // 100 - v["coupon"]),
    ),
    Template(
        "average_speed",
        _average_speed,
        "A train travels at {v1} km/h for {t1} hours, then at {v2} km/h for {t2} hours. What is its average "
        "speed over the whole trip, in km/h?",
        lambda v: (v["v1"] * v["t1"] + v["v2"] * v["t2"]) // (v["t1"] + v["t2"]),
    ),
    Template(
        "ages",
        _ages,
        "{name} is {age} years old. {name}'s cousin is {older} years older than half of {name}'s age. In "
        "{years} years, what will the sum of their ages be?",
        lambda v: (v["age"] + v["years"]) + (v["age"] // 2 + v["older"] + v["years"]),
    ),
    Template(
        "fence",
        _fence,
        "A rectangular garden is {length} m long and {width} m wide. A fence goes all the way around it "
        "except for a gate {gate} m wide. Fencing costs ${cost} per metre. How many dollars does the fencing "
        "cost?",
        lambda v: (2 * (v["length"] + v["width"]) - v["gate"]) * v["cost"],
    ),
    Template(
        "warehouse",
        _warehouse,
        "A warehouse holds {start} boxes. On Monday {arrive} more boxes arrive. On each of the next {days} "
        "days, {ship} boxes are shipped out. How many boxes are in the warehouse after that?",
        lambda v: v["start"] + v["arrive"] - v["days"] * v["ship"],
    ),
    Template(
        "bus",
        _bus,
        "A school has {classes} classes of {size} students each. {bus}% of the students take the bus and "
        "the others walk. On Friday {absent} of the walkers are absent. How many students walk to school "
        "on Friday?",
        lambda v: v["classes"] * v["size"] - v["classes"] * v["size"] * v["bus"] // 100 - v["absent"],
    ),
    Template(
        "flour",
        _flour,
        "A recipe uses {cups} cups of flour for every {batch} cookies. {name} wants to bake {cookies} cookies. "
        "Flour is sold in bags of {bag} cups. How many bags of flour must {name} buy?",
        lambda v: math.ceil(v["cups"] * v["cookies"] // v["batch"] / v["bag"]),
    ),
    Template(
        "change",
        _change,
        "Adult tickets cost ${adult} and child tickets cost ${child}. A group of {people} people, {children} "
        "of them children, buys one ticket each and pays with ${paid}. How many dollars of change do they get?",
        lambda v: v["paid"] - (v["people"] - v["children"]) * v["adult"] - v["children"] * v["child"],
    ),
    Template(
        "reading",
        _reading,
        "A book has {pages} pages. {name} reads {first} pages a day for {days} days, then {then} pages a day "
        "until the book is finished. How many days does {name} take to finish the book in all?",
        lambda v: v["days"] + math.ceil((v["pages"] - v["first"] * v["days"]) / v["then"]),
    ),
    Template(
        "pencils",
        _pencils,
        "Pencils are sold in packs of {pack}. A teacher needs {each} pencils for each of her {students} "
        "students and buys the fewest packs that are enough. How many pencils are left over?",
        lambda v: math.ceil(v["each"] * v["students"] / v["pack"]) * v["pack"] - v["each"] * v["students"],
    ),
)


def generate(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[Problem]:
    """`count` problems, cycling through the templates; the same (count, seed) gives the same list."""
    rng = random.Random(seed)
    problems: list[Problem] = []
    for i in range(count):
        template = TEMPLATES[i % len(TEMPLATES)]
        values = None
        while values is None:
            values = template.draw(rng)
        name = rng.choice(NAMES)
        problems.append(
            Problem(
                id=f"multi-{i + 1:03d}",
                category=CATEGORY,
                prompt=template.text.format(name=name, **values),
                answer=str(template.answer(values)),
                grader="number",
                extra={"template": template.name, "values": values, "source": "generated"},
            )
        )
    return problems


def default_problems() -> list[Problem]:
    """What `optigraph eval` runs without `--problems`: the shipped set, then the generated problems."""
    return load_problems() + generate()
