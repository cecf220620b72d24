"""Adaptive sampling: how every voting approach spends its sample budget.

By default an approach samples in rounds of `batch` and, after each round, asks the stopping rule
(`optigraph.core.votes.should_stop`) whether more samples could still change the vote; it stops as
soon as they could not, or the budget is spent. `adaptive: false` draws the whole budget in one
round (the fixed self-consistency of the paper).

`AdaptiveParams` declares the knobs once for every approach that uses them; `sample_round` is the
node that draws one round; `settled` is the router after it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams
from optigraph.core.state import ApproachState, sorted_candidates
from optigraph.core.votes import SIMILARITY_THRESHOLD, StopRule, is_cut, should_stop, vote_candidates, vote_margin
from optigraph.errors import UpstreamError
from optigraph.nodes.sample import SampleNode, param_or_client, sample_candidates

MAX_ROUNDS = 16  # keeps an adaptive run well inside the graph's step limit

# Cost formulas over AdaptiveParams and a budget parameter named BUDGET (substitute the real name).
CALLS = "1 + adaptive * (ceil(BUDGET / batch) - 1)"
EXPECTED_CALLS = "1 + adaptive * (ceil(min(min_samples, BUDGET) / batch) - 1)"


def formula(template: str, budget: str) -> str:
    """A cost formula of this module with the approach's budget parameter named."""
    return template.replace("BUDGET", budget)


class AdaptiveParams(ApproachParams):
    """The adaptive-sampling knobs (the budget itself is each approach's own parameter)."""

    adaptive: bool = Field(
        True, description="Sample in rounds of `batch`, stopping once the vote is settled; false: draw all at once."
    )
    batch: int = Field(2, ge=1, le=64, description="Adaptive: samples drawn per round.")
    stop_rule: Literal["lead", "beta"] = Field(
        "lead",
        description="Adaptive: `lead` stops once the leader is `min_lead` votes ahead after `min_samples`; "
        "`beta` once P(leader stays ahead) reaches `stop_threshold` (arXiv 2305.11860). Both stop when the "
        "rest of the budget could not overturn the leader.",
    )
    min_samples: int = Field(2, ge=1, le=64, description="Adaptive, `lead`: samples before a lead may stop.")
    min_lead: int = Field(2, ge=1, le=64, description="Adaptive, `lead`: votes the leader must be ahead.")
    stop_threshold: float = Field(
        0.95, gt=0.5, le=1.0, description="Adaptive, `beta`: P(leading answer stays ahead) that stops sampling."
    )

    budget_field: ClassVar[str] = "samples"  # the approach's budget parameter, when named otherwise

    @model_validator(mode="after")
    def _bounded_rounds(self) -> AdaptiveParams:
        budget = int(getattr(self, self.budget_field))
        if self.adaptive and math.ceil(budget / self.batch) > MAX_ROUNDS:
            raise ValueError(f"{self.budget_field} / batch allows more than {MAX_ROUNDS} rounds; raise batch")
        return self


class AdaptiveState(ApproachState, total=False):
    drawn: int  # samples requested so far, over every round


def budget_of(params: dict[str, Any], budget: str) -> int:
    return int(params[budget])


def round_size(params: dict[str, Any], drawn: int, budget: str) -> int:
    """Samples the next round draws: the whole budget when not adaptive, else up to `batch`."""
    total = budget_of(params, budget)
    if not params.get("adaptive"):
        return total
    return max(0, min(int(params["batch"]), total - drawn))


def sample_round(*, budget: str = "samples", default_temperature: float = 1.0, node: str = "sample") -> SampleNode:
    """A node drawing one round of samples, numbered after the earlier rounds'. A later round whose
    calls all fail ends the sampling (noted); the first one failing fails the run."""

    async def sample(state: AdaptiveState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        params = state.get("params") or {}
        drawn = int(state.get("drawn") or 0)
        n = round_size(params, drawn, budget)
        temperature = param_or_client(state, "temperature", default_temperature)
        try:
            out = await sample_candidates(state, runtime, n=n, node=node, temperature=temperature)
        except UpstreamError as exc:
            if not state.get("candidates"):
                raise
            return {
                "drawn": budget_of(params, budget),
                "notes": [f"{node}: round failed, voting on what we have: {exc.message}"],
            }
        candidates = [{**c, "index": drawn + c.get("index", 0)} for c in out["candidates"]]
        return {**out, "candidates": candidates, "drawn": drawn + n}

    sample.__name__ = node
    return sample


def settled(state: AdaptiveState, *, budget: str = "samples") -> bool:
    """Whether the vote over the candidates so far is final (the budget is spent, or the stopping
    rule says more samples would not change it)."""
    params = state.get("params") or {}
    drawn = int(state.get("drawn") or 0)
    total = budget_of(params, budget)
    if not params.get("adaptive") or drawn >= total:
        return True
    candidates = sorted_candidates(state)
    if all(is_cut(c) for c in candidates):  # cut samples vote only when nothing else answers: not yet known
        return False
    threshold = params.get("similarity_threshold", SIMILARITY_THRESHOLD)
    leader, runner_up = vote_margin(vote_candidates(candidates, threshold=threshold))
    return should_stop(leader, runner_up, drawn, total, StopRule.from_params(params))


def sample_or_vote(*, budget: str = "samples", again: str = "sample", done: str = "vote") -> Any:
    """The router after a round: `again` until settled, then `done`."""

    def route(state: AdaptiveState) -> str:
        return done if settled(state, budget=budget) else again

    return route
