"""`@approach(...)`: turns a Python `build() -> StateGraph` function into an ApproachSpec."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from langgraph.graph import StateGraph

from optigraph.core.spec import ApproachParams, ApproachSpec


def approach(
    name: str,
    *,
    description: str,
    params: type[ApproachParams] = ApproachParams,
    papers: Iterable[str] = (),
    needs: Iterable[str] = ("text",),
    calls: str = "1",
    rounds: str = "1",
    expected_calls: str | None = None,
    streams_final: bool = False,
) -> Callable[[Callable[[], StateGraph]], ApproachSpec]:
    """Decorates a `build() -> StateGraph` function; the decorated name becomes its ApproachSpec.

    `calls` and `rounds` are cost formulas over the parameters (see optigraph/core/cost.py): the most
    it makes; `expected_calls`, when it stops early, the calls it makes when nothing fails."""

    def wrap(build: Callable[[], StateGraph]) -> ApproachSpec:
        return ApproachSpec(
            name=name,
            description=description,
            build=build,
            params=params,
            papers=tuple(papers),
            needs=frozenset(needs),
            calls=calls,
            rounds=rounds,
            expected_calls=expected_calls,
            streams_final=streams_final,
        )

    return wrap
