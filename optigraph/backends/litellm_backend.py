"""Other providers (Anthropic, Gemini, Bedrock, Azure...) through LiteLLM, named `provider/model`.

LiteLLM takes seconds to import, so it is imported on first use only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from optigraph.backends.health import CallOutcomes
from optigraph.core.backend import Capabilities
from optigraph.errors import UpstreamError, UpstreamTimeout

# Provider prefixes routed to LiteLLM when no OpenAI-compatible base URL is configured.
PROVIDERS = frozenset(
    {
        "anthropic",
        "azure",
        "azure_ai",
        "bedrock",
        "cerebras",
        "cohere",
        "databricks",
        "deepinfra",
        "deepseek",
        "fireworks_ai",
        "gemini",
        "groq",
        "huggingface",
        "mistral",
        "ollama",
        "ollama_chat",
        "openai",
        "openrouter",
        "perplexity",
        "replicate",
        "sagemaker",
        "together_ai",
        "vertex_ai",
        "watsonx",
        "xai",
    }
)


def is_litellm_model(model: str) -> bool:
    """`litellm/provider/model` always; `provider/model` for a known provider."""
    head = model.split("/", 1)[0]
    return "/" in model and (head == "litellm" or head in PROVIDERS)


class LiteLLMBackend:
    name = "litellm"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 300.0,
    ) -> None:
        self.api_key = api_key
        self.api_base = api_base
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
        self.outcomes = CallOutcomes()
        self._module: Any = None
        self._lock = asyncio.Lock()

    async def _litellm(self) -> Any:
        if self._module is None:
            async with self._lock:
                if self._module is None:
                    # Never fetch the model price list from the network.
                    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                    self._module = await asyncio.to_thread(__import__, "litellm")
        return self._module

    def capabilities(self, model: str) -> Capabilities:
        provider = model.removeprefix("litellm/").split("/", 1)[0]
        # Anthropic, Gemini and Ollama do not return n choices from one call.
        n_ok = provider in ("openai", "azure", "azure_ai", "deepinfra", "together_ai", "fireworks_ai", "xai", "groq")
        return Capabilities(n_sampling=n_ok, logprobs=provider == "openai")

    def _kwargs(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
        kwargs = dict(body)
        kwargs["model"] = body["model"].removeprefix("litellm/")
        key = self.api_key or api_key
        if key:
            kwargs["api_key"] = key
        if self.api_base:
            kwargs["api_base"] = self.api_base
        # Per attempt, as for the HTTP backend; LiteLLM's own retries are off (optigraph retries, and
        # records each attempt).
        kwargs["timeout"] = self._timeout()
        kwargs["max_retries"] = 0
        return kwargs

    def _timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.total_timeout_s, connect=self.connect_timeout_s, read=self.read_timeout_s)

    def _error(self, litellm: Any, exc: Exception) -> UpstreamError:
        if isinstance(exc, litellm.Timeout):
            return UpstreamTimeout(f"upstream timed out: {exc}")
        status = getattr(exc, "status_code", None)
        err = UpstreamError(
            f"upstream error: {exc}", upstream_status=status, retryable=status in (None, 408, 429, 500, 502, 503, 504)
        )
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409):
            err.status = status
        return err

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        litellm = await self._litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs(body, api_key))
        except Exception as exc:  # LiteLLM raises its own mapped exception types
            error = self._error(litellm, exc)
            self.outcomes.failed(error)
            raise error from None
        self.outcomes.succeeded()
        return resp.model_dump(exclude_none=True)

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        litellm = await self._litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs({**body, "stream": True}, api_key))
            async for chunk in resp:
                yield chunk.model_dump(exclude_none=True)
        except UpstreamError as exc:
            self.outcomes.failed(exc)
            raise
        except Exception as exc:
            error = self._error(litellm, exc)
            self.outcomes.failed(error)
            raise error from None
        self.outcomes.succeeded()

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        return []

    async def aclose(self) -> None:
        return None
