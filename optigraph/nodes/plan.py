"""plan: planning steps before an answer. Observations about a problem, new observations derived
from combinations of earlier ones, a natural-language solution sketch from chosen observations, and
the messages that ask for an answer following such a sketch.

Each step is an async function (`observe`, `derive`, `sketch`) returning a `StepResult`, so an
approach can call it inside its own branch nodes, and a node factory (`observe_node`,
`derive_node`, `sketch_node`) for graphs that keep the inputs and outputs in state keys. A failed
upstream call is a failed step with a note (plans are aids; the approach decides what to do without
one); other errors, such as an exhausted budget, propagate. Lists come back parsed from numbered,
bulleted, labelled ("Observation 2: ...") or plain-line replies.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.answers import strip_think
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import ApproachState
from optigraph.core.usage import Usage
from optigraph.errors import UpstreamError
from optigraph.nodes.common import helper_params

OBSERVATIONS_PROMPT = """Here is a task:

{query}

Before solving it, write {count} useful, non-obvious observations about it: properties of the \
inputs or the problem, constraints and edge cases, facts that simplify it, or ideas that could lead \
to a correct solution. Do not solve the task and do not write code. Write each observation as one \
item of a numbered list, and nothing else."""

DERIVE_PROMPT = """Here is a task:

{query}

Here are observations about it:

{observations}

Combine these observations to derive {count} new observations: conclusions that follow from \
several of them together and bring you closer to a solution. Do not repeat the given observations, \
do not solve the task and do not write code. Write each new observation as one item of a numbered \
list, and nothing else."""

SKETCH_PROMPT = """Here is a task:

{query}

Here are observations about it:

{observations}

Using these observations, describe in natural language how to solve the task: the approach, the \
key steps in order, and how it handles edge cases. Refer to the observations you rely on. Do not \
write code and do not give the final answer yet; this plan will be followed in a next step."""

SKETCH_PROMPT_UNOBSERVED = """Here is a task:

{query}

Describe in natural language how to solve the task: the approach, the key steps in order, and how \
it handles edge cases. Do not write code and do not give the final answer yet; this plan will be \
followed in a next step."""

FOLLOW_PLAN_PROMPT = """{query}

Here is a plan for solving this:

{plan}

Follow the plan and write the complete solution. If the task asks for code, explain the approach \
briefly, then give the whole program in one fenced code block in the language the task asks for \
(Python if it names none), handling the edge cases the plan mentions. Otherwise give the complete \
answer, with its final result clearly stated."""

FOLLOW_OBSERVATIONS_PROMPT = """{query}

Observations that may help:

{observations}

