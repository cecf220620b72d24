"""The loaded models: a bounded least-recently-used cache, keyed by the base model's file or directory
(adapters load onto it; one directory named two ways is loaded once)."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from optigraph.local.models import LoadedModel, ModelSource, ModelSpec, load_model


class ModelCache:
    """At most `max_models` base models in memory; using one makes it the most recent, loading one more
    evicts the least recent. `get` runs on the worker thread; `describe` may be called from any thread."""

    def __init__(self, max_models: int = 2, dtype: str = "float32") -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.dtype = dtype
        self._models: OrderedDict[Path, LoadedModel] = OrderedDict()
        self._states: dict[Path, str] = {}
        self._lock = threading.Lock()  # guards what `describe` reads

    def get(self, spec: ModelSpec) -> LoadedModel:
        """The loaded base model of `spec` with its adapters, loading (and evicting) as needed."""
        loaded = self._models.get(spec.base.path)
        if loaded is None:
            with self._lock:
                while len(self._models) >= self.max_models:
                    old, _ = self._models.popitem(last=False)
                    self._states[old] = "evicted"
                self._states[spec.base.path] = "loading"
            gc.collect()  # give an evicted model's memory back before loading the next one
            try:
                loaded = load_model(spec.base, self.dtype)
            except Exception as exc:
                with self._lock:
                    self._states[spec.base.path] = f"failed: {exc}"
                raise
            with self._lock:
                self._models[spec.base.path] = loaded
                self._states[spec.base.path] = "ready"
        else:
            with self._lock:
                self._models.move_to_end(spec.base.path)
        loaded.ensure_adapters(spec.adapters)
        return loaded

    def state(self, source: ModelSource) -> str:
        """`not loaded`, `loading`, `ready`, `evicted` or `failed: <why>`."""
        with self._lock:
            return self._states.get(source.path, "not loaded")

    def describe(self) -> list[dict[str, Any]]:
        """The loaded models, least recent first (for /health and the benchmarks)."""
        with self._lock:
            return [
                {
                    "id": m.source.id,
                    "path": str(m.source.path),
                    "adapters": sorted(m.adapters),
                    "load_seconds": round(m.load_seconds, 2),
                    "resident_mib": round(m.memory_bytes / 2**20, 1),
                    "parameter_mib": round(m.parameter_bytes / 2**20, 1),
                }
                for m in self._models.values()
            ]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        gc.collect()
