"""Which backend serves a model name.

- Names of local models (`smollm2`, `local/<name-or-path>`) run on the embedded backend.
- With a base URL configured, every other model goes to that OpenAI-compatible server.
- Without one, `provider/model` names of known providers (or `litellm/...`) go to LiteLLM,
  and anything else is served by the local model.
"""

from __future__ import annotations

from typing import Any

from optigraph.config import Settings
from optigraph.engine.backends.base import Backend
from optigraph.engine.backends.litellm_backend import LiteLLMBackend, is_litellm_model
from optigraph.engine.backends.openai_http import OpenAIHTTPBackend

LOCAL_NAMES = frozenset({"smollm2", "smollm2-135m-instruct", "local"})


def is_local_model(model: str) -> bool:
    return model.lower() in LOCAL_NAMES or model.startswith("local/") or model.endswith(".gguf")


class Backends:
    """Owns the backend clients of a server; created at start, closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http: OpenAIHTTPBackend | None = None
        if settings.base_url:
            self.http = OpenAIHTTPBackend(settings.base_url, api_key=settings.upstream_api_key,
                                          timeout_s=settings.upstream_timeout_s,
                                          max_connections=settings.max_connections)
        self.litellm = LiteLLMBackend(api_key=settings.upstream_api_key, timeout_s=settings.upstream_timeout_s)
        self._local: dict[str, Any] = {}

    def local(self, model: str | None = None) -> Backend:
        """The embedded backend for `model` (default: the server's local model), created once."""
        name = (model or self.settings.local_model).removeprefix("local/")
        if name.lower() == "local":
            name = self.settings.local_model
        if name not in self._local:
            from optigraph.engine.backends.local import LocalBackend  # torch loads only when used

            self._local[name] = LocalBackend(name)
        return self._local[name]

    def for_model(self, model: str) -> tuple[Backend, str]:
        """The backend and the model name to send it."""
        if is_local_model(model):
            return self.local(model), model
        if self.http is not None:
            return self.http, model
        if is_litellm_model(model):
            return self.litellm, model
        return self.local(), model

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        for backend in self._local.values():
            await backend.aclose()
