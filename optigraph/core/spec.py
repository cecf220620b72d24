"""What an approach declares: its graph builder, typed parameters, papers, needs and cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optigraph.errors import InvalidRequest


class ApproachParams(BaseModel):
    """Base of every approach's parameter model: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def client_temperature(fallback: float, what: str = "Sampling temperature") -> Any:
    """The temperature parameter most approaches declare, declared once: optional (None: the client's
    temperature, else `fallback`), within the API's 0-2 range, described the same way everywhere.
    Use as `temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)`."""
    return Field(None, ge=0.0, le=2.0, description=f"{what}; default: the client's, else {fallback}.")


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
    # Calls when every call succeeds at its first attempt, where early stopping makes that fewer than
    # `calls` (the most it makes); None: the same as `calls`.
    expected_calls: str | None = None
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
