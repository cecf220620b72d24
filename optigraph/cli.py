"""The `optigraph` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from optigraph.config import Settings, default_db_url

SERVE_FLAGS = (
    ("--host", "host", "address to bind (default 127.0.0.1)"),
    ("--port", "port", "port (default 8000)"),
    ("--base-url", "base_url", "OpenAI-compatible upstream, e.g. http://127.0.0.1:8080/v1 (default: the local model)"),
    ("--upstream-api-key", "upstream_api_key", "key sent upstream (default: forward the client's bearer token)"),
    ("--approach", "approach", "default approach expression (default none)"),
    ("--default-model", "default_model", "upstream model for requests that name only an approach"),
    ("--db-url", "db_url", "sqlite:///path or postgresql://... (default sqlite:///./optigraph.db)"),
    ("--api-key", "api_key", "require this bearer key from clients"),
    ("--log-level", "log_level", "debug, info, warning, error"),
    # observability (docs/operations.md)
    ("--log-format", "log_format", "text (default) or json: one JSON object per log line"),
    ("--metrics", "metrics", "on (default) or off: GET /metrics in the Prometheus format"),
    ("--metrics-max-names", "metrics_max_names", "model names with a metrics label of their own (default 64)"),
    ("--otel-endpoint", "otel_endpoint", "export OpenTelemetry traces over OTLP/HTTP to this base URL"),
    ("--approaches-dir", "approaches_dir", "load approach modules (*.py) and YAML/JSON specs from this directory"),
    ("--plugins-dir", "plugins_dir", "load OptILLM plugin files (*.py with SLUG and run) from this directory"),
    (
        "--approach-params",
        "approach_params",
        'server-wide approach parameters as JSON, used where a request gives none: {"mcts": {"depth": 2}}',
    ),
    ("--conversation-log-dir", "conversation_log_dir", "where --log-conversations writes (~/.optillm/conversations)"),
    ("--ssl-cert-path", "upstream_ssl_cert_path", "CA bundle (PEM) HTTPS upstreams' certificates are checked against"),
    ("--local-model", "local_model", "local model: smollm2 (default), a .gguf file or model directory, +adapters"),
    (
        "--local-models-dir",
        "local_models_dir",
        (
            "directory of the local models and adapters clients may name "
            "(besides smollm2 and --local-model); nothing outside it loads"
        ),
    ),
    ("--local-max-models", "local_max_models", "local base models kept loaded (default 2, least recently used out)"),
    ("--local-dtype", "local_dtype", "dtype of local models: float32 (default), bfloat16, float16, auto"),
    ("--local-threads", "local_threads", "CPU threads for local models (default: half the cores, at least 1)"),
    (
        "--mcp-config",
        "mcp_config",
        (
            "JSON file of the MCP servers (stdio commands, streamable HTTP URLs) whose "
            "tools the mcp plugin offers to the model (docs/plugins.md)"
        ),
    ),
    ("--search-url", "search_url", "SearXNG-style JSON search API of web_search and deep_research"),
    ("--search-folder", "search_folder", "folder of documents web_search and deep_research may search (BM25)"),
    ("--proxy-config", "proxy_config", "YAML file of the upstream providers the proxy balances (docs/plugins.md)"),
    (
        "--sandbox-level",
        "sandbox_level",
        (
            "layers required before model-written code runs, else it is not run: "
            "strict (default, all), reduced (no namespaces: containers that forbid "
            "them), minimal (no namespaces, no Landlock); see docs/sandbox.md"
        ),
    ),
    ("--workers", "workers", "server processes sharing the port and the database (default 1); docs/deploy.md"),
    ("--max-expression-chars", "max_expression_chars", "longest approach expression a request may send (default 512)"),
    (
        "--max-expression-nodes",
        "max_expression_nodes",
        "most approach names in one expression, repeats counted (default 64)",
    ),
    (
        "--max-choices",
        "max_choices",
        "most choices one request may produce: the expression's choices times n, default 64",
    ),
    ("--max-body-bytes", "max_body_bytes", "largest request body in bytes; larger ones get a 413 (default 8388608)"),
    ("--upstream-connect-timeout", "upstream_connect_timeout_s", "seconds to open a connection upstream (default 10)"),
    (
        "--upstream-read-timeout",
        "upstream_read_timeout_s",
        "seconds a streamed upstream answer may go without a byte; every byte resets it (default 60)",
    ),
    (
        "--upstream-total-timeout",
        "upstream_total_timeout_s",
        "seconds one upstream attempt may take in all, streamed or not (default 300)",
    ),
    (
        "--upstream-retries",
        "upstream_retries",
        (
            "retries of an upstream call that failed in a way safe to retry: timeout, connection error, 408/409/429/5xx, "
            "each attempt with its own timeouts (default 2)"
        ),
    ),
    (
        "--breaker-failures",
        "breaker_failures",
        "consecutive failed calls (no answer, or a 5xx) after which an upstream's circuit breaker opens "
        "and its calls get a 503 at once; 0 turns it off (default 5)",
    ),
    (
        "--breaker-cooldown",
        "breaker_cooldown_s",
        "seconds an open circuit breaker waits before one probe call may go to the upstream (default 30)",
    ),
    ("--max-n", "max_n", "most choices (n) one request may ask for (default 16)"),
    (
        "--model-list-approaches",
        "model_list_approaches",
        "comma-separated approach prefixes --list-approach-models lists, e.g. moa,bon,bon&re2 "
        "(default moa,bon,self_consistency,re2,cot_reflection,plansearch,mcts,rto)",
    ),
    ("--max-tokens", "max_tokens_limit", "largest max_tokens / max_completion_tokens accepted (default 131072)"),
    ("--max-upstream-calls", "max_upstream_calls", "per-run cap on upstream calls, default and ceiling (default 256)"),
    (
        "--max-upstream-tokens",
        "max_upstream_tokens",
        "per-run cap on completion tokens, default and ceiling (default 1000000)",
    ),
    (
        "--shutdown-grace",
        "shutdown_grace_s",
        (
            "seconds in-flight requests get to finish at shutdown before their "
            "runs are interrupted (stored as interrupted, resumable; default 10)"
        ),
    ),
    # ---- access, limits, retention (docs/security.md) ----
    ("--oauth-issuer", "oauth_issuer", "accept bearer JWTs from this OAuth 2.1 / OpenID issuer"),
    ("--oauth-audience", "oauth_audience", "the audience (aud) those tokens must carry"),
    ("--oauth-jwks-url", "oauth_jwks_url", "the issuer's JWKS URL (default: from the issuer's metadata)"),
    ("--oauth-tenant-claim", "oauth_tenant_claim", "the token claim naming the caller's tenant (default sub)"),
    ("--tenant-rpm", "tenant_rpm", "runs a tenant may start per minute (default 0: no limit)"),
    ("--tenant-concurrent-runs", "tenant_concurrent_runs", "runs a tenant may have in flight (default 0: no limit)"),
    (
        "--tenant-tokens-per-day",
        "tenant_tokens_per_day",
        "upstream tokens a tenant's runs may use per UTC day (default 0: no limit)",
    ),
    ("--retention-days", "retention_days", "delete runs older than this many days, hourly (default 0: keep them)"),
    ("--store-prompts", "store_prompts", "true (default) or false: false keeps runs as metadata only"),
    (
        "--run-lease",
        "run_lease_s",
        (
            "seconds a resumed run's lease lasts unrenewed: how long another server "
            "waits to resume the run of one that died (default 30)"
        ),
    ),
)

# Flags that take no value: present means true.
SERVE_SWITCHES = (
    ("--log-conversations", "log_conversations", "append each finished run to OptILLM-format JSONL files"),
    ("--ssl-verify", "upstream_ssl_verify", "verify HTTPS upstreams' certificates (the default)"),
    (
        "--list-approach-models",
        "list_approach_models",
        "GET /v1/models also lists approach-prefixed ids (moa-gpt-4o-mini...) for front ends that offer only "
        "listed models (which prefixes: --model-list-approaches)",
    ),
    (
        "--allow-unauthenticated",
        "allow_unauthenticated",
        "serve on an address other than loopback without any client authentication",
    ),
    ("--log-prompts", "log_prompts", "put each request's messages in its access-log line (debugging only)"),
    (
        "--local-models-with-upstream",
        "local_models_with_upstream",
        (
            "with --base-url, still serve local model names (local/..., smollm2, --local-model, models in "
            "--local-models-dir) here; without it every model goes upstream"
        ),
    ),
)


# Flags given once per value (--upstream a=URL --upstream b=URL).
REPEATED_SERVE_FLAGS = (
    (
        "--upstream",
        "upstreams",
        "a named upstream NAME=URL besides --base-url, for plugins that address several "
        "(its key: OPTIGRAPH_UPSTREAM_<NAME>_API_KEY); repeat for more",
    ),
    (
        "--readurls-allow",
        "readurls_allow",
        "a host, address or CIDR network the readurls plugin may fetch although "
        "it is not public (an intranet); repeat for more",
    ),
)


def repeated_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Settings from the repeated flags; SystemExit(2) naming the flag when one is malformed."""
    out: dict[str, object] = {}
    if args.readurls_allow:
        out["readurls_allow"] = list(args.readurls_allow)
    if args.upstreams:
        from optigraph.config import parse_upstream

        try:
            out["upstreams"] = dict(parse_upstream(text) for text in args.upstreams)
        except ValueError as exc:
            print(f"optigraph serve: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return out


FLAG_OF = {dest: flag for flag, dest, _ in (*SERVE_FLAGS, *SERVE_SWITCHES, *REPEATED_SERVE_FLAGS)}


def serve_limits() -> str:
    """The server's limits at their defaults, for `serve --help` (read from Settings, so they cannot drift)."""
    d = {name: field.default for name, field in Settings.model_fields.items()}
    return (
        "limits (each a flag above):\n"
        f"  a request may ask for n <= {d['max_n']} choices and max_tokens <= {d['max_tokens_limit']}; "
        f"a run makes at most\n  {d['max_upstream_calls']} upstream calls and spends at most "
        f"{d['max_upstream_tokens']} completion tokens (a request may lower\n"
        '  both in its "optigraph" field; over a cap: a 400 budget_exceeded).\n'
        f"  One upstream attempt gets {d['upstream_connect_timeout_s']:g} s to connect, "
        f"{d['upstream_read_timeout_s']:g} s between streamed bytes and\n"
        f"  {d['upstream_total_timeout_s']:g} s in all; an attempt that failed in a way safe to retry is retried "
        f"{d['upstream_retries']} times with\n  backoff, so a call to an upstream that hangs gives up after at most "
        "(retries + 1) x the total\n  timeout. "
        f"After {d['breaker_failures']} consecutive failed calls an upstream's circuit breaker opens: its calls get "
        f"a 503\n  at once until one probe, {d['breaker_cooldown_s']:g} s later, succeeds."
    )


def parser() -> argparse.ArgumentParser:
    from optigraph import __version__

    p = argparse.ArgumentParser(prog="optigraph", description="OpenAI-compatible optimizing inference proxy")
    p.add_argument("--version", action="version", version=f"optigraph {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP server",
        epilog=serve_limits(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Every flag can also be set with OPTIGRAPH_<NAME> (e.g. OPTIGRAPH_BASE_URL).",
    )
    serve.add_argument(
        "--config",
        default=os.environ.get("OPTIGRAPH_CONFIG"),
        help="YAML file of settings (docs/configuration.md); flags and OPTIGRAPH_* variables override it "
        "(default $OPTIGRAPH_CONFIG)",
    )
    for flag, dest, help_ in SERVE_FLAGS:
        serve.add_argument(flag, dest=dest, default=None, help=help_)
    for flag, dest, help_ in REPEATED_SERVE_FLAGS:
        serve.add_argument(flag, dest=dest, default=None, action="append", help=help_)
    for flag, dest, help_ in SERVE_SWITCHES:
        serve.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=help_)
    from optigraph.optillm_compat import add_arguments as add_optillm_arguments

    add_optillm_arguments(serve)  # OptILLM's command line, as it is (docs/optillm.md)
    serve.add_argument(
        "--no-store-prompts",
        dest="store_prompts",
        action="store_const",
        const="false",
        help="keep runs as metadata only: no prompt or answer text in runs, calls or checkpoints",
    )
    from optigraph.evals.runner import add_arguments as add_eval_arguments

    add_eval_arguments(
        sub.add_parser(
            "eval",
            help="run approaches on a problem set and report which one pays",
            description="Runs each approach on each problem against an OpenAI-compatible endpoint and prints "
            "accuracy, tokens, upstream calls and wall time per approach; writes results.jsonl, "
            "summary.json and plot.png into --out.",
        )
    )
    _add_inspect_commands(sub)
    _add_access_commands(sub)
    config = sub.add_parser("config", help="check a configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate a file and print the effective settings (secrets redacted)",
        description="Validates FILE (errors name the line) and prints every setting as `optigraph serve "
        "--config FILE` would use it, with the OPTIGRAPH_* variables of this shell applied, secrets redacted.",
    )
    check.add_argument("file", help="the YAML file")
    sub.add_parser(
        "doctor",
        help="check the configuration, database, upstreams and sandbox, and say what each approach can do here",
        description="Takes the same settings as `serve` (--config, OPTIGRAPH_* variables).",
    ).add_argument("--config", default=os.environ.get("OPTIGRAPH_CONFIG"), help="YAML file of settings")
    from optigraph.api.spl_commands import add_arguments as add_spl_arguments

    add_spl_arguments(sub.add_parser("spl", help="list, edit, export and import the strategies spl has learned"))
    return p


def _exit_cleanly(signum: int, frame: object) -> None:
    # SIGTERM is the normal stop (0); SIGINT (Ctrl-C) exits with the shell's 128 + 2, without a traceback
    raise SystemExit(130 if signum == signal.SIGINT else 0)


def serve(args: argparse.Namespace) -> None:
    # SIGTERM is a normal stop. uvicorn handles it (draining in-flight requests for the grace period,
    # then interrupting their runs: api/server.py) and then re-raises
    # it to the previous handler; the default one would end the process with -SIGTERM, so the
    # previous handler is this one, which exits with 0 (also when SIGTERM comes while the app loads).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    import uvicorn

    overrides = {
        dest: getattr(args, dest) for _, dest, _ in (*SERVE_FLAGS, *SERVE_SWITCHES) if getattr(args, dest) is not None
    }
    from optigraph.optillm_compat import serve_settings

    try:  # OptILLM's flags and variables, and OPENAI_*, under optigraph's own
        extra = serve_settings(args, os.environ, {**overrides, **repeated_overrides(args)})
    except ValueError as exc:
        _serve_error(str(exc))
    settings = _settings(extra.settings, args.config)
    if settings.workers > 1:  # before the app (and any metrics library) is imported
        from optigraph.api.workers import prepare_multiprocess_metrics

        prepare_multiprocess_metrics()
    from optigraph.api.app import create_app  # imported before logging is set up: its imports log at info
    from optigraph.telemetry.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    for note in extra.notes:
        logging.getLogger("optigraph").info(note)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    _check_serve_settings(settings)
    from optigraph.api.access_commands import exposure_problem

    problem = exposure_problem(settings)
    if problem is not None:
        _serve_error(problem)
    from optigraph.api.models import ListedApproachError
    from optigraph.errors import ApproachLoadError, ExpressionError, InvalidRequest, UnknownApproach

    try:
        app = create_app(settings)
    except ApproachLoadError as exc:  # a bad or clashing user approach: say where, no traceback
        raise SystemExit(f"optigraph: cannot load approaches:\n{exc.message}") from None
    except (ExpressionError, UnknownApproach) as exc:
        _serve_error(f"--approach: {exc.message}")
    except ListedApproachError as exc:
        _serve_error(str(exc))
    except InvalidRequest as exc:  # server-wide approach parameters (--approach-params, OptILLM's flags)
        _serve_error(f"approach parameters (approach_params): {exc.message}")
    from optigraph.api.server import Server

    # One access-log line per request comes from optigraph.api.access_log; uvicorn's own is off.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        loop="uvloop",
        http="httptools",
        access_log=False,
        **({"log_config": None} if settings.log_format == "json" else {}),  # uvicorn's records: JSON too
    )
    if settings.workers > 1:
        from optigraph.api.workers import Supervisor, bind

        try:
            sock = bind(settings.host, settings.port)
        except OSError as exc:
            _serve_error(f"--port: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        worker = lambda sock: Server(config, app=app, grace_s=settings.shutdown_grace_s).run(sockets=[sock])  # noqa: E731
        raise SystemExit(Supervisor(sock, settings.workers, worker).run())
    Server(config, app=app, grace_s=settings.shutdown_grace_s).run()


def _serve_error(message: str) -> NoReturn:
    """A bad setting: one line on stderr and exit status 2, as argparse does for a bad flag."""
    import sys

    print(f"optigraph serve: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _settings(overrides: dict[str, object], config: str | None = None) -> Settings:
    """Settings from the flags, OPTIGRAPH_* variables and the config file; a bad value ends the command
    with one line."""
    from pathlib import Path

    from pydantic import ValidationError

    from optigraph.config_file import ConfigFileError, load_settings

    try:
        return load_settings(overrides, Path(config) if config else None).settings
    except ConfigFileError as exc:
        _serve_error(f"--config: {exc.message}")
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            if not field:  # a rule across settings names them in its message
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            name = f"{FLAG_OF[field]} (OPTIGRAPH_{field.upper()})" if field in FLAG_OF else f"OPTIGRAPH_{field.upper()}"
            problems.append(f"{name} {err.get('input')!r}: {err['msg']}")
        _serve_error("; ".join(problems))


def _check_serve_settings(settings: Settings) -> None:
    """What can be checked before the server starts: the database URL, the local model and the MCP config."""
    from sqlalchemy.exc import ArgumentError

    from optigraph.errors import OptigraphError
    from optigraph.memory.db import async_url, sync_url

    try:
        async_url(settings.db_url)
        sync_url(settings.db_url)
    except (ValueError, ArgumentError) as exc:
        _serve_error(f"--db-url: {exc}")
    if settings.base_url is None and settings.proxy_config is None:  # the local model serves: it must exist
        from optigraph.local.models import parse_spec

        try:
            parse_spec(settings.local_model, settings.local_models_dir)
        except OptigraphError as exc:
            _serve_error(f"--local-model: {exc.message}")
    if settings.mcp_config is not None:  # read again at every run; a broken file still stops the start
        from optigraph.plugins.mcp_servers import load_config

        try:
            load_config(settings.mcp_config)
        except OptigraphError as exc:
            _serve_error(f"--mcp-config: {exc.message}")
    if settings.proxy_config is not None:  # the providers are read once, at start
        from optigraph.backends.proxy import load_proxy_config

        try:
            load_proxy_config(settings.proxy_config)
        except OptigraphError as exc:
            _serve_error(f"--proxy-config: {exc.message}")


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:
        # The reader went away (`optigraph runs show ID | head`): stop quietly. stdout now points at
        # /dev/null so that flushing it at exit raises nothing either.
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _main(argv: Sequence[str] | None) -> None:
    args = parser().parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "eval":
        from optigraph.evals.runner import main as run_eval_command

        raise SystemExit(run_eval_command(args))
    elif args.command in ("runs", "approaches", "keys", "tenants"):
        raise SystemExit(_inspect_command(args))
    elif args.command == "config":
        from optigraph.config_file import check_command

        raise SystemExit(check_command(args.file))
    elif args.command == "doctor":
        from optigraph.doctor import main as doctor

        raise SystemExit(doctor(args.config))
    elif args.command == "spl":
        from optigraph.api.spl_commands import main as spl_command

        raise SystemExit(spl_command(args))


# ---- runs and approaches: inspecting what the server did -------------------------------------------

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _add_inspect_commands(sub: argparse._SubParsersAction) -> None:
    def source(p: argparse.ArgumentParser, *, server_default: str | None) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument(
            "--server",
            default=server_default,
            help=f"a running optigraph server (default {server_default or 'none: this installation'})",
        )
        where.add_argument("--db-url", help="read the database directly instead, e.g. sqlite:///./optigraph.db")
        p.add_argument(
            "--api-key",
            default=os.environ.get("OPTIGRAPH_API_KEY"),
            help="the server's key, when it requires one (default $OPTIGRAPH_API_KEY)",
        )
        p.add_argument("--json", action="store_true", help="print the JSON document instead of tables")

    runs = sub.add_parser("runs", help="list and show stored runs (steps, upstream calls, totals)")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    ls = runs_sub.add_parser("list", help="runs, newest first")
    ls.add_argument("--status", help="running, completed, failed, cancelled or interrupted")
    ls.add_argument("--approach", help="approach expression, e.g. bon&re2")
    ls.add_argument("--model", help="upstream model")
    ls.add_argument("--limit", type=int, default=50, help="runs per page (default 50, at most 1000)")
    ls.add_argument("--after", help="the last run id of the previous page")
    source(ls, server_default=DEFAULT_SERVER)
    ls.set_defaults(handler=_runs_list)
    show = runs_sub.add_parser("show", help="one run: its steps, upstream calls and totals")
    show.add_argument("run_id")
    show.add_argument("--max-chars", type=int, default=4096, help="cut longer strings (0: keep them whole)")
    source(show, server_default=DEFAULT_SERVER)
    show.set_defaults(handler=_runs_show)
    export = runs_sub.add_parser(
        "export",
        help="finished runs as OptILLM's conversation logs (JSONL), read from the database",
        description="One JSON line per finished run, oldest first, in OptILLM's --log-conversations "
        "format (docs/optillm.md).",
    )
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="jsonl (OptILLM's), the default")
    export.add_argument("--since", help="only runs created at or after this ISO date or time (UTC unless it says)")
    export.add_argument(
        "--db-url",
        default=os.environ.get("OPTIGRAPH_DB_URL") or default_db_url(),
        help="the database (default $OPTIGRAPH_DB_URL, else sqlite:///./optigraph.db)",
    )
    export.add_argument("--out-dir", help="append to conversations_YYYY-MM-DD.jsonl files here (default: stdout)")
    export.set_defaults(handler=_runs_export)
    for name, help_ in (
        ("resume", "continue an interrupted run (crash or upstream failure) on a server"),
        ("fork", "start a new run from a checkpoint of a run, with an optional state patch"),
    ):
        cmd = runs_sub.add_parser(name, help=help_)
        cmd.add_argument("run_id")
        if name == "fork":
            cmd.add_argument("--checkpoint", help="the checkpoint id to start from (default: the latest)")
            cmd.add_argument("--thread", help="the source thread, <id>.<i> for choice i of an n > 1 run")
            cmd.add_argument(
                "--patch", help='state values to overwrite, as JSON, e.g. \'{"request": {"temperature": 0.2}}\''
            )
        cmd.add_argument("--server", default=DEFAULT_SERVER, help=f"the optigraph server (default {DEFAULT_SERVER})")
        cmd.add_argument(
            "--api-key",
            default=os.environ.get("OPTIGRAPH_API_KEY"),
            help="the server's key, when it requires one (default $OPTIGRAPH_API_KEY)",
        )
        cmd.add_argument("--json", action="store_true", help="print the whole chat.completion")
        cmd.set_defaults(handler=_runs_continue)

    approaches = sub.add_parser("approaches", help="the approaches, their costs and graphs")
    approaches_sub = approaches.add_subparsers(dest="approaches_command", required=True)
    als = approaches_sub.add_parser("list", help="every approach with its cost formulas")
    als.add_argument("--server", help="ask a running server (default: this installation's approaches)")
    als.add_argument("--api-key", default=os.environ.get("OPTIGRAPH_API_KEY"))
    als.add_argument("--json", action="store_true")
    als.add_argument("--approaches-dir", help="also load the approaches in this directory (as serve does)")
    als.set_defaults(handler=_approaches_list)
    ashow = approaches_sub.add_parser("show", help="an approach or expression: Mermaid drawing and cost")
    ashow.add_argument("expression", help="e.g. bon or 'bon&re2|moa' (quote it for the shell)")
    ashow.add_argument("--server", help="ask a running server (default: this installation's approaches)")
    ashow.add_argument("--api-key", default=os.environ.get("OPTIGRAPH_API_KEY"))
    ashow.add_argument("--json", action="store_true")
    ashow.add_argument("--approaches-dir", help="also load the approaches in this directory (as serve does)")
    ashow.set_defaults(handler=_approaches_show)


class _CommandError(Exception):
    """A failure worth one line on stderr (no traceback)."""


def _inspect_command(args: argparse.Namespace) -> int:
    import sys

    from optigraph.errors import OptigraphError

    try:
        args.handler(args)
    except _CommandError as exc:
        print(f"optigraph: {exc}", file=sys.stderr)
        return 1
    except OptigraphError as exc:  # e.g. no such key, an unknown scope
        print(f"optigraph: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _api_get(args: argparse.Namespace, path: str, params: dict | None = None) -> dict:
    import httpx

    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.server.rstrip("/")
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            response = client.get(path, params={k: v for k, v in (params or {}).items() if v is not None})
    except httpx.HTTPError as exc:
        raise _CommandError(
            f"cannot reach {url} ({exc}); start it with `optigraph serve`, or read the database with --db-url"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        raise _CommandError(f"{response.status_code}: {message or response.text[:200]}")
    return body


def _from_db(coro_fn, db_url: str, *args, **kwargs):
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from optigraph.errors import OptigraphError
    from optigraph.memory.db import backend_name, sqlite_path

    if backend_name(db_url) == "sqlite" and not os.path.exists(sqlite_path(db_url)):
        raise _CommandError(f"no database at {sqlite_path(db_url)}")
    try:
        return asyncio.run(coro_fn(db_url, *args, **kwargs))
    except OptigraphError as exc:  # e.g. an unknown cursor
        raise _CommandError(exc.message) from None
    except SQLAlchemyError as exc:
        raise _CommandError(
            f"cannot read runs from {db_url}: {exc.__class__.__name__}: {exc.args[0] if exc.args else exc}"
        )


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=2, ensure_ascii=False))


def _runs_list(args: argparse.Namespace) -> None:
    filters = {
        "status": args.status,
        "approach": args.approach,
        "model": args.model,
        "limit": args.limit,
        "after": args.after,
    }
    if args.db_url:
        from optigraph.engine import inspection

        page = _from_db(inspection.read_runs, args.db_url, **filters)
    else:
        page = _api_get(args, "/v1/runs", filters)
    if args.json:
        return _print_json(page)
    rows = [
        [
            r["id"],
            r["status"],
            r["expression"],
            r["model"],
            r["usage"]["calls"],
            r["usage"]["total_tokens"],
            _ms(r.get("latency_ms")),
            _when(r.get("created_at")),
        ]
        for r in page["data"]
    ]
    print(_table(["ID", "STATUS", "APPROACH", "MODEL", "CALLS", "TOKENS", "LATENCY", "CREATED"], rows))
    more = f"; next page: --after {page['next_cursor']}" if page.get("has_more") else ""
    print(f"\n{_count(len(rows), 'run')}{more}")


def _runs_show(args: argparse.Namespace) -> None:
    if args.db_url:
        from optigraph.engine import inspection
        from optigraph.engine.registry import builtin_registry

        run = _from_db(
            inspection.read_run, args.db_url, args.run_id, builtin_registry(), max_chars=args.max_chars or None
        )
        if run is None:
            raise _CommandError(f"no run with id {args.run_id!r}")
    else:
        from urllib.parse import quote

        run = _api_get(args, f"/v1/runs/{quote(args.run_id, safe='')}", {"max_chars": args.max_chars})
    if args.json:
        return _print_json(run)
    print(_run_text(run))


def _runs_export(args: argparse.Namespace) -> None:
    """`runs export`: OptILLM-format conversation logs from the database (memory/conversation_log.py)."""
    from datetime import datetime
    from pathlib import Path

    from optigraph.memory.conversation_log import export_database

    try:
        since = datetime.fromisoformat(args.since) if args.since else None
    except ValueError:
        raise _CommandError(
            f"--since {args.since!r}: not an ISO date or time, e.g. 2026-12-01 or 2026-12-01T09:30"
        ) from None
    directory = Path(args.out_dir) if args.out_dir else None
    count = _from_db(export_database, args.db_url, since=since, out=sys.stdout, directory=directory)
    if directory is not None:
        print(f"{_count(count, 'run')} appended to {directory}", file=sys.stderr)


def _runs_continue(args: argparse.Namespace) -> None:
    """`runs resume` and `runs fork`: POST to the server, print the answer."""
    import json
    from urllib.parse import quote

    import httpx

    body: dict = {}
    if args.runs_command == "fork":
        if args.patch:
            try:
                body["patch"] = json.loads(args.patch)
            except ValueError as exc:
                raise _CommandError(f"--patch is not valid JSON: {exc}") from None
            if not isinstance(body["patch"], dict):
                raise _CommandError("--patch must be a JSON object of state values")
        body.update({k: v for k, v in (("checkpoint_id", args.checkpoint), ("thread", args.thread)) if v})
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.server.rstrip("/")
    path = f"/v1/runs/{quote(args.run_id, safe='')}/{args.runs_command}"
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            response = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise _CommandError(f"cannot reach {url} ({exc}); start it with `optigraph serve`") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code >= 400:
        message = (answer.get("error") or {}).get("message") if isinstance(answer, dict) else None
        raise _CommandError(f"{response.status_code}: {message or response.text[:200]}")
    if args.json:
        return _print_json(answer)
    info = answer.get("optigraph") or {}
    parent = f" (forked from {info['parent_id']})" if info.get("parent_id") else ""
    print(
        f"run {info.get('run_id')}{parent}: completed, {_count(int(info.get('upstream_calls') or 0), 'upstream call')}"
    )
    for choice in answer.get("choices") or []:
        print(f"\n[{choice.get('index')}] {(choice.get('message') or {}).get('content') or ''}")


def _run_text(run: dict) -> str:
    from optigraph.engine.inspection import iter_steps

    usage = run["usage"]
    lines = [f"Run {run['id']}", ""]
    fields = [
        ("status", run["status"]),
        ("approach", run["expression"]),
        ("model", run["model"]),
        ("created", _when(run.get("created_at"))),
        (
            "finished",
            f"{_when(run.get('finished_at'))}  ({_ms(run.get('latency_ms'))})" if run.get("finished_at") else "-",
        ),
        (
            "usage",
            f"{_count(usage['calls'], 'upstream call')}, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
            f"completion tokens ({usage['reasoning_tokens']} reasoning) = {usage['total_tokens']}",
        ),
    ]
    if run.get("parent_id"):
        fields.append(("parent", run["parent_id"]))
    if run.get("error"):
        fields.append(("error", _short((run["error"].get("error") or run["error"]).get("message", run["error"]), 200)))
    for i, choice in enumerate((run.get("response") or {}).get("choices") or []):
        fields.append((f"answer {i}", _short(((choice.get("message") or {}).get("content")) or "", 100)))
    width = max(len(k) for k, _ in fields)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in fields]
    graph = run.get("graph") or {}
    if graph.get("error"):
        lines += ["", f"graph: {graph['error']}"]
    for thread in run.get("threads") or []:
        lines += ["", f"Steps (thread {thread['thread_id']})"]
        if thread.get("error"):
            lines.append(f"  {thread['error']}")
            continue
        rows, shown = [], set()
        for depth, step, task in iter_steps(thread["steps"]):
            # A fork starts from a top-level step's checkpoint (`runs fork ID --checkpoint C`); each is shown once.
            checkpoint = step.get("checkpoint_id") if depth == 0 and id(step) not in shown else None
            shown.add(id(step))
            rows.append(
                [
                    _step_label(step, depth),
                    "  " * depth + task["name"],
                    task["status"],
                    checkpoint or "",
                    _short(f"error: {task.get('error')}", 90)
                    if task["status"] == "error"
                    else _writes(task.get("writes")),
                ]
            )
        lines.append(_table(["STEP", "NODE", "STATUS", "CHECKPOINT", "WROTE"], rows))
        if thread.get("next"):
            lines.append(f"  unfinished: next would run {', '.join(thread['next'])}")
    if not run.get("threads"):
        lines += ["", "Steps: none recorded (a lone passthrough is not checkpointed)"]
    calls = run.get("upstream_calls") or []
    lines += ["", "Upstream calls"]
    rows = [
        [
            i + 1,
            c["node"],
            c["model"],
            c["status"] if not c.get("error") else f"{c['status']}: {_short(c['error'], 30)}",
            c["attempt"],
            c["usage"]["prompt_tokens"],
            c["usage"]["completion_tokens"],
            _ms(c["latency_ms"]),
            _sent(c.get("messages")),
            _short(" | ".join(str(ch.get("text", "")) for ch in c.get("choices") or []), 40),
        ]
        for i, c in enumerate(calls)
    ]
    lines.append(_table(["#", "NODE", "MODEL", "STATUS", "TRY", "PROMPT", "COMPL", "LATENCY", "SENT", "ANSWER"], rows))
    t = run.get("totals") or {}
    if t:
        lines += [
            "",
            f"Totals: {_count(t['calls'], 'call')} ({t['failed_calls']} failed, {t['retried_calls']} retried), "
            f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion = {t['total_tokens']} tokens, "
            f"{_ms(t['upstream_latency_ms'])} upstream; {t['steps']} steps, {t['tasks']} node runs",
        ]
        by_node = t.get("by_node") or {}
        if by_node:
            lines.append(
                _table(
                    ["NODE", "CALLS", "TOKENS", "LATENCY"],
                    [[n, v["calls"], v["total_tokens"], _ms(v["latency_ms"])] for n, v in by_node.items()],
                )
            )
    return "\n".join(lines)


