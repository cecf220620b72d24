"""`optigraph doctor`: what a server started with these settings would find on this host.

It checks, without starting a server:
- the configuration (flags are not taken: the file given by --config and the OPTIGRAPH_* variables);
- the database: a connection, and the schema's migration version against the latest;
- each upstream (--base-url and the named ones): reachable, the models it lists, and, with tiny
  requests (max_tokens 1), whether it honours `n`, streams, accepts tools and returns logprobs;
- the local model, when no upstream is set;
- the sandbox layers this host can put in force (one tiny program run at the lowest level);
and then prints, for every approach and plugin, whether it can run here and how.

Exit status: 0 when the database and every upstream answered, 1 otherwise, 2 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from optigraph.config import Settings
from optigraph.core.spec import ApproachSpec, PluginSpec
from optigraph.engine.registry import Registry

PROBE_TIMEOUT_S = 30.0
PROBE_MESSAGES = [{"role": "user", "content": "Say OK."}]


@dataclass
class Upstream:
    """What one upstream answered to the probes (None: not probed, or the probe could not tell)."""

    name: str
    url: str
    reachable: bool = False
    error: str | None = None
    models: list[str] = field(default_factory=list)
    model: str | None = None  # the model the probes used
    n: bool | None = None
    streaming: bool | None = None
    tools: bool | None = None
    logprobs: bool | None = None


@dataclass
class Findings:
    database_ok: bool = False
    database: str = ""
    local: str | None = None  # None: an upstream serves
    local_ok: bool = True
    sandbox_layers: dict[str, str] = field(default_factory=dict)
    sandbox_missing: dict[str, str] = field(default_factory=dict)
    sandbox_levels: dict[str, bool] = field(default_factory=dict)
    upstreams: list[Upstream] = field(default_factory=list)


# ---- the checks -----------------------------------------------------------------------------------


async def check_database(db_url: str) -> tuple[bool, str]:
    """(usable, what was found): a connection and the migration version against the latest."""
    from optigraph.memory.db import backend_name, sqlite_path

    if backend_name(db_url) == "sqlite" and not Path(sqlite_path(db_url)).exists():
        return True, f"SQLite file {sqlite_path(db_url)} does not exist yet (the server creates it at start)"
    return await asyncio.to_thread(_database_version, db_url)


def _database_version(db_url: str) -> tuple[bool, str]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from optigraph.memory.db import sync_url
    from optigraph.memory.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    engine = create_engine(sync_url(db_url), connect_args=_connect_args(db_url))
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any driver's failure to connect is the answer
        return False, f"cannot connect: {type(exc).__name__}: {_first_line(exc)}"
    finally:
        engine.dispose()
    if current == head:
        return True, f"connected; schema at the latest migration ({head})"
    if current is None:
        return True, f"connected; no schema yet (the server migrates it to {head} at start)"
    return True, f"connected; schema at {current}, the server migrates it to {head} at start"


def _connect_args(db_url: str) -> dict[str, Any]:
    return {"connect_timeout": 5} if db_url.startswith("postgresql") else {}


async def probe_upstream(name: str, url: str, api_key: str | None, model: str | None) -> Upstream:
    """Lists the upstream's models and probes `model` (else the first listed) with tiny requests."""
    found = Upstream(name=name, url=url)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, headers=headers) as client:
        try:
            r = await client.get(f"{base}/models")
        except httpx.HTTPError as exc:
            found.error = f"unreachable: {type(exc).__name__}: {exc}"
            return found
        found.reachable = True
        if r.status_code == 200:
            try:
                found.models = [str(m.get("id")) for m in r.json().get("data") or [] if isinstance(m, dict)]
            except (ValueError, AttributeError):
                found.error = "GET /models answered something that is not a model list"
        else:
            found.error = f"GET /models answered {r.status_code}"
        found.model = model or (found.models[0] if found.models else None)
        if found.model is None:
            return found
        body = {"model": found.model, "messages": PROBE_MESSAGES, "max_tokens": 1}
        chat = f"{base}/chat/completions"
        answer = await _post(client, chat, {**body, "n": 2})
        if answer is None:
            found.error = found.error or "a one-token request failed; the other probes were skipped"
            return found
        found.n = len(answer.get("choices") or []) >= 2
        found.streaming = await _streams(client, chat, body)
        tool = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
        found.tools = await _post(client, chat, {**body, "tools": [tool]}) is not None
        answer = await _post(client, chat, {**body, "logprobs": True, "top_logprobs": 1})
        found.logprobs = bool(answer and any(c.get("logprobs") for c in answer.get("choices") or []))
    return found


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON answer of a 200, else None (refused, or not JSON)."""
    try:
        r = await client.post(url, content=orjson.dumps(body), headers={"content-type": "application/json"})
        if r.status_code != 200:
            return None
        data = r.json()
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def _streams(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> bool:
    """Whether a streamed request answers with server-sent chunks carrying choices."""
    try:
        async with client.stream("POST", url, json={**body, "stream": True}) as r:
            if r.status_code != 200:
                return False
            async for line in r.aiter_lines():
                if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                    try:
                        chunk = orjson.loads(line[5:].strip())
                    except orjson.JSONDecodeError:
                        return False
                    if isinstance(chunk, dict) and "choices" in chunk:
                        return True
    except httpx.HTTPError:
        return False
    return False


async def check_sandbox() -> tuple[dict[str, str], dict[str, str]]:
    """(layers in force, layers unavailable -> why), from one tiny program at the lowest level."""
    from optigraph.sandbox.runner import SandboxUnavailable, run_python

    try:
        result = await run_python("print(1)", level="minimal", timeout_s=30)
    except SandboxUnavailable as exc:
        return exc.layers, exc.missing
    except OSError as exc:
        return {}, {"sandbox": f"cannot start its child process: {exc}"}
    return dict(result.layers), dict(result.unavailable)


def check_local(settings: Settings) -> tuple[bool, str]:
    from optigraph.errors import OptigraphError
    from optigraph.local.models import parse_spec

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed: the local model cannot run (install the `local` extra)"
    try:
        parse_spec(settings.local_model, settings.local_models_dir)
    except OptigraphError as exc:
        return False, exc.message
    return True, f"{settings.local_model} (loads at start)"


async def diagnose(settings: Settings) -> Findings:
    from optigraph.sandbox.runner import LEVELS

    found = Findings()
    found.database_ok, found.database = await check_database(settings.db_url)
    probes = []
    if settings.base_url:
        probes.append(probe_upstream("default", settings.base_url, settings.upstream_api_key, settings.default_model))
    if settings.base_url is None or settings.local_models_with_upstream:
        found.local_ok, found.local = check_local(settings)
    for name, up in settings.upstreams.items():
        probes.append(probe_upstream(name, up.url, up.api_key(name), None))
    found.upstreams = list(await asyncio.gather(*probes))
    found.sandbox_layers, found.sandbox_missing = await check_sandbox()
    found.sandbox_levels = {level: all(la in found.sandbox_layers for la in need) for level, need in LEVELS.items()}
    return found


# ---- what each approach can do here ---------------------------------------------------------------


def graph_source(spec: ApproachSpec) -> str:
    """The source of the modules the approach's graph nodes come from ("" when it cannot be read)."""
    try:
        graph = spec.build()
    except Exception:
        return ""
    modules = set()
    for node in graph.nodes.values():
        runnable = node.runnable
        fn = getattr(runnable, "afunc", None) or getattr(runnable, "func", None)
        if fn is not None and getattr(fn, "__module__", None):
            modules.add(fn.__module__)
    sources = []
    for name in sorted(modules):
        module = sys.modules.get(name)
        try:
            sources.append(inspect.getsource(module) if module is not None else "")
        except (OSError, TypeError):
            continue
    return "\n".join(sources)


