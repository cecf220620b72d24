"""What approaches and plugins declare: graph builder or stages, typed parameters, papers, needs, cost.

An approach answers a conversation (its graph writes `answers`). A plugin wraps whatever follows it
in an expression: its optional `pre` stage may rewrite the conversation and keep private state for
the run, its optional `post` stage may rewrite every answer and reads that state. Both are async
LangGraph nodes over `PluginState` (optigraph.core.state), so they are checkpointed and traced like
any other step and can call the model through the run context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optigraph.core.streaming import TextRewriter
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

    kind = "approach"

    def validate_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        return validate_params(self.params, self.name, raw)


def validate_params(model: type[BaseModel], name: str, raw: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` validated by `model` (defaults filled in), or an InvalidRequest naming the parameter."""
    try:
        return model.model_validate(raw or {}).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise InvalidRequest(
            f"invalid parameter for {name!r}: {where}: {err.get('msg')}",
            param=f"optillm_params.{name}.{where}" if where else f"optillm_params.{name}",
            code="invalid_approach_parameter",
        ) from None


# A stage of a plugin: an async LangGraph node over PluginState, e.g.
#   async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]
# `pre` returns any of {"messages": [...], "request": {...}, "private": {...}, "route": "<expression>",
# "reason": "...", "notes": [...], "usage": {...}};
# `post` returns {"answers": [...]} (and may return "notes").
PluginStage = Callable[..., Awaitable[dict[str, Any]]]
# Made by `pre` or `post` at run time: rewrites the streamed text of one choice (see core/streaming.py).
StreamRewriter = Callable[[dict[str, Any], dict[str, Any], Any], TextRewriter | None]
# At the edge (the plugin wraps the whole expression): the client's request body, rewritten before the
# run is recorded or started, and the plugin's private state to start from: (body, settings) -> (body, private).
Admit = Callable[[dict[str, Any], Any], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
# ... and the client's copy of the answers, made after the run has been recorded: (answers, private, settings).
Release = Callable[[list[dict[str, Any]], dict[str, Any], Any], list[dict[str, Any]]]


@dataclass(frozen=True)
class PluginSpec:
    """One plugin: `pre` and/or `post` stages around whatever it wraps.

    - `needs`: what the server or backend must offer: "network" (it fetches), "sandbox" (it runs
      code), "local" (a model on this machine), "store" (the database), "mcp" (MCP servers configured
      with --mcp-config), "proxy" (upstream providers configured with --proxy-config), or backend
      needs as approaches.
    - `stream`: given the run's request, this plugin's private state and the run's context, a TextRewriter for the
      wrapped approach's streamed text, or None. Without it a plugin with a `post` stage makes the
      wrapped part answer in one piece (its text cannot be sent before `post` has seen all of it).
    - `serves`: request fields the plugin honours itself (the json plugin: `response_format`), so a
      backend that lacks them does not refuse the request when the plugin is in the expression.
    - `routes`: `pre` may choose, at run time, the expression that runs inside the plugin (a
      router); the choice is recorded in the run.
    - `calls`/`rounds`: upstream calls the plugin itself adds, as formulas of its parameters.
    - `admit`/`release`: where the plugin wraps the whole expression (it comes first), the runner calls
      `admit` on the client's request before anything of the run is stored, and `release` on the
      answers after the run has been recorded, for the client's copy only (the privacy plugin: what is
      stored holds placeholders from the run's first record on, and only the client sees originals).
    """

    name: str
    description: str
    pre: PluginStage | None = None
    post: PluginStage | None = None
    params: type[ApproachParams] = ApproachParams
    papers: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    calls: str = "0"
    rounds: str = "0"
    expected_calls: str | None = None  # when fewer than `calls` are expected (nothing fails)
    stream: StreamRewriter | None = None
    routes: bool = False
    serves: frozenset[str] = frozenset()  # request fields it honours itself where the backend cannot
    admit: Admit | None = None
    release: Release | None = None
    streams_final: bool = False  # listing parity with approaches: a plugin produces no answer of its own

    kind = "plugin"

    @property
    def stages(self) -> list[str]:
        """Its stages by name: "pre" and/or "post"."""
        return [name for name, stage in (("pre", self.pre), ("post", self.post)) if stage is not None]

    def __post_init__(self) -> None:
        if self.pre is None and self.post is None:
            raise ValueError(f"plugin {self.name!r} needs a pre or a post stage")

    def validate_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        return validate_params(self.params, self.name, raw)


Spec = ApproachSpec | PluginSpec