def _step_label(step: dict, depth: int) -> str:
    return "  " * depth + str(step["step"])


def _writes(writes: object) -> str:
    if not isinstance(writes, dict):
        return "-" if writes is None else _short(str(writes), 60)
    parts = []
    for key, value in writes.items():
        if key == "answers" and isinstance(value, list):
            texts = [str(((a or {}).get("message") or {}).get("content") or "") for a in value if isinstance(a, dict)]
            parts.append(f"answers={_short(' | '.join(texts), 40)!r}")
        else:
            parts.append(key)
    return _short(", ".join(parts), 90)


def _sent(messages: object) -> str:
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return ""
    last = messages[-1]
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return _short(f"{last.get('role', '?')}: {content or ''}", 40)


def _local_registry(args: argparse.Namespace):  # a Registry (imported lazily)
    """This installation's approaches: built-ins, entry points and --approaches-dir."""
    from optigraph.engine.loading import load_registry
    from optigraph.errors import ApproachLoadError

    try:
        return load_registry(approaches_dir=args.approaches_dir or os.environ.get("OPTIGRAPH_APPROACHES_DIR"))
    except ApproachLoadError as exc:
        raise _CommandError(f"cannot load approaches:\n{exc.message}") from None


def _approaches_list(args: argparse.Namespace) -> None:
    if args.server:
        data = _api_get(args, "/v1/approaches")["data"]
    else:
        from optigraph.engine import inspection

        data = [inspection.approach_info(spec) for spec in _local_registry(args).specs.values()]
    if args.json:
        return _print_json(data)
    rows = [
        [
            a["name"],
            _short(a["calls"], 30),
            _short(a["rounds"], 30),
            _cost_cell(a.get("default_calls"), a.get("default_rounds")),
            ", ".join(a["needs"]),
            "yes" if a["streams_final"] else "no",
            _short(a["description"], 70),
        ]
        for a in data
    ]
    print(_table(["NAME", "CALLS", "ROUNDS", "AT DEFAULTS", "NEEDS", "STREAMS", "DESCRIPTION"], rows))