def samples_several(source: str) -> bool:
    """Whether graph code asks for several choices in one call (`n`): it samples candidates."""
    return "sample_candidates" in source or "sample_node" in source


def runs_code(source: str) -> bool:
    """Whether graph code runs model-written programs (in the sandbox)."""
    return "optigraph.nodes.execute" in source or "run_python" in source


def verdicts(settings: Settings, registry: Registry, found: Findings) -> list[tuple[str, str, str]]:
    """(name, "yes" | "no" | "limited", why) for every approach and plugin."""
    upstream = next((u for u in found.upstreams if u.name == "default"), None)
    local_serves = settings.base_url is None or settings.local_models_with_upstream
    rows = []
    for name, spec in registry.specs.items():
        missing, notes = [], []
        for need in sorted(spec.needs):
            if need == "local" and not (local_serves and found.local_ok):
                missing.append("a local model (start without --base-url, or with --local-models-with-upstream)")
            elif need == "sandbox" and not found.sandbox_levels.get(settings.sandbox_level, False):
                missing.append(
                    f"the sandbox at level {settings.sandbox_level!r} (this host lacks: "
                    f"{', '.join(found.sandbox_missing) or 'its layers'}; see docs/sandbox.md)"
                )
            elif need == "store" and not found.database_ok:
                missing.append("the database")
            elif need == "mcp" and settings.mcp_config is None:
                missing.append("MCP servers (--mcp-config)")
            elif need == "logprobs" and upstream is not None and upstream.logprobs is False:
                missing.append("logprobs from the upstream")
            elif need == "network":
                notes.append("fetches public pages (intranet hosts need --readurls-allow)")
        source = graph_source(spec) if isinstance(spec, ApproachSpec) else ""
        if upstream is not None and upstream.n is False and samples_several(source):
            notes.append("n>1 falls back to separate calls (the upstream ignores n): more prompt tokens")
        if runs_code(source) and not found.sandbox_levels.get(settings.sandbox_level, False):
            notes.append(f"the programs it writes are not run (sandbox level {settings.sandbox_level!r} does not hold)")
        if (
            isinstance(spec, ApproachSpec)
            and spec.streams_final
            and upstream is not None
            and upstream.streaming is False
        ):
            notes.append("answers in one piece (the upstream does not stream)")
        if missing:
            rows.append((name, "no", "needs " + "; ".join(missing)))
        elif notes:
            rows.append((name, "limited", "; ".join(notes)))
        else:
            rows.append((name, "yes", "plugin" if isinstance(spec, PluginSpec) else ""))
    return rows


