"""`bon`'s choice replayed on the candidates and ratings of a recorded run.

A `bon` run records its sampling call(s) (node `sample`) and one rating call per candidate (node
`rate`, whose request holds the candidate it rates). Given those, the answer depends only on the
selection rule, so a run made with one rule can be replayed with another (nodes/select.py) at no model
cost, paired with the recorded run on the very same candidates and ratings.

    optigraph eval --replay-select eval-results/bon --params '{"bon": {"selection": "weighted_vote"}}' --out ...
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from optigraph.core.judgments import parse_rating
from optigraph.evals.grading import grade
from optigraph.evals.problems import Problem
from optigraph.evals.replay import DB_FILE, recorded_calls
from optigraph.evals.report import ProblemResult, read_jsonl
from optigraph.graphs.bon import BonParams
from optigraph.nodes.common import message_text
from optigraph.nodes.select import select as select_node


def recorded_choices(db_path: Path, run_ids: set[str]) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """For each run: its candidates (the `sample` calls' choices, in order, indexed) and their scores,
    each rating matched to its candidate by the candidate text its request carried."""
    calls = recorded_calls(db_path, run_ids)
    out = {}
    for run_id, rows in calls.items():
        candidates: list[dict[str, Any]] = []
        for row in rows:
            if row["node"] != "sample":
                continue
            for choice in row["response"].get("choices") or []:
                text = message_text(choice.get("message") or {"content": choice.get("text") or ""})
                candidates.append(
                    {"index": len(candidates), "text": text, "finish_reason": choice.get("finish_reason")}
                )
        scores = []
        rated_already: set[int] = set()  # two candidates with the same text get one rating each
        for row in rows:
            messages = (row["request"] or {}).get("messages") if isinstance(row["request"], dict) else None
            if row["node"] != "rate" or not isinstance(messages, list) or len(messages) < 2:
                continue
            rated = (messages[-2] or {}).get("content")
            match = next((c for c in candidates if c["text"] == rated and c["index"] not in rated_already), None)
            choices = row["response"].get("choices") or [{}]
            if match is not None:
                rated_already.add(match["index"])
                scores.append({"index": match["index"], "score": parse_rating(choices[0].get("text") or "")})
        out[run_id] = (candidates, scores)
    return out


async def replay_results(
    recorded: list[ProblemResult],
    choices: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    problems: dict[str, Problem],
    *,
    selection: str,
) -> list[ProblemResult]:
    """`select` with `selection` on each recorded run's candidates and ratings, graded; cost and time
    are the recorded run's (the same calls)."""
    out = []
    for result in recorded:
        found = choices.get(result.run_id or "")
        problem = problems.get(result.id)
        if not found or not found[0] or problem is None or result.error:
            continue
        candidates, scores = found
        state = {"candidates": candidates, "scores": scores, "params": {"selection": selection}}
        answer = message_text((await select_node(state))["answers"][0]["message"])  # type: ignore[arg-type]
        graded = await grade(problem, answer)
        out.append(
            replace(
                result,
                approach=f"bon ({selection}, replayed)",
                correct=graded.correct,
                answer=graded.answer,
                grade_method=graded.method,
                grade_detail=graded.detail,
                response=answer,
            )
        )
    return out


def replay_select_folder(
    folder: Path, problems: list[Problem], *, params: dict[str, Any] | None = None
) -> list[ProblemResult]:
    """`replay_results` for a `bon` eval's --out folder; `params` are bon's (its `selection`)."""
    selection = BonParams.model_validate(params or {}).selection
    recorded = read_jsonl(folder / "results.jsonl")
    choices = recorded_choices(folder / DB_FILE, {r.run_id for r in recorded if r.run_id})
    return asyncio.run(replay_results(recorded, choices, {p.id: p for p in problems}, selection=selection))