def _approaches_show(args: argparse.Namespace) -> None:
    if args.server:
        from urllib.parse import quote

        info = _api_get(args, f"/v1/approaches/{quote(args.expression, safe='')}")
    else:
        from optigraph.engine import inspection
        from optigraph.engine.compiler import Compiler
        from optigraph.errors import OptigraphError

        registry = _local_registry(args)
        try:
            info = inspection.expression_info(
                inspection.compile_expression(args.expression, Compiler(registry, None)), registry
            )
        except OptigraphError as exc:
            raise _CommandError(exc.message) from None
    if args.json:
        return _print_json(info)
    cost = info["cost"]
    print(
        f"{info['expression']}: {info['choices']} choice{'s' if info['choices'] != 1 else ''}; at default parameters "
        f"{cost['calls'] if cost['calls'] is not None else '?'} upstream calls in "
        f"{cost['rounds'] if cost['rounds'] is not None else '?'} dependent rounds\n"
    )
    print(info["mermaid"].rstrip())
    print()
    rows = [
        [
            a["name"],
            _short(a["calls"], 30),
            _short(a["rounds"], 30),
            _cost_cell(a.get("default_calls"), a.get("default_rounds")),
            _short(a["description"], 70),
        ]
        for a in info["approaches"]
    ]
    print(_table(["APPROACH", "CALLS", "ROUNDS", "AT DEFAULTS", "DESCRIPTION"], rows))


