"""Approaches by name: each declares its graph, parameters, requirements and cost."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel, ConfigDict, ValidationError

from optigraph.errors import InvalidRequest, UnknownApproach


class ApproachParams(BaseModel):
    """Base of every approach's parameter model: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ApproachSpec:
    """One approach. `build` returns an uncompiled StateGraph over `ApproachState`."""

    name: str
    description: str
    build: Callable[[], StateGraph]
    params: type[ApproachParams] = ApproachParams
    papers: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset({"text"})  # text | n_sampling | logprobs | local
    calls: str = "1"  # upstream calls as a formula of the parameters
    rounds: str = "1"  # dependent rounds (calls that must wait for earlier ones)
    streams_final: bool = False  # whether its last stage is an LLM call that can stream

    def validate_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        try:
            return self.params.model_validate(raw or {}).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            raise InvalidRequest(
                f"invalid parameter for approach {self.name!r}: {where}: {err.get('msg')}",
                param=f"optillm_params.{self.name}.{where}" if where else f"optillm_params.{self.name}",
                code="invalid_approach_parameter",
            ) from None


@dataclass
class Registry:
    """The approaches a server knows. Built once at start and passed in; not a module global."""

    specs: dict[str, ApproachSpec] = field(default_factory=dict)

    def add(self, spec: ApproachSpec) -> None:
        if spec.name in self.specs:
            raise ValueError(f"approach {spec.name!r} is already registered")
        self.specs[spec.name] = spec

    def get(self, name: str) -> ApproachSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownApproach(
                f"unknown approach {name!r}; known: {', '.join(sorted(self.specs))}", param="model"
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def names(self) -> Iterable[str]:
        return self.specs.keys()


def builtin_registry() -> Registry:
    """A registry holding every approach shipped with optigraph."""
    from optigraph.graphs import BUILTIN_APPROACHES

    registry = Registry()
    for spec in BUILTIN_APPROACHES:
        registry.add(spec)
    return registry
