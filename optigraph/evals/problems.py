"""Problem sets: the one shipped with optigraph, a user's JSONL file, or problems generated offline.

One problem per JSONL line:

    {"id": "word-01", "category": "word", "prompt": "...", "answer": "30.5", "grader": "number"}

`grader` is `number` (numeric comparison, `math-verify` when installed), `exact` (normalised text,
optional `aliases`), `choice` (a letter; optional `choices` {"A": "text", ...} lets an answer given
as the option's text count) or `code` (`tests`: assert statements, a list or one string, run after
the candidate's code; `answer` is a reference solution). Other keys are kept in `extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

GRADERS = ("number", "exact", "choice", "code")

# What the runner appends to each prompt so that answers can be found (see `prompt_for`).
INSTRUCTIONS = {
    "number": "Think step by step, then give the final answer as a plain number on the last line, "
    "in the form: Final answer: <number>",
    "exact": "Think step by step, then give the final answer on the last line, in the form: Final answer: <answer>",
    "choice": "Think step by step, then give the letter of the correct option on the last line, "
    "in the form: Final answer: <letter>",
    "code": "Answer with the complete Python code in one ```python code block.",
}


class ProblemError(ValueError):
    """A problem file line that cannot be used, with where it is."""


@dataclass(frozen=True)
class Problem:
    id: str
    category: str
    prompt: str
    answer: str
    grader: str
    tests: tuple[str, ...] = ()
    choices: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "prompt": self.prompt,
            "answer": self.answer,
            "grader": self.grader,
        }
        if self.tests:
            out["tests"] = list(self.tests)
        if self.choices:
            out["choices"] = dict(self.choices)
        if self.aliases:
            out["aliases"] = list(self.aliases)
        return {**self.extra, **out}


def prompt_for(problem: Problem, *, instructions: bool = True) -> str:
    """The user message sent for a problem: its prompt and, unless turned off, the answer format."""
    if not instructions:
        return problem.prompt
    return f"{problem.prompt}\n\n{INSTRUCTIONS[problem.grader]}"


def problem_from_dict(row: dict[str, Any], *, where: str = "") -> Problem:
    """A Problem from one parsed line; ProblemError (naming `where`) when it is not usable."""
    if not isinstance(row, dict):
        raise ProblemError(f"{where}: a problem must be a JSON object")
    missing = [k for k in ("id", "prompt", "answer") if row.get(k) in (None, "")]
    if missing:
        raise ProblemError(f"{where}: missing {', '.join(missing)}")
    grader = row.get("grader", "number")
    if grader not in GRADERS:
        raise ProblemError(f"{where}: unknown grader {grader!r} (known: {', '.join(GRADERS)})")
    tests = row.get("tests") or []
    if isinstance(tests, str):
        tests = (tests,)
    elif isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        tests = tuple(tests)
    else:
        raise ProblemError(f"{where}: 'tests' must be a string or a list of strings")
    if grader == "code" and not tests:
        raise ProblemError(f"{where}: a code problem needs 'tests'")
    choices = row.get("choices") or {}
    if not isinstance(choices, dict):
        raise ProblemError(f'{where}: \'choices\' must be an object such as {{"A": "..."}}')
    aliases = row.get("aliases") or ()
    if isinstance(aliases, str):
        aliases = (aliases,)
    known = {"id", "category", "prompt", "answer", "grader", "tests", "choices", "aliases"}
    return Problem(
        id=str(row["id"]),
        category=str(row.get("category") or "general"),
        prompt=str(row["prompt"]),
        answer=str(row["answer"]),
        grader=grader,
        tests=tuple(tests),
        choices={str(k).upper(): str(v) for k, v in choices.items()},
        aliases=tuple(str(a) for a in aliases),
        extra={k: v for k, v in row.items() if k not in known},
    )


def parse_problems(text: str, *, source: str = "<problems>") -> list[Problem]:
    """Problems from JSONL text (blank lines skipped); ids must be unique."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProblemError(f"{where}: not JSON ({exc.msg})") from None
        problem = problem_from_dict(row, where=where)
        if problem.id in seen:
            raise ProblemError(f"{where}: duplicate id {problem.id!r}")
        seen.add(problem.id)
        problems.append(problem)
    return problems


def shipped_problems_text() -> str:
    return resources.files("optigraph.evals").joinpath("problems.jsonl").read_text(encoding="utf-8")


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """The problems in `path`, or the shipped set when `path` is None."""
    if path is None:
        return parse_problems(shipped_problems_text(), source="problems.jsonl")
    p = Path(path)
    return parse_problems(p.read_text(encoding="utf-8"), source=str(p))


def select_problems(
    problems: list[Problem],
    *,
    categories: list[str] | None = None,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """A subset: only these categories and ids (when given), then the first `limit`."""
    out = problems
    if categories:
        wanted = set(categories)
        out = [p for p in out if p.category in wanted]
    if ids:
        wanted_ids = set(ids)
        out = [p for p in out if p.id in wanted_ids]
    if limit is not None:
        out = out[:limit]
    return out


def reasoning_gym_problems(dataset: str, count: int, seed: int) -> list[Problem]:
    """`count` problems generated offline by the `reasoning-gym` package (e.g. `gsm_symbolic`,
    `basic_arithmetic`, `chain_sum`), graded as numbers when the answer is one, else as exact text."""
    try:
        import reasoning_gym
    except ImportError:
        raise ProblemError("--reasoning-gym needs the reasoning-gym package: pip install 'optigraph[eval]'") from None
    try:
        data = reasoning_gym.create_dataset(dataset, size=count, seed=seed)
    except Exception as exc:  # an unknown name or bad configuration: the package's own message
        raise ProblemError(f"reasoning-gym could not create {dataset!r}: {exc}") from None
    from optigraph.core.answers import normalize_number

    problems = []
    for i, entry in enumerate(data):
        answer = str(entry["answer"])
        grader = "number" if normalize_number(answer) is not None else "exact"
        problems.append(
            Problem(
                id=f"{dataset}-{seed}-{i}",
                category=dataset,
                prompt=str(entry["question"]),
                answer=answer,
                grader=grader,
                extra={"source": "reasoning-gym"},
            )
        )
    return problems
