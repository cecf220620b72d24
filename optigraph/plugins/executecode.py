"""`executecode`: the Python in the request, or in the model's answer, runs in the sandbox and its
output is fed back to the model.

- `pre`: when the last user turn holds fenced code blocks labelled `python` (or `py`, `python3`),
  they run in the sandbox as one program (in order, like the cells of one notebook) and what it
  printed, or how it failed (the user may be asking why it fails), is added to that turn after the
  question, so whatever the plugin wraps answers knowing the results.
- `post`: when an answer holds such blocks (the model wrote code to compute its answer), they run
  the same way; when the program succeeds (exit 0 and it printed something), the model is asked once
  more, with the conversation, its answer and the program's output, for the final answer (node
  `executecode.answer`). If that answer holds code again, it runs too, up to `max_rounds` rounds.
  A program that failed, timed out, was refused or printed nothing leaves the answer as the model
  wrote it.

Everything runs in `optigraph.sandbox` (separate process, time and memory limits, no network, only a
temp dir) at the server's sandbox level, and fails closed: when the sandbox cannot put in force a
layer that level requires, nothing runs, and nothing is said to the model about an output that does
not exist: the conversation and the answers stay as they were. Every run, and every reason a
program was not run or an answer was kept, is in the run's notes (and, for `pre`, its record in the
plugin's private state), checkpointed with the run.

OptILLM's plugin of this name runs model code in a bare Jupyter kernel on the server; here the same
idea goes through the sandbox and keeps the conversation's messages (roles, fields, non-text parts)
intact. Only blocks labelled Python run, never unlabelled ones (a shell command is not run as Python).
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, message_text, replace_last_user
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import Answer, PluginState
from optigraph.core.usage import add_usage, empty_usage
from optigraph.nodes.common import generation_params
from optigraph.nodes.execute import (
    Execution,
    code_blocks,
    execute,
    failure_report,
    unavailable,
)

PYTHON_LABELS = frozenset({"python", "python3", "py", "py3"})
# Client fields the follow-up call does not forward: it answers in text, once.
NOT_FORWARDED = ("tools", "tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs")

REQUEST_OUTPUT = """[The Python code above was run in a sandbox. {what}]
```
{output}
```"""

FOLLOW_UP = """Your Python code was run in a sandbox (Python 3, no network, no files). What it printed:
```
{output}
```
Using this output, give your final answer to the question. Do not repeat the code; if the output \
shows the code was wrong, say so and correct the answer."""


class ExecuteCodeParams(ApproachParams):
    timeout_s: float = Field(10.0, gt=0, le=120, description="Wall-clock limit of one program run, in seconds.")
    memory_mb: int = Field(512, ge=128, le=4096, description="Address-space limit of one program run, in MiB.")
    max_output_chars: int = Field(
        4000, ge=100, le=50_000, description="Characters of a program's output shown to the model (the last ones)."
    )
    max_rounds: int = Field(
        1,
        ge=0,
        le=5,
        description="Per answer: how many times code in the model's answer is run and the model "
        "asked again with its output (0: only the request's code runs).",
    )
    run_request_code: bool = Field(True, description="Run the Python blocks of the last user turn (`pre`).")


def python_program(text: str) -> str | None:
    """The Python-labelled fenced blocks of `text` joined in order as one program, or None when it has none."""
    blocks = [code for lang, code in code_blocks(text) if lang in PYTHON_LABELS and code.strip()]
    return "\n".join(block.rstrip("\n") for block in blocks) if blocks else None


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else f"[... {len(text) - limit} characters cut ...]\n{text[-limit:]}"


async def _run(
    code: str, params: dict[str, Any], runtime: Runtime[RunContext], *, node: str, attempt: int
) -> tuple[Execution, list[str]]:
    update = await execute(
        code,
        node=node,
        attempt=attempt,
        level=runtime.context.sandbox_level,
        timeout_s=float(params.get("timeout_s", 10.0)),
        memory_mb=int(params.get("memory_mb", 512)),
    )
    return update["executions"][0], update["notes"]


def request_output(record: Execution, limit: int) -> str | None:
    """What the wrapped part is told about the request's program, or None when it did not run (a
    refusal by a missing layer: nothing ran, so nothing is said about its output)."""
    if unavailable(record):
        return None
    if record.get("ok"):
        return REQUEST_OUTPUT.format(what="Its output:", output=_clip(record.get("stdout") or "", limit))
    kind = record.get("error_kind")
    if kind == "no_output":
        return "[The Python code above was run in a sandbox; it finished without error and printed nothing.]"
    return REQUEST_OUTPUT.format(
        what=f"It did not finish normally ({kind}):", output=_clip(failure_report(record, limit=limit), limit)
    )


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or {}
    if not params.get("run_request_code", True):
        return {}
    question = last_user_text(state["messages"])
    program = python_program(question)
    if program is None:
        return {"notes": ["executecode.pre: no Python block in the request"]}
    record, notes = await _run(program, params, runtime, node="executecode.pre", attempt=1)
    private = {"request_run": record}
    said = request_output(record, int(params.get("max_output_chars", 4000)))
    if said is None:
        notes.append("executecode.pre: the request's code was not run; the conversation is unchanged")
        return {"private": private, "notes": notes}
    messages = replace_last_user(state["messages"], f"{question}\n\n{said}")
    return {"messages": messages, "private": private, "notes": notes}


def _follow_up_params(state: PluginState) -> dict[str, Any]:
    params = generation_params(state)  # type: ignore[arg-type]  (PluginState has the `request` it reads)
    return {k: v for k, v in params.items() if k not in NOT_FORWARDED}


async def _finish(
    state: PluginState, runtime: Runtime[RunContext], index: int, answer: Answer
) -> tuple[Answer, list[str], dict[str, Any]]:
    """One answer after up to `max_rounds` rounds of running its code and asking the model again."""
    params = state.get("params") or {}
    limit = int(params.get("max_output_chars", 4000))
    notes: list[str] = []
    usage = empty_usage()
    conversation = list(state["messages"])
    for round_ in range(1, int(params.get("max_rounds", 1)) + 1):
        message = answer.get("message") or {}
        if message.get("tool_calls"):
            notes.append(f"executecode.post: answer {index} calls tools; left as it is")
            break
        program = python_program(message_text(message))
        if program is None:
            if round_ == 1:
                notes.append(f"executecode.post: answer {index} holds no Python block")
            break
        record, run_notes = await _run(program, params, runtime, node=f"executecode.post[{index}]", attempt=round_)
        notes += run_notes
        if not record.get("ok"):
            why = "the sandbox could not run it" if unavailable(record) else f"it failed ({record.get('error_kind')})"
            notes.append(f"executecode.post: answer {index} kept as the model wrote it; {why}")
            break
        conversation += [
            {"role": "assistant", "content": message_text(message)},
            {"role": "user", "content": FOLLOW_UP.format(output=_clip(record.get("stdout") or "", limit))},
        ]
        completion = await runtime.context.llm.chat(conversation, node="executecode.answer", **_follow_up_params(state))
        usage = add_usage(usage, completion.usage)
        choice = completion.choices[0]
        answer = {
            **answer,
            "message": {"role": "assistant", "content": completion.text},
            "finish_reason": choice.get("finish_reason") or "stop",
            "logprobs": None,
        }
        notes.append(f"executecode.post: answer {index} rewritten from its program's output (round {round_})")
    return answer, notes, usage


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    # each answer's rounds are independent of the others': they run concurrently
    done = await asyncio.gather(*(_finish(state, runtime, i, a) for i, a in enumerate(state.get("answers") or [])))
    usage = empty_usage()
    for _, _, answer_usage in done:
        usage = add_usage(usage, answer_usage)
    return {"answers": [a for a, _, _ in done], "notes": [n for _, notes, _ in done for n in notes], "usage": usage}


SPEC = PluginSpec(
    name="executecode",
    description="Runs the Python in the request, and the Python the model answers with, in the sandbox "
    "(fails closed) and gives the model the output.",
    pre=pre,
    post=post,
    params=ExecuteCodeParams,
    needs=frozenset({"sandbox"}),
    calls="max_rounds",
    rounds="max_rounds",
)
