"""`router` (and `auto`): choose the approach for each request from its prompt, on this machine.

OptILLM's router classifies the prompt with a ModernBERT model from the Hugging Face hub; this one
uses the local problem-type classifier (plugins/problem_types.py: TF-IDF and logistic regression
trained at first use from prompts shipped in the package, nothing downloaded) and maps the type to
an approach:

    router.pre: classify the last user turn -> type, confidence
                -> confidence >= threshold: route to `routes[type]`
                -> else: `fallback` if set, else what `router` wraps (the server's default when alone)
    router.run: the chosen expression (recorded as a decision with its reason)

`auto`, OptILLM's default approach name, is this plugin under that name. Types and default routes:
arithmetic -> coc (the model writes and runs code), word_problem -> self_consistency, logic -> z3,
code -> plansearch, writing -> moa, factual -> none, chat -> none; `routes` overrides any of them.

Cost: no call of its own; the routed expression's calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field, field_validator

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.plugins.problem_types import PROBLEM_TYPES, load_classifier

DEFAULT_ROUTES = {
    "arithmetic": "coc",
    "word_problem": "self_consistency",
    "logic": "z3",
    "code": "plansearch",
    "writing": "moa",
    "factual": "none",
    "chat": "none",
}


class RouterParams(ApproachParams):
    threshold: float = Field(
        0.35, ge=0.0, le=1.0, description="Least confidence to route by the type; below it the fallback runs."
    )
    fallback: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="Expression run below the threshold; default: what the router wraps.",
    )
    routes: dict[str, str] = Field(
        default_factory=dict,
        description="Expression per problem type, replacing the default routes "
        "(types: " + ", ".join(PROBLEM_TYPES) + ").",
    )

    @field_validator("routes")
    @classmethod
    def _known_types(cls, routes: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(routes) - set(PROBLEM_TYPES))
        if unknown:
            raise ValueError(f"unknown problem type(s) {', '.join(unknown)}; known: {', '.join(PROBLEM_TYPES)}")
        if any(not isinstance(v, str) or not v.strip() for v in routes.values()):
            raise ValueError("every route must be a non-empty expression")
        return routes


def choose(label: str, confidence: float, params: dict[str, Any]) -> tuple[str | None, str]:
    """The expression to run (None: what the router wraps) and why."""
    if confidence >= float(params["threshold"]):
        route = {**DEFAULT_ROUTES, **(params.get("routes") or {})}[label]
        return route, f"router: {label} ({confidence:.2f}) -> {route}"
    below = f"router: {label} ({confidence:.2f}) is below the threshold {params['threshold']}"
    if params.get("fallback"):
        return str(params["fallback"]), f"{below} -> fallback {params['fallback']}"
    return None, f"{below} -> what it wraps"


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or RouterParams().model_dump()
    prediction = await asyncio.to_thread(load_classifier().predict, last_user_text(state["messages"]))
    route, reason = choose(prediction.label, prediction.confidence, params)
    private = {
        "type": prediction.label,
        "confidence": round(prediction.confidence, 4),
        "route": route,
        "probabilities": prediction.probabilities,
    }
    out: dict[str, Any] = {"private": private, "notes": [reason]}
    if route is not None:
        out.update(route=route, reason=reason)
    return out


SPEC = PluginSpec(
    name="router",
    description="Chooses the approach for each request: a local classifier (trained at first use from prompts "
    "shipped with the package) gives the problem type, mapped to an approach; below a confidence threshold, "
    "the fallback runs.",
    pre=pre,
    params=RouterParams,
    routes=True,
)

AUTO_SPEC = dataclasses.replace(
    SPEC, name="auto", description="OptILLM's default approach name: the router (see `router`)."
)
