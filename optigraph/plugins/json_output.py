"""`json`: the answer is JSON that matches the request's `response_format`.

`post` reads each answer as JSON (a fenced ```json block or the outermost object/array is accepted)
and validates it against `response_format`'s `json_schema` (or only as a JSON value for
`json_object`). An answer that does not validate is sent back to the model once, with the validation
error, to be repaired; the repaired answer is validated again. An answer that still fails is an
error (502 `invalid_model_output`), never a silently invalid answer. A valid answer is sent as the
bare JSON text. Without `response_format` (or with `text`) the plugin passes answers through.

The wrapped approach answers in one piece (nothing can be streamed before it has been validated).
On the local model `pre` also asks for the JSON in words (the schema in a system message): its
constrained decoding (optigraph/local/grammar.py) makes every finished answer match the schema, and
being told the schema helps a small model fill it with sense. Where a backend has no structured output
at all (`Capabilities.structured_output` false), `pre` takes `response_format` out of what the wrapped
part sends and the words, validation and repair alone make it hold.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.llm import Completion
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import Answer, PluginState
from optigraph.core.usage import add_usage, empty_usage
from optigraph.errors import UpstreamError

REPAIR_PROMPT = (
    "Your previous answer is not valid: {error}\n"
    "Reply with only the corrected JSON value{schema_hint}, no explanation and no code fence."
)
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


class JsonParams(ApproachParams):
    repairs: int = Field(1, ge=0, le=3, description="How many times an invalid answer is sent back for repair.")
    repair_max_tokens: int = Field(1024, ge=1, le=32768, description="max_tokens of a repair call.")


class InvalidModelOutput(UpstreamError):
    """The model's answer could not be made to match the requested format."""

    code = "invalid_model_output"


def schema_of(request: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(whether JSON is asked for, the JSON schema if one is given) from `response_format`."""
    fmt = request.get("response_format") or {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        return True, spec.get("schema") if isinstance(spec, dict) else None
    return kind == "json_object", None


def parse_json(text: str) -> Any:
    """The JSON value in `text`: the whole text, a fenced block, or the outermost {...} or [...]."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if start != -1 and end > start:
            candidates.append(text[start : end + 1])
    error: Exception = ValueError("the answer holds no JSON value")
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError as exc:
            error = exc
    raise ValueError(f"not JSON: {error}")


def check(text: str, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """(the value, None) when `text` is valid, else (None, why not)."""
    try:
        value = parse_json(text)
    except ValueError as exc:
        return None, str(exc)
    if schema is not None:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            return None, f"at {where}: {exc.message}"
        except jsonschema.SchemaError as exc:
            raise UpstreamError(f"response_format's schema is not a valid JSON schema: {exc.message}") from exc
    return value, None


async def _repair(
    state: PluginState,
    runtime: Runtime[RunContext],
    answer: str,
    error: str,
    schema: dict[str, Any] | None,
    max_tokens: int,
) -> Completion:
    hint = f" matching this JSON schema: {json.dumps(schema)}" if schema is not None else ""
    messages = [
        *state["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": REPAIR_PROMPT.format(error=error, schema_hint=hint)},
    ]
    request = state.get("request") or {}
    params = {k: request[k] for k in ("response_format", "seed", "user") if k in request}
    return await runtime.context.llm.chat(messages, node="json.repair", max_tokens=max_tokens, **params)


INSTRUCTION = "Reply with only a JSON value, no prose and no code fence{schema_hint}."


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """On the local model the format is asked for in words as well; on a backend without structured
    output, in words instead of sent."""
    request = state.get("request") or {}
    wanted, schema = schema_of(request)
    caps = runtime.context.llm.caps
    if not wanted or (caps.structured_output and not caps.local):
        return {}
    hint = f", matching this JSON schema: {json.dumps(schema)}" if schema is not None else ""
    system = {"role": "system", "content": INSTRUCTION.format(schema_hint=hint)}
    if caps.structured_output:
        return {
            "messages": [system, *state["messages"]],
            "notes": ["json: the local model's output is constrained to the schema, which it is also told"],
        }
    return {
        "messages": [system, *state["messages"]],
        "request": {k: v for k, v in request.items() if k != "response_format"},
        "private": {"response_format": request["response_format"]},
        "notes": ["json: response_format asked for in a system message (the backend has no structured output)"],
    }


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    kept = (state.get("private") or {}).get("response_format")  # when `pre` took it out of the request
    wanted, schema = schema_of({"response_format": kept} if kept else state.get("request") or {})
    if not wanted:
        return {}
    params = state.get("params") or {}
    answers: list[Answer] = []
    notes: list[str] = []
    usage = empty_usage()
    for i, answer in enumerate(state.get("answers") or []):
        text = message_text(answer.get("message") or {})
        value, error = check(text, schema)
        tries = 0
        while error is not None and tries < int(params.get("repairs", 1)):
            tries += 1
            notes.append(f"json: answer {i} invalid ({error}); repair {tries}")
            repaired = await _repair(state, runtime, text, error, schema, int(params.get("repair_max_tokens", 1024)))
            usage = add_usage(usage, repaired.usage)
            text = repaired.text
            value, error = check(text, schema)
        if error is not None:
            raise InvalidModelOutput(
                f"the model's answer does not match response_format after {tries} repair(s): {error}"
            )
        message = {**(answer.get("message") or {}), "content": json.dumps(value, ensure_ascii=False)}
        answers.append({**answer, "message": message})
    return {"answers": answers, "notes": notes, "usage": usage}


SPEC = PluginSpec(
    name="json",
    description="Makes the answer JSON that validates against response_format's schema, repairing it "
    "with the model when it does not.",
    pre=pre,
    post=post,
    params=JsonParams,
    calls="repairs",
    rounds="repairs",
    serves=frozenset({"response_format"}),
)