def _cost_cell(calls: int | None, rounds: int | None) -> str:
    return "?" if calls is None or rounds is None else f"{_count(calls, 'call')}, {_count(rounds, 'round')}"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    """Aligned plain-text columns; numbers right-aligned."""
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _when(iso: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (UTC, as stored)."""
    return "-" if not iso else iso.replace("T", " ")[:19]


# ---- keys, tenants and pruning: access administration on the database (api/access_commands.py) -----


def _db_url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db-url",
        default=os.environ.get("OPTIGRAPH_DB_URL"),
        help="the server's database (default $OPTIGRAPH_DB_URL, else sqlite:///./optigraph.db)",
    )


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, help="runs per minute (0: no limit)")
    p.add_argument("--concurrent-runs", type=int, help="runs in flight at once (0: no limit)")
    p.add_argument("--tokens-per-day", type=int, help="upstream tokens per UTC day (0: no limit)")


def _limits_of(args: argparse.Namespace) -> dict[str, int | None]:
    return {"rpm": args.rpm, "concurrent_runs": args.concurrent_runs, "tokens_per_day": args.tokens_per_day}


def _db_of(args: argparse.Namespace) -> str:
    from optigraph.config import default_db_url

    return args.db_url or default_db_url()


def _add_access_commands(sub: argparse._SubParsersAction) -> None:
    from optigraph.api.scopes import ALL_SCOPES, DEFAULT_KEY_SCOPES

    keys = sub.add_parser("keys", help="create, list and revoke API keys (stored hashed in the database)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key; it is shown once")
    create.add_argument("--name", required=True, help="a unique name for the key")
    create.add_argument("--tenant", required=True, help="the tenant whose runs the key makes and sees")
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help=f"a scope ({', '.join(ALL_SCOPES)}); repeat for more (default: {' '.join(DEFAULT_KEY_SCOPES)})",
    )
    _limit_args(create)
    _db_url_arg(create)
    create.set_defaults(handler=_keys_create)
    kls = keys_sub.add_parser("list", help="the keys (never their secrets)")
    kls.add_argument("--all", action="store_true", help="revoked keys too")
    kls.add_argument("--json", action="store_true")
    _db_url_arg(kls)
    kls.set_defaults(handler=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name or id (within the cache time on every replica)")
    revoke.add_argument("key", help="the key's name or id")
    _db_url_arg(revoke)
    revoke.set_defaults(handler=_keys_revoke)
    klimits = keys_sub.add_parser("set-limits", help="a key's own limits (over its tenant's)")
    klimits.add_argument("key", help="the key's name or id")
    _limit_args(klimits)
    _db_url_arg(klimits)
    klimits.set_defaults(handler=_keys_set_limits)

    tenants = sub.add_parser("tenants", help="per-tenant limits (over the server's --tenant-* defaults)")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    tset = tenants_sub.add_parser("set-limits", help="set a tenant's own limits")
    tset.add_argument("tenant")
    _limit_args(tset)
    _db_url_arg(tset)
    tset.set_defaults(handler=_tenants_set_limits)
    tclear = tenants_sub.add_parser("clear-limits", help="remove a tenant's own limits (the defaults apply)")
    tclear.add_argument("tenant")
    _db_url_arg(tclear)
    tclear.set_defaults(handler=_tenants_clear_limits)
    tls = tenants_sub.add_parser("list", help="the tenants that have their own limits")
    _db_url_arg(tls)
    tls.set_defaults(handler=_tenants_list)

    runs_sub = next(a for a in sub.choices["runs"]._actions if isinstance(a, argparse._SubParsersAction))
    prune = runs_sub.add_parser("prune", help="delete runs (calls, checkpoints, memory) older than an age")
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days")
    _db_url_arg(prune)
    prune.set_defaults(handler=_runs_prune)


def _keys_create(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import dumps, keys_create

    fields, key = keys_create(
        _db_of(args), name=args.name, tenant=args.tenant, scopes=args.scopes, limits=_limits_of(args)
    )
    print(dumps(fields))
    print(f"\nkey (shown once, only its digest is stored):\n{key}")


def _keys_list(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import dumps, keys_list

    found = keys_list(_db_of(args), include_revoked=args.all)
    if args.json:
        print(dumps(found))
        return
    rows = [
        [k["id"], k["name"], k["tenant"], " ".join(k["scopes"]), _when(k["created_at"]), _when(k["revoked_at"])]
        for k in found
    ]
    print(_table(["id", "name", "tenant", "scopes", "created", "revoked"], rows) if rows else "no keys")


def _keys_revoke(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import keys_revoke

    keys_revoke(_db_of(args), args.key)
    print(f"revoked {args.key}")


def _keys_set_limits(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import keys_set_limits

    keys_set_limits(_db_of(args), args.key, _limits_of(args))
    print(f"limits of {args.key} set")


def _tenants_set_limits(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import dumps, tenants_set_limits

    print(dumps(tenants_set_limits(_db_of(args), args.tenant, _limits_of(args))))


def _tenants_clear_limits(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import tenants_clear_limits

    had = tenants_clear_limits(_db_of(args), args.tenant)
    print(f"{args.tenant}: " + ("its own limits removed" if had else "had no limits of its own"))


def _tenants_list(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import dumps, tenants_list

    print(dumps(tenants_list(_db_of(args))))


def _runs_prune(args: argparse.Namespace) -> None:
    from optigraph.api.access_commands import runs_prune

    if args.older_than < 0:
        raise _CommandError("--older-than takes a number of days >= 0")
    deleted = runs_prune(_db_of(args), older_than_days=args.older_than)
    print(f"deleted {_count(deleted, 'run')} created more than {args.older_than:g} days ago")


if __name__ == "__main__":
    main()
