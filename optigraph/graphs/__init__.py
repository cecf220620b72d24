"""One module per approach; each exposes `SPEC` (an ApproachSpec) and builds its graph from nodes/."""

from optigraph.graphs import bon, cot_reflection, moa, none, re2, self_consistency

BUILTIN_APPROACHES = (
    none.SPEC,
    bon.SPEC,
    moa.SPEC,
    self_consistency.SPEC,
    cot_reflection.SPEC,
    re2.SPEC,
)
