"""Any OpenAI-compatible HTTP server (OpenAI, vLLM, SGLang, llama.cpp, Ollama, OpenRouter): the fast path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from optigraph.engine.backends.base import Capabilities
from optigraph.errors import UpstreamError, UpstreamTimeout

# OpenAI reasoning models: no sampling parameters, max_completion_tokens, system -> developer.
REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o1|o3|o4|gpt-5)(?:[-.]|$)")
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def capabilities_for(model: str) -> Capabilities:
    if REASONING_MODEL.match(model):
        return Capabilities(temperature=False, max_tokens_field="max_completion_tokens",
                            system_messages=not model.split("/")[-1].startswith("o1-mini"), logprobs=False)
    return Capabilities()


def upstream_error(status: int, payload: bytes) -> UpstreamError:
    """An UpstreamError carrying the upstream's own message. Client mistakes (4xx) keep their status."""
    message = payload.decode("utf-8", "replace")[:2000]
    try:
        data = orjson.loads(payload)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or message)
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    exc = UpstreamError(f"upstream returned {status}: {message}", upstream_status=status,
                        retryable=status in RETRYABLE_STATUS)
    if 400 <= status < 500 and status not in (408, 409):
        exc.status = status
        exc.type = "invalid_request_error" if status not in (401, 403, 429) else exc.type
    return exc


class OpenAIHTTPBackend:
    """Async client with a connection pool. The server's key wins; otherwise the client's is forwarded."""

    name = "openai"

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 max_connections: int = 512) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def capabilities(self, model: str) -> Capabilities:
        return capabilities_for(model)

    def _headers(self, api_key: str | None) -> dict[str, str]:
        key = self.api_key or api_key
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        try:
            resp = await self._client.post(f"{self.base_url}/chat/completions", content=orjson.dumps(body),
                                           headers=self._headers(api_key))
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream timed out: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}", retryable=True) from None
        if resp.status_code >= 400:
            raise upstream_error(resp.status_code, resp.content)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream returned a body that is not JSON", retryable=True) from None
        if not isinstance(data, dict) or "choices" not in data:
            raise UpstreamError(f"upstream returned no choices: {resp.text[:500]}")
        return data

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        body = {**body, "stream": True}
        try:
            async with self._client.stream("POST", f"{self.base_url}/chat/completions", content=orjson.dumps(body),
                                           headers=self._headers(api_key)) as resp:
                if resp.status_code >= 400:
                    raise upstream_error(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        err = chunk["error"]
                        raise UpstreamError(f"upstream stream error: {err.get('message', err) if isinstance(err, dict) else err}")
                    yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream timed out while streaming: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream stream failed: {type(exc).__name__}: {exc}", retryable=True) from None

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        try:
            resp = await self._client.get(f"{self.base_url}/models", headers=self._headers(api_key))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise upstream_error(resp.status_code, resp.content)
        data = orjson.loads(resp.content)
        return list(data.get("data") or []) if isinstance(data, dict) else []

    async def aclose(self) -> None:
        await self._client.aclose()
