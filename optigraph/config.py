"""Server settings: typed, read once at start, passed in. Each field has an OPTIGRAPH_* variable."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_db_url() -> str:
    return f"sqlite:///{Path.cwd() / 'optigraph.db'}"


class UpstreamSettings(BaseModel):
    """One named upstream. Its key is read from the environment variable `api_key_env` (default
    OPTIGRAPH_UPSTREAM_<NAME>_API_KEY), never written in settings."""

    model_config = ConfigDict(extra="forbid")

    url: str
    api_key_env: str | None = None
    max_connections: int = Field(default=64, ge=1)
    n_sampling: bool | None = Field(
        default=None, description="Whether it returns n choices from one call (default: learned from its answers)"
    )

    def api_key(self, name: str) -> str | None:
        return os.environ.get(self.api_key_env or f"OPTIGRAPH_UPSTREAM_{name.upper()}_API_KEY")


def parse_upstream(text: str) -> tuple[str, UpstreamSettings]:
    """`NAME=URL` (the --upstream flag) as a named upstream; ValueError when malformed."""
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip() or not name.strip().replace("_", "").isalnum():
        raise ValueError(f"--upstream takes NAME=URL (NAME letters, digits and _), not {text!r}")
    return name.strip(), UpstreamSettings(url=url.strip())


# The approach prefixes GET /v1/models lists with --list-approach-models unless --model-list-approaches says.
LISTED_APPROACHES = ("moa", "bon", "self_consistency", "re2", "cot_reflection", "plansearch", "mcts", "rto")


class Settings(BaseSettings):
    """Everything the server needs to start. Nothing here changes per request."""

    model_config = SettingsConfigDict(env_prefix="OPTIGRAPH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = Field(default=None, description="OpenAI-compatible upstream, e.g. http://127.0.0.1:8080/v1")
    upstream_api_key: str | None = Field(
        default=None, description="Key sent upstream; without it the client's bearer token is forwarded"
    )
    approach: str = Field(default="none", description="Default approach expression")
    workers: int = Field(default=1, ge=1, le=256, description="Server processes behind the one port (serve only)")
    db_url: str = Field(default_factory=default_db_url, description="sqlite:///path or postgresql://...")
    api_key: str | None = Field(default=None, description="When set, clients must send this bearer key")
    ui_session_ttl_s: int = Field(default=8 * 3600, ge=60, description="How long a web page login lasts, in seconds")
    ui_session_secret: str | None = Field(
        default=None,
        description="Secret that signs web page sessions (default: drawn at start, so a restart ends "
        "them; set it to share sessions between replicas)",
    )
    log_level: str = "info"
    # ---- observability (docs/operations.md) ----
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or one JSON object per line (json)"
    )
    log_prompts: bool = Field(
        default=False, description="Put each request's messages in its access-log line (debugging only)"
    )
    metrics: bool = Field(default=True, description="Serve GET /metrics (Prometheus) and record its series")
    metrics_max_names: int = Field(
        default=64,
        ge=1,
        description="Model names (and composite approach expressions) that get a metrics label of their own; "
        "later ones are labelled other",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint (base URL) traces are exported to; default "
        "$OTEL_EXPORTER_OTLP_ENDPOINT; neither set: no tracing",
    )
    default_model: str | None = Field(
        default=None,
        description="Upstream model for requests whose model is only an approach (`bon`); without it: the "
        "local model when no base URL is set, else a 400",
    )
    local_model: str = Field(
        default="smollm2",
        description="Model the embedded backend serves when no upstream is set: "
        "a built-in name, a .gguf file or a model directory, +adapters",
    )
    local_models_dir: Path | None = Field(
        default=None,
        description="Directory of the local models and adapters clients may name (besides the built-in "
        "names and local_model); nothing outside it is loaded for a client",
    )
    local_models_with_upstream: bool = Field(
        default=False,
        description="With a base URL set, still serve local model names (local/..., built-in names, "
        "local_model, names in local_models_dir) here; without it every model goes "
        "upstream",
    )
    local_max_models: int = Field(
        default=2, ge=1, description="Local base models kept in memory (least recently used out)"
    )
    local_dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="float32", description="Weights dtype of local models: float32, bfloat16, float16 or auto"
    )
    local_batch_window_ms: float = Field(
        default=5.0, ge=0, description="How long the local worker waits for more requests to batch"
    )
    local_max_batch_rows: int = Field(default=32, ge=1, description="Most sequences one local batch decodes together")
    local_threads: int = Field(
        default=0, ge=0, description="CPU threads for local models (0: half the cores, at least 1)"
    )
    upstream_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to open a connection to the upstream"
    )
    upstream_read_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds a streamed upstream answer may go without a byte (reset by each byte)"
    )
    upstream_total_timeout_s: float = Field(
        default=300.0, gt=0, description="Seconds one upstream attempt may take in all, streamed or not"
    )
    upstream_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a failed upstream call that is safe to retry (timeouts, "
        "connection errors, 408/409/429/5xx); each attempt has its own timeouts",
    )
    breaker_failures: int = Field(
        default=5,
        ge=0,
        description="Consecutive failed calls (no answer, or a 5xx) after which an upstream's circuit "
        "breaker opens: calls to it then fail at once with a 503 until a probe succeeds (0: no breaker)",
    )
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="Seconds an open circuit breaker waits before letting one probe call through"
    )
    max_n: int = Field(default=16, description="Most choices (`n`) one request may ask for")
    max_tokens_limit: int = Field(default=131072, description="Largest max_tokens / max_completion_tokens accepted")
    max_expression_chars: int = Field(default=512, ge=1, description="Longest approach expression a request may send")
    max_expression_nodes: int = Field(
        default=64, ge=1, description="Most approach names in one expression (repeats counted)"
    )
    max_choices: int = Field(
        default=64, ge=1, description="Most choices one request may produce: the expression's choices times n"
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body, in bytes (a larger one gets a 413)"
    )
    max_connections: int = 512
    max_upstream_calls: int = Field(default=256, description="Per-run cap on upstream calls (default and ceiling)")
    max_upstream_tokens: int = Field(
        default=1_000_000, description="Per-run cap on completion tokens (default and ceiling)"
    )
    run_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a resumed run's lease lasts without renewal (renewed every third "
        "of it while the run executes): another server may resume the run only "
        "once it has expired",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="At shutdown, how long in-flight requests may take to finish before their "
        "runs are interrupted (stored as interrupted, resumable; clients get a 503)",
    )
    approaches_dir: Path | None = Field(
        default=None,
        description="Directory of approach modules (*.py) and declarative specs (*.yaml, *.yml, *.json) "
        "loaded at start (docs/authoring.md)",
    )
    sandbox_level: Literal["strict", "reduced", "minimal"] = Field(
        default="strict",
        description="Layers the sandbox must have in force before it runs model-written code, else "
        "the code is not run (docs/sandbox.md): strict (all), reduced (no namespaces), "
        "minimal (no namespaces, no Landlock)",
    )
    privacy_key: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="Secret that encrypts the privacy plugin's placeholder mapping in the checkpoints (default: drawn "
        "at start, so a run checkpointed before a restart cannot restore its originals; set it to resume "
        "such runs after a restart or on another replica)",
    )
    readurls_allow: list[str] = Field(
        default_factory=list,
        description="Hosts, IP addresses or networks (CIDR) the readurls plugin may fetch although they are "
        "loopback, private, link-local or otherwise not public (an intranet allow-list)",
    )
    readurls_max_bytes: int = Field(default=2_000_000, ge=1, description="Largest page readurls reads, in bytes")
    readurls_timeout_s: float = Field(default=10.0, gt=0, description="Time limit of one readurls fetch")
    mcp_config: Path | None = Field(
        default=None,
        description="JSON file of the MCP servers the mcp plugin connects to "
        '({"mcpServers": {name: {command, args, env} | {url}}}; docs/plugins.md)',
    )
    search_url: str | None = Field(
        default=None,
        description="Search API of the web_search and deep_research plugins: a SearXNG-style JSON endpoint "
        "(GET URL?q=...&format=json, answering {results: [{title, url, content}]}); its key, if it needs one, "
        "is read from the variable named by search_api_key_env and sent as a bearer token",
    )
    search_api_key_env: str = Field(
        default="OPTIGRAPH_SEARCH_API_KEY", description="Environment variable holding the search API's key"
    )
    search_folder: Path | None = Field(
        default=None,
        description="Folder of documents (.txt, .md, .html) the web_search and deep_research plugins search "
        "with BM25 when the request asks for the folder provider",
    )
    proxy_config: Path | None = Field(
        default=None,
        description="YAML file of the upstream providers the proxy balances (docs/plugins.md#proxy): with it and "
        "no --base-url every model goes through the proxy; with both, runs whose expression has `proxy` do",
    )
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=dict,
        description="Named OpenAI-compatible upstreams besides --base-url (`--upstream NAME=URL`, or "
        "OPTIGRAPH_UPSTREAMS as JSON {name: {url, api_key_env, max_connections, n_sampling}}). "
        "Plugins and nodes address them by name; each has its own key, connection limit and "
        "capabilities",
    )
    # ---- what OptILLM's flags map onto (docs/optillm.md) ----
    approach_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Server-wide parameters by approach, used where a request gives none (OPTIGRAPH_APPROACH_PARAMS "
        'as JSON, e.g. {"mcts": {"simulations": 4}}); a request\'s optillm_params or body fields win',
    )
    default_n: int = Field(default=1, ge=1, description="Choices (`n`) a request gets when it names none")
    plugins_dir: Path | None = Field(
        default=None,
        description="Directory of OptILLM plugin files (*.py with SLUG and run), also read from its optillm/plugins/",
    )
    log_conversations: bool = Field(
        default=False, description="Append each finished run to OptILLM-format JSONL files in conversation_log_dir"
    )
    conversation_log_dir: Path = Field(
        default_factory=lambda: Path.home() / ".optillm" / "conversations",
        description="Where log_conversations writes conversations_YYYY-MM-DD.jsonl",
    )
    upstream_ssl_verify: bool = Field(
        default=True, description="Verify the TLS certificates of HTTPS upstreams (off: development only)"
    )
    upstream_ssl_cert_path: Path | None = Field(
        default=None, description="CA bundle (PEM) that HTTPS upstreams' certificates are verified against"
    )
    # ---- access: who may call, as which tenant, within which limits (docs/security.md) ----
    oauth_issuer: str | None = Field(
        default=None, description="Accept bearer JWTs from this OAuth 2.1 / OpenID issuer (its `iss`)"
    )
    oauth_audience: str | None = Field(default=None, description="The `aud` those tokens must carry")
    oauth_jwks_url: str | None = Field(
        default=None, description="The issuer's JWKS (default: discovered from the issuer's metadata)"
    )
    oauth_tenant_claim: str = Field(default="sub", description="The token claim that names the caller's tenant")
    oauth_clock_skew_s: float = Field(
        default=60.0, ge=0, le=300, description="Leeway on a token's exp and nbf, in seconds"
    )
    oauth_jwks_min_refresh_s: float = Field(
        default=30.0,
        ge=0,
        description="Least time between two fetches of the JWKS (a token with an unknown key id triggers one)",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve on an address other than loopback without any client authentication",
    )
    access_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a key lookup and a tenant's limits are cached (so a revoked key or a new "
        "limit takes effect within this time on every replica)",
    )
    tenant_rpm: int = Field(default=0, ge=0, description="Runs a tenant may start per minute (0: no limit)")
    tenant_concurrent_runs: int = Field(default=0, ge=0, description="Runs a tenant may have in flight (0: no limit)")
    tenant_tokens_per_day: int = Field(
        default=0, ge=0, description="Upstream tokens a tenant's runs may use per UTC day (0: no limit)"
    )
    retention_days: float = Field(default=0.0, ge=0, description="Delete runs older than this many days (0: keep them)")
    store_prompts: bool = Field(
        default=True,
        description="Store prompt and answer text with runs; off: runs are kept as metadata only",
    )
    approach_entry_points: bool = Field(
        default=True,
        description="Load approaches that installed packages declare in the optigraph.approaches entry-point group",
    )
    list_approach_models: bool = Field(
        default=False,
        description="GET /v1/models also lists approach-prefixed ids (`moa-gpt-4o-mini`) for every model and "
        "every entry of model_list_approaches, for front ends that offer only the listed models",
    )
    model_list_approaches: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(LISTED_APPROACHES),
        description="The approach prefixes (names or expressions such as bon&re2) list_approach_models lists, "
        "comma-separated",
    )

    @field_validator("model_list_approaches", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("approach_params", mode="before")
    @classmethod
    def _approach_params_json(cls, value: Any) -> Any:
        """`--approach-params` gives JSON text (the variable is decoded by pydantic-settings already)."""
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_n_within_max_n(self) -> Settings:
        if self.default_n > self.max_n:
            raise ValueError(f"default_n ({self.default_n}, OptILLM's --n) is more than max_n ({self.max_n})")
        return self
