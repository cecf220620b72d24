"""The backend interface: one small protocol, several implementations (HTTP, LiteLLM, local)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from optigraph.errors import UpstreamError


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do for one model. The engine adapts requests to it instead of failing upstream."""

    n_sampling: bool = True  # returns n choices from one call
    logprobs: bool = True
    streaming: bool = True
    system_messages: bool = True
    temperature: bool = True  # reasoning models refuse sampling parameters
    max_tokens_field: str = "max_tokens"  # or "max_completion_tokens"
    local: bool = False  # runs on this machine (logits-level techniques)
    structured_output: bool = True  # honours response_format json_object / json_schema itself

    def supports(self, need: str) -> bool:
        """Whether a named requirement of an approach ("n_sampling", "logprobs", "local", "text") holds."""
        return need == "text" or bool(getattr(self, need, False))


class Backend(Protocol):
    """An LLM provider. `body` is an OpenAI chat-completions request body (already normalised)."""

    name: str

    def capabilities(self, model: str) -> Capabilities: ...

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        """One chat completion; returns the OpenAI response dict. Raises UpstreamError/UpstreamTimeout."""
        ...

    def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Chat-completion chunks (OpenAI `chat.completion.chunk` dicts) as they arrive."""
        ...

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Balancer(Protocol):
    """A backend that spreads calls over several providers (backends/proxy.py). The LLM client sends
    each attempt of a call to the provider `lease` yields (recording it under that provider's name),
    retries up to `retries` times on errors `fails_over` accepts, on providers not tried yet, after
    `backoff_s(attempt)`."""

    name: str
    retries: int

    def lease(self, model: str, tried: Sequence[str] = ()) -> AbstractAsyncContextManager[Backend]: ...

    def backoff_s(self, attempt: int) -> float: ...

    def fails_over(self, exc: UpstreamError) -> bool: ...