Using them, write the complete solution. If the task asks for code, explain the approach briefly, \
then give the whole program in one fenced code block in the language the task asks for (Python if \
it names none). Otherwise give the complete answer, with its final result clearly stated."""

DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 2048

PlanNode = Callable[[ApproachState, Runtime[RunContext]], Awaitable[dict[str, Any]]]


# ---- parsing --------------------------------------------------------------------------------------

_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?:[-*•+▪‣◦]|\(?\d{1,3}[.):]|\[\d{1,3}\]|\*\*\d{1,3}[.):]?\*\*)[ \t]+")
_LABEL = re.compile(
    r"^(?:[*_]{1,2})?\s*(?:observation|insight|idea|step|principle|hint|point|lesson|rule)\s*#?\s*\d*"
    r"\s*(?:[*_]{1,2})?\s*(?:[:.)\-–—]|$)\s*(?:[*_]{1,2}(?=\s|$))?\s*",
    re.IGNORECASE,
)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*")
_NONE = re.compile(r"^\W*(?:none|n/a|no (?:new )?(?:observations?|principles?|items?))\W*$", re.IGNORECASE)


def _start(line: str) -> tuple[int, str] | None:
    """(indent, text) when the line starts a list item: a bullet, a number, a labelled line
    ("Observation 2: ...") or a heading naming one ("### Observation 2"); None otherwise."""
    m = _MARKER.match(line)
    if m:
        rest = line[m.end() :]
        return len(m.group("indent").expandtabs(4)), _LABEL.sub("", rest, count=1).strip()
    heading = _HEADING.match(line)
    body = line[heading.end() :] if heading else line.lstrip()
    label = _LABEL.match(body)
    if label:
        return len(line) - len(line.lstrip()), body[label.end() :].strip()
    return None


def _clean(item: str) -> str:
    item = re.sub(r"\s+", " ", item).strip()
    if item.startswith("**") and item.endswith("**") and item.count("**") == 2:
        item = item[2:-2].strip()
    return item


def parse_list(text: str, *, limit: int | None = None) -> list[str]:
    """The items of a list written by a model, in order, at most `limit`.

    Numbered, bulleted and labelled items may span several lines (continuation lines join the item;
    nested bullets stay part of their parent). Text before the first item and unindented text after
    a blank line that follows the last one (preambles, closing remarks) is dropped. A reply with no
    markers at all is read one item per non-empty line, minus a leading line ending in ":". A reply
    saying "None" is an empty list."""
    lines = strip_think(text).splitlines()
    items: list[list[str]] = []
    loose: list[str] = []
    current: list[str] | None = None
    base_indent: int | None = None
    gap = False
    for line in lines:
        if not line.strip():
            gap = True
            continue
        start = _start(line)
        if start is not None and (base_indent is None or start[0] <= base_indent + 1 or current is None):
            indent, rest = start
            base_indent = indent if base_indent is None else min(base_indent, indent)
            current = [rest] if rest else []
            items.append(current)
        elif current is not None and (not gap or line[:1] in " \t" or not current or start is not None):
            current.append(line.strip())
        elif _HEADING.match(line):
            current = None  # a section title between or around items belongs to no item
        else:
            current = None
            loose.append(line.strip())
        gap = False
    if items:
        found = [_clean(" ".join(parts)) for parts in items]
    else:
        found = [_clean(line) for line in loose]
        if len(found) > 1 and found[0].endswith(":"):
            found = found[1:]
    found = [f for f in found if f and not _NONE.match(f)]
    return found[:limit] if limit is not None else found


def numbered(items: Sequence[str]) -> str:
    """`1. first` / `2. second` lines, the way prompts show lists back to the model."""
    return "\n".join(f"{i + 1}. {item}" for i, item in enumerate(items))


# ---- messages ---------------------------------------------------------------------------------------


def observations_messages(messages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The conversation with its last user turn replaced by the request for observations."""
    return replace_last_user(messages, OBSERVATIONS_PROMPT.format(query=last_user_text(messages), count=count))


def derive_messages(messages: list[dict[str, Any]], observations: Sequence[str], count: int) -> list[dict[str, Any]]:
    prompt = DERIVE_PROMPT.format(query=last_user_text(messages), observations=numbered(observations), count=count)
    return replace_last_user(messages, prompt)


def sketch_messages(messages: list[dict[str, Any]], observations: Sequence[str]) -> list[dict[str, Any]]:
    query = last_user_text(messages)
    if observations:
        prompt = SKETCH_PROMPT.format(query=query, observations=numbered(observations))
    else:
        prompt = SKETCH_PROMPT_UNOBSERVED.format(query=query)
    return replace_last_user(messages, prompt)


