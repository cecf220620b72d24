"""Which backend serves a model name.

Without a base URL:
- local model names run on this machine: `local` and `local/<name>`, built-in names (`smollm2`), the
  configured `--local-model`, `.gguf` names, paths and names of models inside `--local-models-dir`,
  each optionally `+adapter...`. Only what the configuration offers is served (optigraph/local/names.py):
  anything else is a 404 `model_not_found`;
- `provider/model` names of known providers (or `litellm/...`) go to LiteLLM;
- other names with a `/` are local names (404 when not offered: nothing is downloaded);
- plain names (`gpt-4o-mini`) are served by the default local model, so unmodified clients work offline.

With a base URL, every model goes to that OpenAI-compatible server: clients cannot reach local models,
unless the operator sets `local_models_with_upstream`, which keeps the local names above local and
sends every other name upstream.

With a proxy config (`--proxy-config`, backends/proxy.py) and no base URL, the proxy is that
upstream: every model goes to its providers. With both, the base URL serves by default and the runs
whose expression names the `proxy` plugin go through the proxy (`for_model(..., proxied=True)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optigraph.backends.breaker import CircuitBreaker
from optigraph.backends.litellm_backend import LiteLLMBackend, is_litellm_model
from optigraph.backends.openai_http import OpenAIHTTPBackend
from optigraph.backends.proxy import ProxyBackend
from optigraph.config import Settings
from optigraph.core.backend import Backend
from optigraph.errors import InvalidRequest


def is_local_model(model: str, *, configured: str = "smollm2", models_dir: Path | None = None) -> bool:
    """Whether a model name means a local model (decided without reading any file outside `models_dir`)."""
    from optigraph.local.names import is_local_name

    return is_local_name(model, configured=configured, models_dir=models_dir)


class Backends:
    """Owns the backend clients of a server; created at start, closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        timeouts = {
            "connect_timeout_s": settings.upstream_connect_timeout_s,
            "read_timeout_s": settings.upstream_read_timeout_s,
            "total_timeout_s": settings.upstream_total_timeout_s,
        }
        tls = {
            "ssl_verify": settings.upstream_ssl_verify,
            "ssl_cert_path": str(settings.upstream_ssl_cert_path) if settings.upstream_ssl_cert_path else None,
        }

        def breaker(name: str) -> CircuitBreaker:  # one per upstream
            return CircuitBreaker(name, failures=settings.breaker_failures, cooldown_s=settings.breaker_cooldown_s)

        self.http: OpenAIHTTPBackend | None = None
        if settings.base_url:
            self.http = OpenAIHTTPBackend(
                settings.base_url,
                api_key=settings.upstream_api_key,
                max_connections=settings.max_connections,
                breaker=breaker("openai"),
                **timeouts,
                **tls,
            )
        # Several providers behind one backend (--proxy-config): the upstream when there is no base URL.
        self.proxy: ProxyBackend | None = (
            ProxyBackend.from_file(settings.proxy_config) if settings.proxy_config else None
        )
        self.litellm = LiteLLMBackend(api_key=settings.upstream_api_key, **timeouts)
        self._local: Any = None
        # Named upstreams (--upstream NAME=URL): addressed by plugins and nodes through the run
        # context (RunContext.llm_for), each with its own key, connection limit and capabilities.
        self.named: dict[str, OpenAIHTTPBackend] = {
            name: OpenAIHTTPBackend(
                up.url,
                api_key=up.api_key(name),
                max_connections=up.max_connections,
                name=f"openai:{name}",
                n_sampling=up.n_sampling,
                breaker=breaker(f"openai:{name}"),
                **timeouts,
                **tls,
            )
            for name, up in settings.upstreams.items()
        }

    def local(self) -> Any:
        """The local backend (models on this machine), created on first use (torch loads only then)."""
        if self._local is None:
            from optigraph.backends.local import LocalBackend

            s = self.settings
            self._local = LocalBackend(
                s.local_model,
                models_dir=s.local_models_dir,
                max_models=s.local_max_models,
                dtype=s.local_dtype,
                batch_window_ms=s.local_batch_window_ms,
                max_batch_rows=s.local_max_batch_rows,
                threads=s.local_threads,
            )
        return self._local

    @property
    def upstream(self) -> Backend | None:
        """The server's upstream: the base URL's server, else the proxy, else None (local models)."""
        return self.http if self.http is not None else self.proxy

    @property
    def local_reachable(self) -> bool:
        """Whether clients may use local models: always without an upstream, with one only when enabled."""
        return self.upstream is None or self.settings.local_models_with_upstream

    def for_model(self, model: str, *, proxied: bool = False) -> tuple[Backend, str]:
        """The backend and the model name to send it. A local name is checked now (404 when not offered).
        `proxied`: the run names the proxy plugin, so it goes through the proxy (a 400 without one)."""
        s = self.settings
        if proxied:
            if self.proxy is None:
                raise InvalidRequest(
                    "plugin 'proxy' needs upstream providers, which this server runs without (--proxy-config)",
                    param="model",
                    code="approach_unsupported",
                )
            return self._upstream(self.proxy, model)
        upstream = self.upstream
        if upstream is not None and not s.local_models_with_upstream:
            return self._upstream(upstream, model)  # clients reach the upstream only
        if is_local_model(model, configured=s.local_model, models_dir=s.local_models_dir):
            local = self.local()
            local.spec(model)
            return local, model
        if upstream is not None:
            return self._upstream(upstream, model)
        if is_litellm_model(model):
            return self.litellm, model
        if "/" in model:  # a path or a hub id: only what the configuration offers is served
            local = self.local()
            local.spec(model)
            return local, model
        return self.local(), s.local_model

    @staticmethod
    def _upstream(backend: Backend, model: str) -> tuple[Backend, str]:
        if isinstance(backend, ProxyBackend):
            backend.check_model(model)  # a 404 when no provider serves it
        return backend, model

    def health(self) -> dict[str, Any]:
        """What each configured remote backend's recent calls saw (`reachable`, last success and error)."""
        out: dict[str, Any] = {}
        if self.http is not None:
            out["openai"] = {"base_url": self.http.base_url, **self.http.outcomes.report()}
        for name, backend in self.named.items():
            out[f"openai:{name}"] = {"base_url": backend.base_url, **backend.outcomes.report()}
        if self.proxy is not None:
            out.update(self.proxy.report())
        if self.litellm.outcomes.reachable is not None or self.upstream is None:  # used, or usable (no base URL)
            out["litellm"] = self.litellm.outcomes.report()
        return out

    async def aclose(self) -> None:
        if self.proxy is not None:
            await self.proxy.aclose()
        for backend in self.named.values():
            await backend.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self._local is not None:
            await self._local.aclose()
