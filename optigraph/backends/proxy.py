"""Several OpenAI-compatible providers behind one backend: weighted round-robin, per-provider
concurrency limits and timeouts, passive and probed health, retries with capped jittered backoff,
and failover to the next provider.

The providers come from a YAML file (`--proxy-config`, docs/plugins.md#proxy):

    providers:
      - name: fast                       # recorded with every call as backend "proxy:fast"
        base_url: http://10.0.0.5:8000/v1
        api_key_env: FAST_API_KEY        # the key is read from this variable (never written in the file)
        weight: 3                        # share of the calls, by smooth weighted round-robin
        models: [gpt-4o-mini]            # the models it serves (left out: every model)
        max_concurrency: 8               # calls in flight on it at once; more wait for a slot
        timeout_s: 60                    # one attempt, whole answer (and between two streamed reads)
        connect_timeout_s: 5
    retries: 2                           # attempts after the first, on the next providers
    backoff_s: 0.2                       # before retry k: uniform(0, min(backoff_max_s, backoff_s * 2^(k-1)))
    backoff_max_s: 5
    cooldown_s: 30                       # a provider that failed is skipped this long (passive marking)
    health_check_interval_s: 15          # probe providers marked down (GET /models); 0: no probe

Every attempt of a run's call leases one provider (`lease`): the LLM client (core/llm.py) sends the
attempt to it, records it with the provider's name, and on an error that fails over (5xx, 429,
timeouts, connection failures) retries on a provider it has not tried yet, after the backoff. A
provider that fails so is marked down until its cooldown ends or a probe finds it answering again;
a success marks it up. When every provider that serves the model is down, the one that comes back
first is tried anyway. A 4xx other than 429 is the request's fault: it is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from optigraph.backends.openai_http import OpenAIHTTPBackend, capabilities_for
from optigraph.core.backend import Backend, Capabilities
from optigraph.errors import NotFound, ProxyConfigError, UpstreamError, UpstreamTimeout


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    weight: int = Field(1, ge=1, le=1000)
    models: list[str] = Field(default_factory=list)
    max_concurrency: int = Field(16, ge=1, le=10_000)
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)


class ProxyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderConfig] = Field(min_length=1)
    retries: int = Field(2, ge=0, le=20)
    backoff_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    cooldown_s: float = Field(30.0, ge=0)
    health_check_interval_s: float = Field(15.0, ge=0)

    @field_validator("providers")
    @classmethod
    def _unique(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be unique")
        return providers


def load_proxy_config(path: str | Path) -> ProxyConfig:
    """The proxy's config file, checked; ProxyConfigError naming the file and the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProxyConfigError(f"proxy config {path}: cannot read it: {exc}") from None
    try:
        return ProxyConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        raise ProxyConfigError(f"proxy config {path}: {where}: {err.get('msg')}") from None


def fails_over(exc: UpstreamError) -> bool:
    """Whether an attempt's error moves the call to another provider: a timeout, a failure to
    connect, a 5xx or a 429. Other 4xx are the request's fault."""
    if isinstance(exc, UpstreamTimeout) or exc.upstream_status is None:
        return True
    return exc.upstream_status == 429 or exc.upstream_status >= 500


@dataclass
class Provider:
    """One provider: its client, limits and health."""

    config: ProviderConfig
    backend: OpenAIHTTPBackend
    slots: asyncio.Semaphore
    in_flight: int = 0
    current: int = 0  # smooth weighted round-robin state
    down_until: float = 0.0  # skipped until then (the clock's time), after a failure
    failures: int = 0
    calls: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    def serves(self, model: str) -> bool:
        return not self.config.models or model in self.config.models