# ---- the command --------------------------------------------------------------------------------


def report(settings: Settings, registry: Registry, found: Findings, source: str) -> str:
    def mark(ok: bool | None) -> str:
        return {True: "ok  ", False: "FAIL", None: "-   "}[ok]

    def yes(value: bool | None) -> str:
        return {True: "yes", False: "no", None: "unknown"}[value]

    lines = [f"configuration  ok    {source}"]
    lines.append(f"database       {mark(found.database_ok)}  {found.database}")
    if found.local is not None:
        lines.append(f"local model    {mark(found.local_ok)}  {found.local}")
    for up in found.upstreams:
        label = "upstream" if up.name == "default" else f"upstream {up.name}"
        if not up.reachable:
            lines.append(f"{label:<14} FAIL  {up.url}: {up.error}")
            continue
        models = ", ".join(up.models[:8]) + (f" (+{len(up.models) - 8} more)" if len(up.models) > 8 else "")
        lines.append(f"{label:<14} ok    {up.url}: models {models or 'none listed'}")
        if up.model is None:
            lines.append("               no model to probe (set default_model)")
        else:
            lines.append(
                f"               probed {up.model}: n {yes(up.n)}, streaming {yes(up.streaming)}, "
                f"tools {yes(up.tools)}, logprobs {yes(up.logprobs)}"
            )
        if up.error:
            lines.append(f"               note: {up.error}")
    layers = ", ".join(found.sandbox_layers) or "none"
    level_ok = found.sandbox_levels.get(settings.sandbox_level, False)
    lines.append(f"sandbox        {mark(level_ok)}  layers in force: {layers}")
    for layer, why in found.sandbox_missing.items():
        lines.append(f"               unavailable: {layer} ({why})")
    usable = [lv for lv, ok in found.sandbox_levels.items() if ok]
    lines.append(
        f"               level {settings.sandbox_level!r} {'holds' if level_ok else 'does NOT hold'} here; "
        f"levels that hold: {', '.join(usable) or 'none'}"
    )
    lines.append("")
    rows = verdicts(settings, registry, found)
    width = max(len(n) for n, _, _ in rows)
    lines.append(f"{'APPROACH'.ljust(width)}  RUNS     HOW")
    lines += [f"{n.ljust(width)}  {v.ljust(7)}  {why}".rstrip() for n, v, why in rows]
    return "\n".join(lines)


def main(config: str | None) -> int:
    """`optigraph doctor`; the exit status."""
    from pydantic import ValidationError

    from optigraph.config_file import ConfigFileError, load_settings
    from optigraph.engine.loading import load_registry
    from optigraph.errors import OptigraphError

    try:
        settings = load_settings({}, Path(config) if config else None).settings
    except ConfigFileError as exc:
        print(f"configuration  FAIL  {exc.message}")
        return 2
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"configuration  FAIL  OPTIGRAPH_{str(err['loc'][0]).upper() if err['loc'] else ''}: {err['msg']}")
        return 2
    try:
        registry = load_registry(approaches_dir=settings.approaches_dir, entry_points=settings.approach_entry_points)
    except OptigraphError as exc:
        print(f"configuration  FAIL  cannot load approaches: {exc.message}")
        return 2
    found = asyncio.run(diagnose(settings))
    source = f"from {config} and the environment" if config else "from the environment and defaults"
    print(report(settings, registry, found, source))
    healthy = found.database_ok and found.local_ok and all(u.reachable for u in found.upstreams)
    return 0 if healthy else 1


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