def follow_plan_messages(
    messages: list[dict[str, Any]], plan: str, observations: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The conversation whose last user turn asks for the answer following `plan`; without a plan,
    following the observations; without either, the conversation unchanged."""
    query = last_user_text(messages)
    if plan.strip():
        return replace_last_user(messages, FOLLOW_PLAN_PROMPT.format(query=query, plan=plan.strip()))
    if observations:
        return replace_last_user(
            messages, FOLLOW_OBSERVATIONS_PROMPT.format(query=query, observations=numbered(observations))
        )
    return messages


# ---- steps --------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What a planning step produced: the raw text, the parsed items (list steps), its usage, notes.
    `failed` is True when the upstream call failed (text and items are then empty)."""

    text: str = ""
    items: list[str] = field(default_factory=list)
    usage: Usage | None = None
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def update(self, **values: Any) -> dict[str, Any]:
        """A state update writing `values`, with this step's usage and notes."""
        out: dict[str, Any] = {**values, "notes": list(self.notes)}
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def planning_call(
    state: ApproachState, *, temperature: float = DEFAULT_TEMPERATURE, max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """Call parameters of a planning step: `planning_temperature` and `planning_max_tokens` from the
    approach's parameters when set, else the given defaults; none of the client's tools or formats."""
    params = state.get("params") or {}
    return helper_params(
        state,
        temperature=params.get("planning_temperature", temperature),
        max_tokens=params.get("planning_max_tokens", max_tokens),
    )


async def _ask(
    runtime: Runtime[RunContext],
    messages: list[dict[str, Any]],
    *,
    node: str,
    limit: int | None,
    what: str,
    **call: Any,
) -> StepResult:
    try:
        completion = await runtime.context.llm.chat(messages, node=node, **call)
    except UpstreamError as exc:
        return StepResult(notes=[f"{node}: {what} failed: {exc.message}"], failed=True)
    text = completion.text
    notes: list[str] = []
    items: list[str] = []
    if limit is not None:
        items = parse_list(text, limit=limit)
        if not items:
            notes.append(f"{node}: no {what} found in {text[:120]!r}")
    elif not strip_think(text).strip():
        notes.append(f"{node}: the {what} came back empty")
    return StepResult(text=text, items=items, usage=completion.usage, notes=notes)


async def observe(
    state: ApproachState, runtime: Runtime[RunContext], *, count: int, node: str = "observe", **call: Any
) -> StepResult:
    """Asks for `count` observations about the task in the last user turn."""
    return await _ask(
        runtime,
        observations_messages(state["messages"], count),
        node=node,
        limit=count,
        what="observations",
        **(call or planning_call(state)),
    )


async def derive(
    state: ApproachState,
    runtime: Runtime[RunContext],
    observations: Sequence[str],
    *,
    count: int,
    node: str = "derive",
    **call: Any,
) -> StepResult:
    """Asks for `count` new observations following from `observations` together."""
    return await _ask(
        runtime,
        derive_messages(state["messages"], observations, count),
        node=node,
        limit=count,
        what="derived observations",
        **(call or planning_call(state)),
    )


async def sketch(
    state: ApproachState,
    runtime: Runtime[RunContext],
    observations: Sequence[str],
    *,
    node: str = "sketch",
    **call: Any,
) -> StepResult:
    """Asks for a natural-language solution plan built on `observations` (or on the task alone)."""
    result = await _ask(
        runtime,
        sketch_messages(state["messages"], observations),
        node=node,
        limit=None,
        what="plan",
        **(call or planning_call(state)),
    )
    result.text = strip_think(result.text)
    return result


# ---- nodes over state keys ----------------------------------------------------------------------------
# Their state is typed as a plain dict on purpose: LangGraph narrows a node's input to the keys of the
# TypedDict it is annotated with, and these read keys that only the using graph's state declares.


def observe_node(*, count: str = "num_observations", key: str = "observations", node: str = "observe") -> PlanNode:
    """A node writing `params[count]` observations to `state[key]` ([] when the call failed)."""

    async def observe_step(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
        n = int((state.get("params") or {})[count])
        result = await observe(state, runtime, count=n, node=node)
        return result.update(**{key: result.items})

    observe_step.__name__ = node
    return observe_step


def derive_node(
    *, source: str = "observations", count: str = "num_derived", key: str = "derived_observations", node: str = "derive"
) -> PlanNode:
    """A node writing `params[count]` observations derived from `state[source]` to `state[key]`;
    no call when there is nothing to derive from or nothing to derive."""

    async def derive_step(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
        n = int((state.get("params") or {})[count])
        given = list(state.get(source) or [])  # type: ignore[call-overload]
        if not given or n <= 0:
            return {key: []}
        result = await derive(state, runtime, given, count=n, node=node)
        return result.update(**{key: result.items})

    derive_step.__name__ = node
    return derive_step


def sketch_node(*, sources: Sequence[str] = ("observations",), key: str = "plan", node: str = "sketch") -> PlanNode:
    """A node writing a natural-language plan built on the observations in `state[s]` for each of
    `sources` to `state[key]` ("" when the call failed)."""

    async def sketch_step(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
        observations = [o for s in sources for o in (state.get(s) or [])]  # type: ignore[call-overload]
        result = await sketch(state, runtime, observations, node=node)
        return result.update(**{key: result.text})

    sketch_step.__name__ = node
    return sketch_step
