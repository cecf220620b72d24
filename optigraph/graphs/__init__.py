"""One module per approach; each exposes `SPEC` (an ApproachSpec) and builds its graph from nodes/."""

from optigraph.graphs import none

BUILTIN_APPROACHES = (none.SPEC,)
