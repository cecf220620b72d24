"""`compact`: a long conversation's old turns are summarised once it fills a share of the window.

    compact.pre: estimate the conversation (characters / 4) -> over `share` of the model's context
                 window? -> one call summarises the turns between the leading system turns and the
                 last `keep_last` turns -> those turns become one system turn with the summary
    compact.run: what `compact` wraps answers the shorter conversation

The window is `context_window` when given, else the model's from a table of known models
(`KNOWN_WINDOWS`, matched on the model id), else `DEFAULT_WINDOW`. The leading system (and developer)
turns and the last `keep_last` turns are kept word for word; the kept tail never starts with a tool
result (its assistant turn with the call is kept with it). What was summarised, and the estimated
sizes before and after, are in the run's notes and in `private`.

Cost: one call when the conversation is over the share, none otherwise: `1` at most, in one round.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.plugins.retrieval import CHARS_PER_TOKEN, estimate_tokens

DEFAULT_WINDOW = 8192
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of each turn in a chat template
SUMMARY_TEMPERATURE = 0.2
PROMPT_ROOM_TOKENS = 200  # the summary prompt's own words
# Context windows (tokens) of models by id; the longest key found in the lower-cased model id wins.
KNOWN_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "gemini": 1_048_576,
    "llama-3.1": 131_072,
    "llama-3.2": 131_072,
    "qwen2.5": 32_768,
    "smollm2": 8_192,
}
SUMMARY_SYSTEM = (
    "You summarise the earlier part of a conversation for an assistant that will continue it. Keep every "
    "fact, number, name, decision, request and open question; drop greetings and repetition. Write plain "
    "sentences, in the conversation's language."
)
SUMMARY_HEADER = "Summary of the earlier conversation (its turns were summarised to save room):"


class CompactParams(ApproachParams):
    share: float = Field(
        0.6, gt=0.0, le=1.0, description="Share of the context window above which old turns are summarised."
    )
    context_window: int | None = Field(
        None,
        ge=256,
        le=10_000_000,
        description=f"The model's context window in tokens; default: known models' table, else {DEFAULT_WINDOW}.",
    )
    keep_last: int = Field(4, ge=0, le=1000, description="The last turns kept word for word.")
    summary_tokens: int = Field(400, ge=32, le=8192, description="max_tokens of the summary.")


def window_of(model: str, given: int | None) -> tuple[int, str]:
    """The context window for `model` and where it comes from."""
    if given:
        return given, "the context_window parameter"
    name = model.lower()
    known = [key for key in KNOWN_WINDOWS if key in name]
    if known:
        key = max(known, key=len)
        return KNOWN_WINDOWS[key], f"the table of known models ({key})"
    return DEFAULT_WINDOW, "the default"


def conversation_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated tokens of a conversation: characters / 4 per turn (tool calls included), plus a few per turn."""
    return sum(estimate_tokens(_turn_text(m)) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def _turn_text(m: dict[str, Any]) -> str:
    text = message_text(m)
    calls = m.get("tool_calls") or []
    said = [f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments')})" for c in calls]
    return text + (("\ncalls: " + "; ".join(said)) if said else "")


def split_turns(messages: list[dict[str, Any]], keep_last: int) -> tuple[int, int]:
    """Where the old turns start (after the leading system turns) and where the kept tail starts."""
    start = 0
    while start < len(messages) and messages[start].get("role") in ("system", "developer"):
        start += 1
    tail = max(len(messages) - keep_last, start)
    while tail > start and messages[tail].get("role") == "tool":
        tail -= 1  # a tool result stays with the assistant turn that called it
    return start, tail


def transcript(turns: list[dict[str, Any]], budget_tokens: int) -> str:
    """The turns as `[role] text` lines, their start cut when they exceed `budget_tokens`."""
    text = "\n\n".join(f"[{m.get('role')}] {_turn_text(m)}" for m in turns)
    limit = budget_tokens * CHARS_PER_TOKEN
    if len(text) > limit:
        text = "[... the earliest turns were cut ...]\n" + text[-limit:]
    return text


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or CompactParams().model_dump()
    messages = state["messages"]
    window, source = window_of(runtime.context.llm.model, params.get("context_window"))
    limit = int(window * float(params["share"]))
    before = conversation_tokens(messages)
    private: dict[str, Any] = {"window": window, "limit": limit, "before": before, "summarised": 0}
    if before <= limit:
        return {"private": private, "notes": [f"compact: {before} estimated tokens, within {limit} ({source})"]}
    start, tail = split_turns(messages, int(params["keep_last"]))
    old = messages[start:tail]
    if not old:
        return {
            "private": private,
            "notes": [f"compact: {before} estimated tokens, over {limit}, but no old turn to summarise"],
        }
    budget = max(window - int(params["summary_tokens"]) - PROMPT_ROOM_TOKENS, 64)
    completion = await runtime.context.llm.chat(
        [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": transcript(old, budget)}],
        node="compact.summarise",
        temperature=SUMMARY_TEMPERATURE,
        max_tokens=int(params["summary_tokens"]),
    )
    summary = {"role": "system", "content": f"{SUMMARY_HEADER}\n{completion.text.strip()}"}
    out = [*messages[:start], summary, *messages[tail:]]
    after = conversation_tokens(out)
    private.update(summarised=len(old), after=after)
    note = (
        f"compact: {before} estimated tokens over {limit} ({share_text(params)} of {window} from {source}): "
        f"summarised {len(old)} turn(s), kept {start} system and {len(messages) - tail} last; now {after}"
    )
    return {"messages": out, "private": private, "notes": [note], "usage": completion.usage}


def share_text(params: dict[str, Any]) -> str:
    return f"{float(params['share']):.0%}"


SPEC = PluginSpec(
    name="compact",
    description="Summarises the old turns of a long conversation (one call) once it passes a share of the model's "
    "context window, keeping the system turns and the last turns word for word.",
    pre=pre,
    params=CompactParams,
    calls="1",
    rounds="1",
)
