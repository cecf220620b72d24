"""Server settings: typed, read once at start, passed in. Each field has an OPTIGRAPH_* variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_db_url() -> str:
    return f"sqlite:///{Path.cwd() / 'optigraph.db'}"


class Settings(BaseSettings):
    """Everything the server needs to start. Nothing here changes per request."""

    model_config = SettingsConfigDict(env_prefix="OPTIGRAPH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = Field(default=None, description="OpenAI-compatible upstream, e.g. http://127.0.0.1:8080/v1")
    upstream_api_key: str | None = Field(default=None, description="Key sent upstream; without it the client's bearer token is forwarded")
    approach: str = Field(default="none", description="Default approach expression")
    db_url: str = Field(default_factory=default_db_url, description="sqlite:///path or postgresql://...")
    api_key: str | None = Field(default=None, description="When set, clients must send this bearer key")
    log_level: str = "info"
    default_model: str | None = Field(
        default=None,
        description="Upstream model for requests whose model is only an approach (`bon`); without it: the "
                    "local model when no base URL is set, else a 400")
    local_model: str = Field(default="smollm2", description="Model the embedded backend serves when no upstream is set: "
                                                            "a built-in name, a .gguf file or a model directory, +adapters")
    local_models_dir: Path | None = Field(default=None, description="Directory where relative local model and adapter names are looked up")
    local_max_models: int = Field(default=2, ge=1, description="Local base models kept in memory (least recently used out)")
    local_dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="float32", description="Weights dtype of local models loaded from directories")
    local_batch_window_ms: float = Field(default=5.0, ge=0, description="How long the local worker waits for more requests to batch")
    local_max_batch_rows: int = Field(default=32, ge=1, description="Most sequences one local batch decodes together")
    local_threads: int = Field(default=0, ge=0, description="CPU threads for local models (0: half the cores, at least 1)")
    upstream_timeout_s: float = 600.0
    upstream_retries: int = 2
    max_n: int = 16
    max_tokens_limit: int = 131072
    max_connections: int = 512
    max_upstream_calls: int = Field(default=256, description="Per-run cap on upstream calls (default and ceiling)")
    max_upstream_tokens: int = Field(default=1_000_000, description="Per-run cap on completion tokens (default and ceiling)")
    run_lease_s: float = Field(
        default=30.0, gt=0, description="How long a resumed run's lease lasts without renewal (renewed every third "
                                        "of it while the run executes): another server may resume the run only "
                                        "once it has expired")
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="At shutdown, how long in-flight requests may take to finish before their "
                                        "runs are interrupted (stored as interrupted, resumable; clients get a 503)")
    approaches_dir: Path | None = Field(
        default=None, description="Directory of approach modules (*.py) and declarative specs (*.yaml, *.yml, *.json) "
                                  "loaded at start (docs/authoring.md)")
    approach_entry_points: bool = Field(
        default=True, description="Load approaches that installed packages declare in the optigraph.approaches entry-point group")
