"""OptILLM plugin files, loaded unchanged: a Python module with `SLUG` and
`run(system_prompt, initial_query, client, model[, request_config])` returning `(text, completion_tokens)`.

Each becomes an approach named by its SLUG, so it works alone (`myplugin-gpt-4o`) and in expressions
as OptILLM runs it: `myplugin&moa` hands the plugin's text to moa as the question (the pipeline puts it
in the last user turn), `moa&myplugin` hands moa's answer to the plugin, `myplugin|bon` runs both.

Graph: START -> <slug> -> END, one node that runs `run` in a worker thread (it is synchronous; an
`async def run` gets its own event loop there, as OptILLM gives it). Its `client` is an
OpenAI-SDK-shaped object (core/sync_client.py) whose calls go back to the run's event loop and through
the run's LLM: recorded as the run's upstream calls under the node `<slug>`, budgeted, retried, on any
backend. The plugin's own token count is not used: the run's usage is what its calls recorded.

What the plugin gets, as OptILLM gives it: `system_prompt` is the conversation's system (or
developer) message; `initial_query` its user and assistant turns as `User: ...` / `Assistant: ...`
lines; `model` the upstream model; `request_config` the client's other request fields (temperature,
max_tokens, its own fields...) with the plugin's `optillm_params` on top. A plugin that raises, or
returns something else than text (or a chat.completion document), fails the run with a 502
`plugin_failed` naming the plugin and the error; a budget cap the plugin ran into while catching the
error itself still fails the run as `budget_exceeded`.

Loading follows OptILLM: every `*.py` file in the directory and in its `optillm/plugins/` folder (the
layout OptILLM's `--plugins-dir` points into); a file without `SLUG` and `run`, or whose import fails,
is skipped with a warning; a SLUG that names a built-in approach or plugin is skipped too (the
built-in serves that name).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import ConfigDict

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.core.sync_client import SyncChatClient
from optigraph.engine.module_files import import_file
from optigraph.errors import ApproachLoadError, BudgetExceeded, OptigraphError, PluginFailed

log = logging.getLogger("optigraph.plugins")

SYSTEM_ROLES = ("system", "developer")


class OptillmPluginParams(ApproachParams):
    """Whatever the client sends in `optillm_params.<slug>`: merged into the plugin's request_config."""

    model_config = ConfigDict(extra="allow")


def flatten(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """`(system_prompt, initial_query)` from a conversation, the way OptILLM flattens it."""
    system = ""
    turns: list[str] = []
    for message in messages:
        role = message.get("role")
        text = message_text(message)
        if role in SYSTEM_ROLES:
            system = text
        elif role == "user":
            turns.append(f"User: {text}")
        elif role == "assistant":
            turns.append(f"Assistant: {text}")
    return system, "\n".join(turns)


def answer_text(slug: str, result: Any) -> str:
    """The text of what `run` returned: `(text, tokens)`, a text, or a chat.completion document."""
    if isinstance(result, tuple) and result:
        result = result[0]
    if isinstance(result, Mapping) and isinstance(result.get("choices"), list) and result["choices"]:
        result = ((result["choices"][0] or {}).get("message") or {}).get("content")
    if isinstance(result, list) and result and all(isinstance(r, str) for r in result):
        result = result[0]  # several texts (OptILLM's n): a run of this approach answers one
    if not isinstance(result, str):
        raise PluginFailed(f"plugin {slug!r} returned {type(result).__name__}, not (text, completion_tokens)")
    return result


def _call(run: Callable[..., Any], takes_config: bool, args: tuple[Any, ...], config: dict[str, Any]) -> Any:
    """`run(*args[, request_config=config])` in this (worker) thread; a coroutine gets its own loop."""
    kwargs = {"request_config": config} if takes_config else {}
    if inspect.iscoroutinefunction(run):
        return asyncio.run(run(*args, **kwargs))
    return run(*args, **kwargs)


def optillm_spec(slug: str, run: Callable[..., Any], source: str) -> ApproachSpec:
    """The approach that runs an OptILLM plugin's `run` (see the module docstring)."""
    takes_config = "request_config" in inspect.signature(run).parameters

    async def plugin(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        system_prompt, initial_query = flatten(state["messages"])
        config = {**(state.get("request") or {}), **(state.get("params") or {})}
        client = SyncChatClient(ctx.llm, asyncio.get_running_loop(), node=slug)
        args = (system_prompt, initial_query, client, ctx.llm.model)
        try:
            result = await asyncio.to_thread(_call, run, takes_config, args, config)
        except OptigraphError:
            raise  # the run's own errors (an upstream failure, its budget) keep their status
        except Exception as exc:
            raise PluginFailed(f"plugin {slug!r} ({source}) raised {type(exc).__name__}: {exc}") from exc
        finally:
            client.close()
        budget = next((e for e in client.errors if isinstance(e, BudgetExceeded)), None)
        if budget is not None:  # the plugin caught it and went on: the run still went over its cap
            raise budget
        text = answer_text(slug, result)
        return {"answers": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    def build() -> StateGraph:
        graph = StateGraph(ApproachState, context_schema=RunContext)
        graph.add_node(slug, plugin)
        graph.add_edge(START, slug)
        graph.add_edge(slug, END)
        return graph

    doc = (inspect.getdoc(inspect.getmodule(run)) or "").strip().splitlines()
    return ApproachSpec(
        name=slug,
        description=(doc[0] if doc else f"OptILLM plugin {slug}") + f" (OptILLM plugin file {source})",
        build=build,
        params=OptillmPluginParams,
        calls="?",
        rounds="?",
    )


def plugin_files(directory: Path | str) -> list[Path]:
    """The `*.py` files OptILLM would load for `--plugins-dir directory`, sorted by name in each folder."""
    root = Path(directory)
    if not root.is_dir():
        raise ApproachLoadError(f"plugins directory {str(root)!r} does not exist or is not a directory")
    out: list[Path] = []
    for folder in (root, root / "optillm" / "plugins"):
        if folder.is_dir():
            out += sorted(p for p in folder.glob("*.py") if p.is_file() and not p.name.startswith((".", "_")))
    return out


def load_plugins(directory: Path | str, *, taken: Callable[[str], bool]) -> list[tuple[ApproachSpec, str]]:
    """(spec, source) for each OptILLM plugin file in `directory` whose SLUG is not `taken` (built-in)."""
    out: list[tuple[ApproachSpec, str]] = []
    for path in plugin_files(directory):
        try:
            module = import_file(path, "optigraph_optillm_plugins")  # its own module, as OptILLM does
        except Exception as exc:  # noqa: BLE001 (OptILLM skips a file that fails to import; so do we, loudly)
            log.warning("skipping OptILLM plugin file %s: import failed: %s: %s", path, type(exc).__name__, exc)
            continue
        slug, run = getattr(module, "SLUG", None), getattr(module, "run", None)
        if not isinstance(slug, str) or not callable(run):
            log.warning("skipping %s: an OptILLM plugin file needs SLUG (a string) and run", path)
            continue
        if taken(slug):
            log.warning("skipping %s: %r is a built-in approach or plugin, which serves that name", path, slug)
            continue
        out.append((optillm_spec(slug, run, str(path)), str(path)))
    return out
