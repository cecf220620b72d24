"""The cost formulas of a declarative graph (calls and dependent rounds, over its parameters), for the
full path, from what each node kind calls."""

from __future__ import annotations

from optigraph.engine.authoring.kinds import kind_name
from optigraph.engine.authoring.validate import Graph


def cost_formulas(graph: Graph) -> tuple[str, str]:
    """Calls: one per `one`-call node, plus, per rating node, the candidates sampled so far (the sum
    of the sample nodes' `n`). Rounds: the longest chain of calling nodes."""
    candidates: list[str] = []
    for n in graph.order:
        kind, settings = graph.nodes[n]
        if kind_name(kind) == "sample":
            v = settings["n"]
            candidates.append(v[1:] if isinstance(v, str) else str(v))
    per_candidate = " + ".join(candidates) or "0"
    if len(candidates) > 1:
        per_candidate = f"({per_candidate})"
    fixed, terms = 0, []
    rounds: dict[str, int] = {}
    for n in graph.order:
        kind = graph.nodes[n][0]
        if kind.calls == "one":
            fixed += 1
        elif kind.calls == "per_candidate":
            terms.append(per_candidate)
        before = max((rounds[p] for p in graph.predecessors[n] if p in rounds), default=0)
        rounds[n] = before + (kind.calls != "none")
    calls = " + ".join(([str(fixed)] if fixed or not terms else []) + terms)
    return calls, str(max(rounds.values(), default=0))
