"""Adaptive sampling replayed on the samples of a fixed run.

A fixed `self_consistency` run (`adaptive: false`) draws its whole budget of independent samples; the
eval's database keeps every one (the `upstream_calls` of each run). Taking those samples in the order
they were recorded, this module asks the approach's own stopping rule (`nodes/adaptive.settled`) after
each round of `batch` and votes with the approach's own `vote` node over the samples drawn so far: the
answer adaptive sampling gives when its samples are these, and the tokens it spends. Because the samples
are independent draws at the same temperature, the replay is a draw of the adaptive run itself, paired
with the fixed run on the very same samples: any difference in accuracy comes from stopping alone.

    optigraph eval --replay-adaptive eval-results/sc-fixed --out eval-results/sc-replayed
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from optigraph.evals.grading import grade
from optigraph.evals.problems import Problem
from optigraph.evals.report import ProblemResult, read_jsonl
from optigraph.graphs.self_consistency import SelfConsistencyParams
from optigraph.memory.tables import UPSTREAM_CALLS
from optigraph.nodes.adaptive import round_size, settled
from optigraph.nodes.common import message_text
from optigraph.nodes.sample import is_usable
from optigraph.nodes.vote import vote

DB_FILE = "optigraph.db"  # the in-process server's database in an eval's --out folder


@dataclass(frozen=True)
class Sample:
    """One recorded completion of a run: a candidate as the sampling node makes it, and its cost."""

    candidate: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int


def recorded_calls(db_path: Path, run_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The successful upstream calls of the runs in `run_ids` (rows of `upstream_calls` whose response
    was stored), by run, in the order recorded."""
    engine = create_engine(f"sqlite:///{db_path}")
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(UPSTREAM_CALLS).where(UPSTREAM_CALLS.c.status == "ok").order_by(UPSTREAM_CALLS.c.id)
            ).mappings()
            for row in rows:
                if row["run_id"] in run_ids and isinstance(row["response"], dict):
                    out[row["run_id"]].append(dict(row))
    finally:
        engine.dispose()
    return dict(out)


def recorded_samples(db_path: Path, run_ids: set[str]) -> dict[str, list[Sample]]:
    """Every successful completion the runs in `run_ids` received, in the order recorded."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for run_id, rows in recorded_calls(db_path, run_ids).items():
        for row in rows:
            choices = row["response"].get("choices") or []
            share = len(choices)  # a call's tokens, split over its choices
            for i, choice in enumerate(choices):  # one per call when the upstream cannot return n
                # A call is recorded compactly (core/llm.py): each choice as its text, not its whole message.
                message = choice.get("message") or {"role": "assistant", "content": choice.get("text") or ""}
                candidate = {
                    "text": message_text(message),
                    "message": message,
                    "finish_reason": choice.get("finish_reason"),
                }
                out[run_id].append(
                    Sample(
                        candidate,
                        prompt_tokens=int(row["prompt_tokens"] or 0) // share if i == 0 else 0,
                        completion_tokens=int(row["completion_tokens"] or 0) // share,
                    )
                )
    return dict(out)


@dataclass(frozen=True)
class Replayed:
    """What the adaptive rule made of one run's samples."""

    answer: str
    drawn: int  # samples it used
    rounds: int
    prompt_tokens: int
    completion_tokens: int


async def replay_one(samples: list[Sample], params: dict[str, Any]) -> Replayed:
    """Rounds of `params["batch"]` over `samples` (in order) until the stopping rule settles the vote,
    then the vote; a budget beyond the samples recorded stops where they end."""
    params = {**params, "samples": min(int(params["samples"]), len(samples))}
    state: dict[str, Any] = {"params": params, "candidates": [], "drawn": 0}
    used, rounds = 0, 0
    while True:
        n = round_size(params, state["drawn"], "samples")
        batch = [dict(s.candidate, index=used + i) for i, s in enumerate(samples[used : used + n])]
        usable = [c for c in batch if is_usable(c)] or batch  # as sample_candidates keeps them
        state = {**state, "candidates": state["candidates"] + usable, "drawn": state["drawn"] + n}
        used, rounds = used + n, rounds + 1
        if settled(state, budget="samples"):
            break
    answer = (await vote(state))["answers"][0]["message"]
    return Replayed(
        answer=message_text(answer),
        drawn=used,
        rounds=rounds,
        prompt_tokens=sum(s.prompt_tokens for s in samples[:used]),
        completion_tokens=sum(s.completion_tokens for s in samples[:used]),
    )


async def replay_results(
    fixed: list[ProblemResult],
    samples: dict[str, list[Sample]],
    problems: dict[str, Problem],
    *,
    params: dict[str, Any] | None = None,
    approach: str = "self_consistency (adaptive, replayed)",
) -> list[ProblemResult]:
    """The adaptive rule's result on each fixed-run problem whose samples were recorded (a problem
    whose run failed, or that the problem set no longer has, is left out)."""
    rule = SelfConsistencyParams.model_validate({"adaptive": True, **(params or {})}).model_dump()
    out = []
    for result in fixed:
        run_samples = samples.get(result.run_id or "")
        problem = problems.get(result.id)
        if not run_samples or problem is None or result.error:
            continue
        replayed = await replay_one(run_samples, rule)
        graded = await grade(problem, replayed.answer)
        out.append(
            replace(
                result,
                approach=approach,
                correct=graded.correct,
                answer=graded.answer,
                grade_method=graded.method,
                grade_detail=graded.detail,
                response=replayed.answer,
                prompt_tokens=replayed.prompt_tokens,
                completion_tokens=replayed.completion_tokens,
                upstream_calls=replayed.drawn,
                # An estimate: the fixed run's time in proportion to the samples drawn (an upstream that
                # serves one request at a time spends its time per sample, not per round).
                wall_s=result.wall_s * replayed.drawn / len(run_samples),
            )
        )
    return out


def replay_folder(
    folder: Path, problems: list[Problem], *, params: dict[str, Any] | None = None
) -> list[ProblemResult]:
    """`replay_results` for an eval's --out folder (its results.jsonl and database)."""
    fixed = read_jsonl(folder / "results.jsonl")
    samples = recorded_samples(folder / DB_FILE, {r.run_id for r in fixed if r.run_id})
    return asyncio.run(replay_results(fixed, samples, {p.id: p for p in problems}, params=params))
