"""One module per approach; each exposes `SPEC` (an ApproachSpec) and builds its graph from nodes/."""

from optigraph.graphs import bon, cot_reflection, moa, none, re2, self_consistency
from optigraph.graphs import mcts, rstar
from optigraph.graphs import cepo, deepthink, genselect, majority_voting
from optigraph.graphs import mars, pvg
from optigraph.graphs import leap, plansearch, rto
from optigraph.graphs import z3

BUILTIN_APPROACHES = (
    none.SPEC,
    bon.SPEC,
    moa.SPEC,
    self_consistency.SPEC,
    cot_reflection.SPEC,
    re2.SPEC,
    mcts.SPEC,
    rstar.SPEC,
    majority_voting.SPEC,
    genselect.SPEC,
    cepo.SPEC,
    deepthink.SPEC,
    pvg.SPEC,
    mars.SPEC,
    plansearch.SPEC,
    leap.SPEC,
    rto.SPEC,
    z3.SPEC,
)
