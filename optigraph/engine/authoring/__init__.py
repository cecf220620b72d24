"""Authoring approaches outside optigraph, two ways (docs/authoring.md has worked examples).

Python: write a `build() -> StateGraph` over `ApproachState` and turn it into an ApproachSpec with
`@approach(...)` (decorator.py), or build the ApproachSpec yourself. Put the module in the
approaches directory or name it in an `optigraph.approaches` entry point; optigraph/engine/loading.py
loads it at start.

Declarative: a YAML or JSON document composed from the built-in nodes in NODE_KINDS (kinds.py),
turned by `load_declarative` / `parse_declarative` (declarative.py) into an ordinary ApproachSpec:
read with line numbers (reader.py), checked rule by rule (validate.py, parameters.py), costed
(estimate.py) and compiled (build.py). Every error names the file and line.
"""

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.engine.authoring.declarative import load_declarative, parse_declarative
from optigraph.engine.authoring.decorator import approach
from optigraph.engine.authoring.kinds import NODE_KINDS
from optigraph.engine.authoring.reader import DeclarativeSpecError

__all__ = [
    "NODE_KINDS",
    "ApproachParams",
    "ApproachSpec",
    "ApproachState",
    "DeclarativeSpecError",
    "RunContext",
    "approach",
    "load_declarative",
    "parse_declarative",
]
