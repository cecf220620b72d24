"""`optigraph spl list|show|edit|delete|export|import`: the `spl` strategies, on the database itself.

The commands read and write the server's database (`--db-url`, default `$OPTIGRAPH_DB_URL`, else
./optigraph.db) through the same store the plugin and `/v1/spl/strategies` use; a server running on
it sees the changes at its next request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from optigraph.config import default_db_url
from optigraph.memory.db import backend_name, open_database, sqlite_path
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.strategies import Strategy, StrategyStore
from optigraph.plugins.problem_types import PROBLEM_TYPES


class SplCommandError(Exception):
    """What stops a command, said in one line."""


def add_arguments(spl: argparse.ArgumentParser) -> None:
    """The `spl` subcommands and their flags."""
    where = argparse.ArgumentParser(add_help=False)  # every subcommand takes --db-url
    where.add_argument(
        "--db-url",
        default=os.environ.get("OPTIGRAPH_DB_URL") or default_db_url(),
        help="the server's database (default $OPTIGRAPH_DB_URL, else sqlite:///./optigraph.db)",
    )
    sub = spl.add_subparsers(dest="spl_command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[where])

    ls = command("list", "the strategies, by problem type, best first")
    ls.add_argument("--type", dest="problem_type", choices=PROBLEM_TYPES, help="only this problem type")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = command("show", "one strategy with its record")
    show.add_argument("strategy_id", type=int)
    edit = command("edit", "change a strategy's text, type or record")
    edit.add_argument("strategy_id", type=int)
    edit.add_argument("--text")
    edit.add_argument("--type", dest="problem_type", choices=PROBLEM_TYPES)
    edit.add_argument("--uses", type=int)
    edit.add_argument("--successes", type=int)
    delete = command("delete", "delete a strategy")
    delete.add_argument("strategy_id", type=int)
    export = command("export", "every strategy as JSON (to stdout or --out)")
    export.add_argument("--type", dest="problem_type", choices=PROBLEM_TYPES, help="only this problem type")
    export.add_argument("--out", help="write to this file")
    imp = command("import", "add the strategies of an exported JSON file")
    imp.add_argument("file")


def main(args: argparse.Namespace) -> int:
    """Runs the chosen `spl` subcommand; the exit status."""
    try:
        asyncio.run(_with_store(args.db_url, COMMANDS[args.spl_command], args))
    except SplCommandError as exc:
        print(f"optigraph: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"optigraph: cannot use {args.db_url}: {type(exc).__name__}: {exc.args[0] if exc.args else exc}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _with_store(
    db_url: str, command: Callable[[StrategyStore, argparse.Namespace], Awaitable[None]], args: argparse.Namespace
) -> None:
    if backend_name(db_url) == "sqlite" and not os.path.exists(sqlite_path(db_url)):
        raise SplCommandError(f"no database at {sqlite_path(db_url)}")
    await asyncio.to_thread(upgrade_schema, db_url)  # an older database gets the strategies table
    db = open_database(db_url)
    try:
        await command(StrategyStore(db), args)
    finally:
        await db.dispose()


async def _found(store: StrategyStore, strategy_id: int) -> Strategy:
    strategy = await store.get(strategy_id)
    if strategy is None:
        raise SplCommandError(f"no strategy {strategy_id}")
    return strategy


async def _list(store: StrategyStore, args: argparse.Namespace) -> None:
    strategies = await store.read(args.problem_type)
    if args.json:
        print(json.dumps([s.to_dict() for s in strategies], indent=2, ensure_ascii=False))
        return
    if not strategies:
        print("no strategies")
        return
    print(f"{'id':>5}  {'type':<13} {'uses':>5} {'ok':>4} {'rate':>5}  text")
    for s in strategies:
        text = s.text if len(s.text) <= 80 else s.text[:77] + "..."
        print(f"{s.id:>5}  {s.problem_type:<13} {s.uses:>5} {s.successes:>4} {s.success_rate:>5.2f}  {text}")


async def _show(store: StrategyStore, args: argparse.Namespace) -> None:
    print(json.dumps((await _found(store, args.strategy_id)).to_dict(), indent=2, ensure_ascii=False))


async def _edit(store: StrategyStore, args: argparse.Namespace) -> None:
    current = await _found(store, args.strategy_id)
    changes = {"text": args.text, "problem_type": args.problem_type, "uses": args.uses, "successes": args.successes}
    if all(v is None for v in changes.values()):
        raise SplCommandError("nothing to change: give --text, --type, --uses or --successes")
    if args.text is not None and not args.text.strip():
        raise SplCommandError("--text cannot be empty")
    uses = current.uses if args.uses is None else args.uses
    successes = current.successes if args.successes is None else args.successes
    if min(uses, successes) < 0 or successes > uses:
        raise SplCommandError(f"successes ({successes}) must be between 0 and uses ({uses})")
    edited = await store.edit(args.strategy_id, **changes)
    print(json.dumps(edited.to_dict() if edited else {}, indent=2, ensure_ascii=False))


async def _delete(store: StrategyStore, args: argparse.Namespace) -> None:
    if not await store.delete(args.strategy_id):
        raise SplCommandError(f"no strategy {args.strategy_id}")
    print(f"deleted strategy {args.strategy_id}")


async def _export(store: StrategyStore, args: argparse.Namespace) -> None:
    keys = ("problem_type", "text", "uses", "successes", "refinements", "example")
    items = [{k: s.to_dict()[k] for k in keys} for s in await store.read(args.problem_type)]
    text = json.dumps(items, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"exported {len(items)} strategies to {args.out}")
    else:
        print(text)


def _parse_import(path: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SplCommandError(f"cannot read {path}: {exc}") from None
    if not isinstance(items, list):
        raise SplCommandError(f"{path}: expected a JSON list of strategies")
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise SplCommandError(f"{path}: item {n}: needs a non-empty 'text'")
        if item.get("problem_type") not in PROBLEM_TYPES:
            raise SplCommandError(f"{path}: item {n}: 'problem_type' must be one of {', '.join(PROBLEM_TYPES)}")
        uses, successes = item.get("uses", 0), item.get("successes", 0)
        if not all(isinstance(v, int) and v >= 0 for v in (uses, successes)) or successes > uses:
            raise SplCommandError(f"{path}: item {n}: 'uses' and 'successes' must be counts, successes <= uses")
    return items


async def _import(store: StrategyStore, args: argparse.Namespace) -> None:
    added = await store.import_many(_parse_import(args.file))
    print(f"imported {len(added)} strategies: {', '.join(str(s.id) for s in added) or 'none'}")


COMMANDS: dict[str, Callable[[StrategyStore, argparse.Namespace], Awaitable[None]]] = {
    "list": _list,
    "show": _show,
    "edit": _edit,
    "delete": _delete,
    "export": _export,
    "import": _import,
}
