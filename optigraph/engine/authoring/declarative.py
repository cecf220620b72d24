"""A declarative spec (YAML or JSON) to an ApproachSpec: read it, validate it, derive its parameter
model and cost, compile its graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optigraph.core import cost
from optigraph.core.spec import ApproachSpec
from optigraph.engine.authoring.build import graph_builder
from optigraph.engine.authoring.estimate import cost_formulas
from optigraph.engine.authoring.parameters import params_model
from optigraph.engine.authoring.reader import DeclarativeSpecError, Document, read
from optigraph.engine.authoring.validate import validate


def parse_declarative(text: str, source: str = "<spec>") -> ApproachSpec:
    """An ApproachSpec from a YAML or JSON document; DeclarativeSpecError lists file:line errors."""
    doc, data = read(text, source)
    graph = validate(doc, data)
    if graph is None:
        raise DeclarativeSpecError(source, doc.errors)
    params = params_model(graph.name, graph.params)
    calls, rounds = _given_costs(doc, data, cost_formulas(graph), params().model_dump())
    papers = data.get("papers") or []
    if not isinstance(papers, list) or not all(isinstance(p, str) for p in papers):
        doc.error(("papers",), "papers must be a list of strings")
    if doc.errors:
        raise DeclarativeSpecError(source, doc.errors)
    terminals = [n for n in graph.order if not graph.successors[n]]
    return ApproachSpec(
        name=graph.name,
        description=graph.description,
        build=graph_builder(graph),
        params=params,
        papers=tuple(papers),
        calls=calls,
        rounds=rounds,
        streams_final=all(graph.nodes[n][0].streams for n in terminals),
    )


def _given_costs(
    doc: Document, data: dict[str, Any], derived: tuple[str, str], defaults: dict[str, Any]
) -> tuple[str, str]:
    """`calls` and `rounds` as the spec gives them (each must evaluate at the defaults), else derived."""
    calls, rounds = derived
    for key in ("calls", "rounds"):
        if key not in data:
            continue
        formula = data[key]
        try:
            cost.evaluate(str(formula), defaults)
        except (ValueError, SyntaxError, TypeError) as exc:
            doc.error((key,), f"{key}: bad cost formula {formula!r}: {exc}")
            continue
        calls, rounds = (str(formula), rounds) if key == "calls" else (calls, str(formula))
    return calls, rounds


def load_declarative(path: Path | str) -> ApproachSpec:
    """An ApproachSpec from a .yaml, .yml or .json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclarativeSpecError(str(path), [(1, f"cannot be read: {exc}")]) from None
    return parse_declarative(text, str(path))