@dataclass
class ProxyBackend:
    """A Backend over several providers (see the module docstring). `clock` and `rng` are the time
    cooldowns are measured with and the jitter's source (a test passes its own)."""

    config: ProxyConfig
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    name: str = "proxy"

    def __post_init__(self) -> None:
        self.providers = [
            Provider(
                config=p,
                backend=OpenAIHTTPBackend(
                    p.base_url,
                    api_key=(os.environ.get(p.api_key_env) or None) if p.api_key_env else None,
                    connect_timeout_s=p.connect_timeout_s,
                    read_timeout_s=p.timeout_s,
                    total_timeout_s=p.timeout_s,
                    max_connections=p.max_concurrency,
                    name=f"proxy:{p.name}",
                ),
                slots=asyncio.Semaphore(p.max_concurrency),
            )
            for p in self.config.providers
        ]
        self.retries = self.config.retries
        self._prober: asyncio.Task[None] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> ProxyBackend:
        return cls(load_proxy_config(path))

    # ---- choosing a provider ------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        """A 404 when no provider serves `model`."""
        if not any(p.serves(model) for p in self.providers):
            raise NotFound(f"no proxy provider serves the model {model!r}", param="model", code="model_not_found")

    def pick(self, model: str, tried: Sequence[str] = ()) -> Provider:
        """The next provider for `model` by smooth weighted round-robin: among those not tried yet
        (`tried`: their backend names; all, once every one was), the healthy ones with a free slot, else the healthy ones, else
        the one whose cooldown ends first."""
        serving = [p for p in self.providers if p.serves(model)]
        if not serving:
            self.check_model(model)
        fresh = [p for p in serving if p.backend.name not in tried] or serving
        now = self.clock()
        healthy = [p for p in fresh if p.down_until <= now]
        if not healthy:
            return min(fresh, key=lambda p: p.down_until)
        free = [p for p in healthy if p.in_flight < p.config.max_concurrency]
        pool = free or healthy
        total = sum(p.config.weight for p in pool)
        for p in pool:
            p.current += p.config.weight
        chosen = max(pool, key=lambda p: p.current)
        chosen.current -= total
        return chosen

    @contextlib.asynccontextmanager
    async def lease(self, model: str, tried: Sequence[str] = ()) -> AsyncIterator[Backend]:
        """One provider for one attempt: waits for a slot under its concurrency limit, yields its
        client, and marks its health by how the attempt ended."""
        self._start_prober()
        provider = self.pick(model, tried)
        async with provider.slots:
            provider.in_flight += 1
            provider.calls += 1
            try:
                yield provider.backend
            except UpstreamError as exc:
                if fails_over(exc):
                    provider.failures += 1
                    provider.down_until = self.clock() + self.config.cooldown_s
                raise
            else:
                provider.down_until = 0.0
            finally:
                provider.in_flight -= 1

    def backoff_s(self, attempt: int) -> float:
        """The wait before retry `attempt` (1-based): full jitter under a capped exponential."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling)

    def fails_over(self, exc: UpstreamError) -> bool:
        return fails_over(exc)

    # ---- health ---------------------------------------------------------------------------------

    async def probe(self) -> list[str]:
        """Asks every provider marked down for its models; those that answer are marked up. Returns
        their names."""
        now = self.clock()
        down = [p for p in self.providers if p.down_until > now]
        results = await asyncio.gather(*(p.backend.list_models() for p in down), return_exceptions=True)
        revived = []
        for p, result in zip(down, results):
            if not isinstance(result, BaseException):
                p.down_until = 0.0
                revived.append(p.name)
        return revived

    def _start_prober(self) -> None:
        interval = self.config.health_check_interval_s
        if interval <= 0 or (self._prober is not None and not self._prober.done()):
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(Exception):
                    await self.probe()

        self._prober = asyncio.get_running_loop().create_task(loop())

    def report(self) -> dict[str, Any]:
        """Each provider's state, for /health."""
        now = self.clock()
        return {
            f"proxy:{p.name}": {
                "base_url": p.backend.base_url,
                "weight": p.config.weight,
                "healthy": p.down_until <= now,
                "in_flight": p.in_flight,
                "calls": p.calls,
                "failures": p.failures,
                **p.backend.outcomes.report(),
            }
            for p in self.providers
        }

    # ---- the Backend protocol (for callers that do not lease: one call with its own failover) ----

    def capabilities(self, model: str) -> Capabilities:
        # `n` is asked for; where a provider returns fewer choices, the LLM client samples the rest.
        return capabilities_for(model)

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        tried: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.lease(str(body.get("model", "")), tried) as backend:
                    tried.append(backend.name)
                    return await backend.complete(body, api_key=api_key)
            except UpstreamError as exc:
                if not fails_over(exc) or attempt > self.retries:
                    raise
            await asyncio.sleep(self.backoff_s(attempt))

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        async with self.lease(str(body.get("model", ""))) as backend:
            async for chunk in backend.stream(body, api_key=api_key):
                yield chunk

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """The models the providers serve: the configured lists, else what the healthy ones list."""
        seen: dict[str, dict[str, Any]] = {}
        for p in self.providers:
            if p.config.models:
                for m in p.config.models:
                    seen.setdefault(m, {"id": m, "object": "model", "owned_by": f"proxy:{p.name}"})
                continue
            with contextlib.suppress(UpstreamError):
                for m in await p.backend.list_models(api_key=api_key):
                    seen.setdefault(m["id"], m)
        return list(seen.values())

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._prober
        for p in self.providers:
            await p.backend.aclose()
