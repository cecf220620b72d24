"""Any OpenAI-compatible HTTP server (OpenAI, vLLM, SGLang, llama.cpp, Ollama, OpenRouter): the fast path.

Non-streamed calls go through the lean HTTP/1.1 client of http1.py: a whole call through this
backend costs 171 k instructions against 502 k through aiohttp. Streamed answers, calls through a
proxy and the model list go through aiohttp, which itself costs about a fifth of httpx's CPU per
request (httpx's pool rescans every pooled connection on each one).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from optigraph.backends.breaker import CircuitBreaker
from optigraph.backends.health import CallOutcomes
from optigraph.backends.http1 import ConnectTimeout, Http1Pool, HTTPConnectionError
from optigraph.core.backend import Capabilities
from optigraph.core.lru import LRUCache
from optigraph.errors import InvalidRequest, UpstreamError, UpstreamInvalidResponse, UpstreamTimeout
from optigraph.telemetry.tracing import inject_trace

# OpenAI reasoning models: no sampling parameters, max_completion_tokens, system -> developer.
REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o1|o3|o4|gpt-5)(?:[-.]|$)")
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
CAPS_CACHE_SIZE = 256


def capabilities_for(model: str) -> Capabilities:
    if REASONING_MODEL.match(model):
        return Capabilities(
            temperature=False,
            max_tokens_field="max_completion_tokens",
            system_messages=not model.split("/")[-1].startswith("o1-mini"),
            logprobs=False,
        )
    return Capabilities()


def tls_setting(verify: bool, cert_path: str | None) -> bool | ssl.SSLContext:
    """aiohttp's `ssl` argument: the default checks (True), none (False), or checks against a CA bundle."""
    if not verify:
        return False
    if cert_path:
        return ssl.create_default_context(cafile=cert_path)
    return True


REDACTED = "[redacted]"


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
    exc = UpstreamError(
        f"upstream returned {status}: {message}", upstream_status=status, retryable=status in RETRYABLE_STATUS
    )
    if 400 <= status < 500 and status not in (408, 409):
        exc.status = status
        exc.type = "invalid_request_error" if status not in (401, 403, 429) else exc.type
    return exc


