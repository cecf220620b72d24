"""The `optigraph` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Sequence

from optigraph.config import Settings

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
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optigraph", description="OpenAI-compatible optimizing inference proxy")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server",
                           description="Every flag can also be set with OPTIGRAPH_<NAME> (e.g. OPTIGRAPH_BASE_URL).")
    for flag, dest, help_ in SERVE_FLAGS:
        serve.add_argument(flag, dest=dest, default=None, help=help_)
    return p


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> None:
    # SIGTERM is a normal stop. uvicorn handles it (draining in-flight requests) and then re-raises
    # it to the previous handler; the default one would end the process with -SIGTERM, so the
    # previous handler is this one, which exits with 0 (also when SIGTERM comes while the app loads).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    import uvicorn

    from optigraph.api.app import create_app

    overrides = {dest: getattr(args, dest) for _, dest, _ in SERVE_FLAGS if getattr(args, dest) is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                loop="uvloop", http="httptools", access_log=settings.log_level.lower() == "debug")


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "serve":
        serve(args)


if __name__ == "__main__":
    main()
