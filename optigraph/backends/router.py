"""Which backend serves a model name.

- Local model names run on this machine: `local/<name-or-path>`, built-in names (`smollm2`), `.gguf`
  files, model directories (paths, or names in the models directory), each optionally `+adapter...`.
- With a base URL configured, every other model goes to that OpenAI-compatible server.
- Without one, `provider/model` names of known providers (or `litellm/...`) go to LiteLLM; other
  names with a `/` are looked up as local paths (404 when missing: nothing is downloaded); plain names
  (`gpt-4o-mini`) are served by the default local model, so unmodified clients work offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optigraph.backends.litellm_backend import LiteLLMBackend, is_litellm_model
from optigraph.backends.openai_http import OpenAIHTTPBackend
from optigraph.config import Settings
from optigraph.core.backend import Backend


def is_local_model(model: str, models_dir: Path | None = None) -> bool:
    from optigraph.local.models import looks_local

    return model.lower() == "local" or looks_local(model, models_dir)


class Backends:
    """Owns the backend clients of a server; created at start, closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http: OpenAIHTTPBackend | None = None
        if settings.base_url:
            self.http = OpenAIHTTPBackend(settings.base_url, api_key=settings.upstream_api_key,
                                          connect_timeout_s=settings.upstream_connect_timeout_s,
                                          read_timeout_s=settings.upstream_read_timeout_s,
                                          total_timeout_s=settings.upstream_total_timeout_s,
                                          max_connections=settings.max_connections)
        self.litellm = LiteLLMBackend(api_key=settings.upstream_api_key,
                                      connect_timeout_s=settings.upstream_connect_timeout_s,
                                      read_timeout_s=settings.upstream_read_timeout_s,
                                      total_timeout_s=settings.upstream_total_timeout_s)
        self._local: Any = None

    def local(self) -> Any:
        """The local backend (models on this machine), created on first use (torch loads only then)."""
        if self._local is None:
            from optigraph.backends.local import LocalBackend

            s = self.settings
            self._local = LocalBackend(s.local_model, models_dir=s.local_models_dir, max_models=s.local_max_models,
                                       dtype=s.local_dtype, batch_window_ms=s.local_batch_window_ms,
                                       max_batch_rows=s.local_max_batch_rows, threads=s.local_threads)
        return self._local

    def for_model(self, model: str) -> tuple[Backend, str]:
        """The backend and the model name to send it. A local name is checked now (404 when missing)."""
        if is_local_model(model, self.settings.local_models_dir):
            local = self.local()
            local.spec(model)
            return local, model
        if self.http is not None:
            return self.http, model
        if is_litellm_model(model):
            return self.litellm, model
        if "/" in model:  # a path or a hub id: only what is on this machine is served
            local = self.local()
            local.spec(model)
            return local, model
        return self.local(), self.settings.local_model

    def health(self) -> dict[str, Any]:
        """What each configured remote backend's recent calls saw (`reachable`, last success and error)."""
        out: dict[str, Any] = {}
        if self.http is not None:
            out["openai"] = {"base_url": self.http.base_url, **self.http.outcomes.report()}
        if self.litellm.outcomes.reachable is not None or self.http is None:  # used, or usable (no base URL)
            out["litellm"] = self.litellm.outcomes.report()
        return out

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self._local is not None:
            await self._local.aclose()