def env_proxy(base_url: str) -> str | None:
    """The proxy the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) sets for `base_url`."""
    parts = urlsplit(base_url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class OpenAIHTTPBackend:
    """Async client with a connection pool. The server's key wins; otherwise the client's is forwarded.

    Timeouts, per attempt: `connect_timeout_s` to open a connection; `read_timeout_s` between two
    reads of a streamed answer (each byte resets it); `total_timeout_s` for the whole attempt, waiting
    for a pooled connection included. A non-streamed answer arrives in one piece after the model has
    finished, so only the total bounds it. Redirects are not followed; proxy settings come from the
    environment (HTTP_PROXY, NO_PROXY...).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 300.0,
        max_connections: int = 512,
        name: str = "openai",
        n_sampling: bool | None = None,
        ssl_verify: bool = True,
        ssl_cert_path: str | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name  # recorded with every call: "openai", or "openai:<upstream name>"
        self._n_sampling = n_sampling  # an operator's statement that the upstream does (not) honour n
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        # Calls' outcomes, for /health and the circuit breaker (None: every call goes out; a proxy's
        # providers have their own cooldown instead).
        self.breaker = breaker
        self.outcomes = CallOutcomes(breaker=breaker)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Http1Pool | None = None  # non-streamed POSTs without a proxy (http1.py)
        self._urls: dict[str, URL] = {}
        self._caps: LRUCache[str, Capabilities] = LRUCache(CAPS_CACHE_SIZE)  # by model name, which clients choose
        self._proxy = env_proxy(self.base_url)  # read once: aiohttp's trust_env re-reads it per request
        self._ssl = tls_setting(ssl_verify, ssl_cert_path)

    def _client(self) -> aiohttp.ClientSession:
        """The pooled session, created on first use on the running loop (a session is bound to its loop)."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=5.0, ssl=self._ssl
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, proxy=self._proxy
            )
            self._loop = loop
        return session

    def _lean(self) -> Http1Pool | None:
        """The lean client's pool for this loop, or None where a proxy is set (aiohttp handles those)."""
        if self._proxy is not None:
            return None
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            pool = self._pool = Http1Pool(
                self.base_url,
                tls=self._ssl,
                connect_timeout_s=self.connect_timeout_s,
                max_connections=self._max_connections,
            )
        return pool

    def capabilities(self, model: str) -> Capabilities:
        caps = self._caps.get(model)  # asked once per run: a regular expression and a dataclass each time
        if caps is None:
            caps = capabilities_for(model)
            if self._n_sampling is not None:
                caps = replace(caps, n_sampling=self._n_sampling)
            self._caps[model] = caps
        return caps

    def _url(self, path: str) -> URL:
        """The upstream URL of `path`, parsed once (aiohttp parses a string URL on every request)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(f"{self.base_url}{path}")
        return url

    def _headers(self, api_key: str | None) -> dict[str, str]:
        key = self.api_key or api_key
        headers = {"content-type": "application/json"}
        if key:
            if "\n" in key or "\r" in key:  # it would end the header line and start another
                raise InvalidRequest("the API key must not hold a line break", code="invalid_api_key")
            headers["authorization"] = f"Bearer {key}"
        inject_trace(headers)  # the current upstream-call span as `traceparent`, when tracing is on
        return headers

    def _timed_out(self, exc: TimeoutError, *, streaming: bool = False) -> UpstreamTimeout:
        """Which timeout fired, in words the operator can map to a flag."""
        what = "while streaming" if streaming else "waiting for its answer"
        if isinstance(exc, (aiohttp.ConnectionTimeoutError, ConnectTimeout)):
            return UpstreamTimeout(f"upstream timed out {what}: no connection within {self.connect_timeout_s:g} s")
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return UpstreamTimeout(f"upstream timed out {what}: nothing received for {self.read_timeout_s:g} s")
        return UpstreamTimeout(f"upstream timed out {what}: the attempt took over {self.total_timeout_s:g} s")

    def _redacted(self, exc: UpstreamError, api_key: str | None) -> UpstreamError:
        """`exc` without the key sent upstream in its message: an upstream may echo the key it was
        given (`invalid key sk-...`), and the message goes on to the run record, the logs and the client."""
        key = self.api_key or api_key
        if key and key in exc.message:
            exc.message = exc.message.replace(key, REDACTED)
            exc.args = (exc.message,)
        return exc

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        try:
            data = await self._complete(body, api_key)
        except UpstreamError as exc:
            self.outcomes.failed(exc)
            raise self._redacted(exc, api_key) from None
        self.outcomes.succeeded()
        return data

    async def _complete(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
        data = await self._post("/chat/completions", body, api_key)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UpstreamInvalidResponse(f"upstream returned no choices: {orjson.dumps(data).decode()[:500]}")
        return data

    async def post_json(self, path: str, body: dict[str, Any], *, api_key: str | None = None) -> Any:
        """POST `body` to another route of the upstream (`/completions`, `/embeddings`): its JSON answer."""
        try:
            data = await self._post(path, body, api_key)
        except UpstreamError as exc:
            self.outcomes.failed(exc)
            raise
        self.outcomes.succeeded()
        return data

    async def _post(self, path: str, body: dict[str, Any], api_key: str | None) -> Any:
        self.outcomes.before_call()  # an open breaker refuses the call before anything is sent
        pool = self._lean()
        try:
            if pool is not None:
                status, content = await pool.post(
                    path, orjson.dumps(body), self._headers(api_key), timeout_s=self.total_timeout_s
                )
            else:
                async with self._client().post(
                    self._url(path),
                    data=orjson.dumps(body),
                    headers=self._headers(api_key),
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as resp:
                    status, content = resp.status, await resp.read()
        except TimeoutError as exc:
            raise self._timed_out(exc) from None
        except (aiohttp.ClientError, HTTPConnectionError) as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}", retryable=True) from None
        if status >= 400:
            raise upstream_error(status, content)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamInvalidResponse("upstream returned a body that is not JSON", retryable=True) from None

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._stream(body, api_key):
                yield chunk
        except UpstreamError as exc:
            self.outcomes.failed(exc)
            raise self._redacted(exc, api_key) from None
        self.outcomes.succeeded()

    def _stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[dict[str, Any]]:
        return self._events("/chat/completions", body, api_key)

    async def stream_json(self, path: str, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[Any]:
        """The streamed JSON events of another route of the upstream (`/completions` with stream)."""
        try:
            async for event in self._events(path, body, api_key):
                yield event
        except UpstreamError as exc:
            self.outcomes.failed(exc)
            raise
        self.outcomes.succeeded()

    async def _events(self, path: str, body: dict[str, Any], api_key: str | None) -> AsyncIterator[Any]:
        body = {**body, "stream": True}
        self.outcomes.before_call()
        try:
            async with self._client().post(
                self._url(path),
                data=orjson.dumps(body),
                headers=self._headers(api_key),
                allow_redirects=False,
                timeout=self._stream_timeout,
            ) as resp:
                if resp.status >= 400:
                    raise upstream_error(resp.status, await resp.read())
                async for line in _lines(resp.content):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        err = chunk["error"]
                        raise UpstreamError(
                            f"upstream stream error: {err.get('message', err) if isinstance(err, dict) else err}"
                        )
                    yield chunk
        except TimeoutError as exc:
            raise self._timed_out(exc, streaming=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream stream failed: {type(exc).__name__}: {exc}", retryable=True) from None

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        try:
            return await self._list_models(api_key)
        except UpstreamError as exc:
            raise self._redacted(exc, api_key) from None

    async def _list_models(self, api_key: str | None) -> list[dict[str, Any]]:
        try:
            async with self._client().get(
                f"{self.base_url}/models", headers=self._headers(api_key), allow_redirects=False
            ) as resp:
                status, content = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
        if status >= 400:
            raise upstream_error(status, content)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamInvalidResponse(
                f"upstream /models returned a body that is not JSON: {content.decode('utf-8', 'replace')[:200]}"
            ) from None
        models = (data.get("data") or []) if isinstance(data, dict) else None
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models
        ):
            raise UpstreamInvalidResponse(
                "upstream /models did not return a list of models (expected "
                f'{{"data": [{{"id": ...}}]}}): {content.decode("utf-8", "replace")[:200]}'
            )
        return models

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines as they arrive, split on \\n, \\r\\n or \\r (as SSE allows), of any length."""
    buf = b""
    async for chunk in content.iter_any():
        buf += chunk
        held = b""
        if buf.endswith(b"\r"):  # maybe the first half of a CRLF split across chunks
            buf, held = buf[:-1], b"\r"
        parts = _LINE_BREAK.split(buf)
        buf = parts.pop() + held
        for part in parts:
            yield part
    if buf:
        yield buf[:-1] if buf.endswith(b"\r") else buf
