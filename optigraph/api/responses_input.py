"""A Responses API request (POST /v1/responses) translated into a chat-completions body.

The Responses API is served by the chat path: its input items become chat messages, its function
tools chat tools, `text.format` a `response_format`, `max_output_tokens` `max_tokens`. Fields meant
for optigraph (`optillm_approach`, `optillm_params`, `optigraph`) and unknown fields (vendor
extensions such as `seed` or `decoding`) are copied as the chat route would take them, so an approach
is selected exactly as for chat. What has no chat equivalent (built-in tools, file inputs,
`conversation`, `background`) is a 400 that names it, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optigraph.engine.request import _is_union_branch as is_union_branch
from optigraph.errors import InvalidRequest

# Responses fields that have no effect here and are accepted so unmodified clients work:
# `include` asks for extra output (reasoning summaries, logprobs) none of which is produced;
# the others tune OpenAI's own service.
ACCEPTED_NO_EFFECT = frozenset(
    {
        "include",
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "max_tool_calls",
        "top_logprobs",
    }
)
# Fields this module consumes (everything else is copied into the chat body unchanged).
CONSUMED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "store",
        "stream",
        "stream_options",
        "previous_response_id",
        "user",
        "reasoning",
        "background",
        "conversation",
        "prompt",
    }
    | ACCEPTED_NO_EFFECT
)


class ResponsesRequest(BaseModel):
    """The Responses API request body as optigraph reads it (OpenAI's fields plus optigraph's)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="Upstream model, optionally prefixed by an approach: `moa-gpt-4o-mini`"
    )
    input: str | list[dict[str, Any]] = Field(description="A string, or input items: messages, function calls/outputs")
    instructions: str | None = Field(default=None, description="A system message put first (not carried over)")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Function tools")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = Field(default=None, description='{"format": {"type": "json_schema", ...}}')
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = None
    store: bool | None = Field(default=None, description="false: the response cannot be retrieved or continued")
    stream: bool | None = None
    previous_response_id: str | None = Field(default=None, description="Continue the conversation of a response")
    user: str | None = None
    reasoning: dict[str, Any] | None = Field(default=None, description='{"effort": ...}: sent as reasoning_effort')
    optillm_approach: str | None = Field(default=None, description="Approach expression, e.g. `bon&re2`")
    optillm_params: dict[str, Any] | None = None


def check_responses_request(body: Any, *, max_tokens: int) -> ResponsesRequest:
    """The validated request, or a 400 naming the parameter (`max_tokens`: the server's limit)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_body")
    try:
        req = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ()) if not is_union_branch(str(p)))
        missing = err.get("type") == "missing"
        raise InvalidRequest(
            f"missing required parameter: {param!r}" if missing else f"invalid value for {param!r}: {err.get('msg')}",
            param=param or None,
            code="missing_required_parameter" if missing else "invalid_value",
        ) from None
    for name, why in (
        ("background", "background mode is not available; use optigraph.background to finish a run without its client"),
        ("conversation", "conversations are not available; continue a response with previous_response_id"),
        ("prompt", "stored prompt templates are not available"),
    ):
        if body.get(name) not in (None, False):
            raise InvalidRequest(f"{name}: {why}", param=name, code="unsupported_parameter")
    if req.max_output_tokens is not None and req.max_output_tokens > max_tokens:
        raise InvalidRequest(
            f"max_output_tokens must be at most {max_tokens}", param="max_output_tokens", code="invalid_value"
        )
    return req


def _text_of(parts: list[Any], param: str) -> list[dict[str, Any]]:
    """Responses content parts as chat content parts (text and images)."""
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and part.get("image_url"):
            image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
            out.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported: use input_text, output_text or input_image "
                "with an image_url",
                param=f"{param}[{i}].type",
                code="unsupported_parameter",
            )
    return out


def _content(content: Any, *, role: str, param: str) -> str | list[dict[str, Any]]:
    """A message's content for chat: a string when it is text only (parts joined for the assistant)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list of content parts", param=param)
    parts = _text_of(content, param)
    if all(p["type"] == "text" for p in parts) and (len(parts) == 1 or role == "assistant"):
        return "".join(p["text"] for p in parts)
    return parts


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    for key in ("call_id", "name"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidRequest(f"a function_call item needs {key}", param=f"{param}.{key}")
    arguments = item.get("arguments")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": arguments if isinstance(arguments, str) else "{}"},
    }


def _tool_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise InvalidRequest("a function_call_output item needs call_id", param=f"{param}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(p["text"] for p in _text_of(output, f"{param}.output") if p["type"] == "text")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output if isinstance(output, str) else ""}


ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant"})


def input_messages(input_: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages of a Responses `input`: a string is one user message; items map one by one,
    consecutive function calls joining the assistant message before them. Reasoning items are dropped
    (nothing here produces or reads them)."""
    if isinstance(input_, str):
        return [{"role": "user", "content": input_}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(input_):
        param = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise InvalidRequest(f"unknown message role {role!r}", param=f"{param}.role", code="invalid_value")
            content = _content(item.get("content"), role=role, param=f"{param}.content")
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_tool_output(item, param))
        elif kind == "reasoning":
            continue
        else:
            raise InvalidRequest(
                f"input item type {kind!r} is not supported: use message, function_call or function_call_output",
                param=f"{param}.type",
                code="unsupported_parameter",
            )
    if not messages:
        raise InvalidRequest("input holds no message", param="input", code="invalid_value")
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses function tools (`{"type": "function", "name", ...}`) as chat tools."""
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequest(
                f"tool type {tool.get('type')!r} is not supported: only function tools (with a name) are",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )
        function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        for key in ("description", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    """`auto`/`none`/`required` as they are; `{"type": "function", "name"}` in the chat shape."""
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        "tool_choice must be auto, none, required or a function", param="tool_choice", code="unsupported_parameter"
    )


def response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    """`text.format` as a chat `response_format` (None for plain text)."""
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("a json_schema format needs a name and a schema", param="text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        "text.format type must be text, json_object or json_schema", param="text.format.type", code="invalid_value"
    )


def chat_body(req: ResponsesRequest, body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions body of a Responses request; `history` is the conversation of
    `previous_response_id` (empty without one), put after the instructions and before the input."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    messages += history + input_messages(req.input)
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in CONSUMED}  # optillm_*, optigraph, vendor fields
    out.update(model=req.model, messages=messages)
    if req.tools:
        out["tools"] = chat_tools(req.tools)
    if req.tool_choice is not None:
        out["tool_choice"] = chat_tool_choice(req.tool_choice)
    if req.parallel_tool_calls is not None and req.tools:
        out["parallel_tool_calls"] = req.parallel_tool_calls
    if req.text is not None and (fmt := response_format(req.text)) is not None:
        out["response_format"] = fmt
    for source, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if getattr(req, source) is not None:
            out[target] = getattr(req, source)
    if req.user is not None:
        out["user"] = req.user
    if req.reasoning and req.reasoning.get("effort"):
        out["reasoning_effort"] = req.reasoning["effort"]
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the usage of response.completed
    return out
