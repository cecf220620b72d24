"""The local decoding strategies as approaches: `cot_decoding`, `entropy_decoding`, `thinkdeeper`,
`deepconf` and `autothink`.

A decoding strategy works on the model's logits, so it runs inside the local backend
(optigraph/local/decoding/); these approaches let it be named like any other (`cot_decoding-smollm2`,
composed in expressions: `re2&cot_decoding`). Graph: START -> decode -> END, one call to the local
model with `decoding` set and the strategy's parameters (from `optillm_params`; unset ones keep the
strategy's defaults). The same strategies are available on the `none` path with `decoding` in the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Optional

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from pydantic import Field, create_model

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.graphs.chain import chain
from optigraph.local.decoding.base import Decoder
from optigraph.nodes.common import answer_of, generation_params
from optigraph.nodes.generate import generate_final

PAPERS = {
    "cot_decoding": ("arXiv:2402.10200",),
    "entropy_decoding": ("github.com/xjdr-alt/entropix",),
    "thinkdeeper": ("arXiv:2501.19393",),
    "deepconf": ("arXiv:2508.15260",),
    "autothink": ("SSRN:5253327", "arXiv:2308.10248"),
}


def approach_params(decoder: Decoder) -> type[ApproachParams]:
    """The strategy's parameters, each optional: None leaves the strategy's default (or the client's field)."""
    fields: dict[str, Any] = {}
    for name, info in decoder.params.model_fields.items():
        checked = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation  # ranges kept
        default = info.get_default(call_default_factory=True)
        described = (
            f"{info.description or ''} Default: {default!r}.".strip() if default is not None else info.description
        )
        fields[name] = (Optional[checked], Field(default=None, description=described))  # noqa: UP045
    title = "".join(part.title() for part in decoder.name.split("_"))
    return create_model(f"{title}Params", __base__=ApproachParams, __doc__=decoder.summary, **fields)


def decode_node(name: str) -> Callable[..., Any]:
    async def decode(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        chosen = {k: v for k, v in (state.get("params") or {}).items() if v is not None}
        params = {k: v for k, v in generation_params(state).items() if k not in ("logprobs", "top_logprobs")}
        completion = await generate_final(
            state, runtime, state["messages"], node="decode", **{**params, **chosen, "decoding": name}
        )
        return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}

    return decode


def spec_for(decoder: Decoder) -> ApproachSpec:
    def build() -> StateGraph:
        return chain(("decode", decode_node(decoder.name)))

    return ApproachSpec(
        name=decoder.name,
        description=decoder.summary,
        build=build,
        params=approach_params(decoder),
        papers=PAPERS.get(decoder.name, ()),
        needs=frozenset({"text", "local"}),
        calls="1",
        rounds="1",
        streams_final=decoder.streams,
    )


def specs() -> tuple[ApproachSpec, ...]:
    from optigraph.local.decoding.registry import DECODERS

    return tuple(spec_for(d) for d in DECODERS.values())
