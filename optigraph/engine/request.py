"""The chat-completions request: its schema (for validation and the OpenAPI docs) and the checks
that turn a client mistake into a clear 400 instead of an upstream failure.

The engine forwards the client's own dict, so fields this model does not name are kept."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optigraph.errors import InvalidRequest

# Fields the engine consumes; everything else in the body is forwarded upstream, except OptILLM's
# own `optillm_*` fields, which are meant for the proxy and would be refused by a strict upstream.
CONTROL_KEYS = frozenset(
    {"model", "messages", "n", "stream", "stream_options", "optillm_approach", "optillm_params", "optigraph"}
)
CONTROL_PREFIX = "optillm_"


def forwarded_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The client's fields that go upstream as they are (unknown fields included)."""
    return {k: v for k, v in body.items() if k not in CONTROL_KEYS and not k.startswith(CONTROL_PREFIX)}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class RunLimits(BaseModel):
    """optigraph's per-request options: caps on what one run may spend (the server's settings are the
    defaults and ceilings), and whether the run outlives its client."""

    model_config = ConfigDict(extra="forbid")
    max_upstream_calls: int | None = Field(default=None, ge=1, description="Upstream calls the run may make")
    max_upstream_tokens: int | None = Field(default=None, ge=1, description="Completion tokens the run may use")
    background: bool | None = Field(
        default=None,
        description="Finish the run (and store its answer) even if the client disconnects; by "
        "default a client that goes cancels its run, which stays resumable",
    )


def background_requested(body: dict[str, Any]) -> bool:
    """Whether the (checked) request asked its run to finish even if the client goes."""
    options = body.get("optigraph")
    return isinstance(options, dict) and bool(options.get("background"))


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body plus optigraph's fields. Extra fields are allowed and forwarded."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="Upstream model, optionally prefixed by an approach: `bon-gpt-4o-mini`"
    )
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    optillm_approach: str | None = Field(default=None, description="Approach expression, e.g. `bon&re2` or `moa|bon`")
    optillm_params: dict[str, Any] | None = Field(
        default=None, description='Parameters by approach name: {"bon": {"n": 4}}'
    )
    optigraph: RunLimits | None = Field(default=None, description="optigraph's own options: run limits, background")


_BRANCH_TYPES = frozenset({"str", "int", "float", "bool"})
_BRANCH_PREFIXES = ("list[", "dict[", "function-", "literal[")


def _is_union_branch(part: str) -> bool:
    """Whether a location part names a union branch (`str`, `list[...]`), not a field (`stream`)."""
    return part in _BRANCH_TYPES or part.startswith(_BRANCH_PREFIXES)


_ROLES = frozenset(Message.model_fields["role"].annotation.__args__)  # type: ignore[union-attr]
_NUMBER = (int, float)


def _between(low: float, high: float) -> Any:
    return lambda v: type(v) in _NUMBER and low <= v <= high


def _int_from(low: int) -> Any:
    return lambda v: type(v) is int and v >= low


# The fields of the requests most clients send, each with a check that passes only values the schema
# accepts (exact types, no coercion; None is accepted for all of them, as the schema does).
_PLAIN_FIELDS: dict[str, Any] = {
    "model": lambda v: type(v) is str and v != "",
    "messages": lambda v: type(v) is list and v != [] and all(map(_plain_message, v)),
    "temperature": _between(0, 2),
    "top_p": _between(0, 1),
    "n": _int_from(1),
    "max_tokens": _int_from(1),
    "max_completion_tokens": _int_from(1),
    "stop": lambda v: type(v) is str or (type(v) is list and all(type(s) is str for s in v)),
    "seed": lambda v: type(v) is int,
    "stream": lambda v: type(v) is bool,
    "presence_penalty": _between(-2, 2),
    "frequency_penalty": _between(-2, 2),
    "logprobs": lambda v: type(v) is bool,
    "top_logprobs": lambda v: type(v) is int and 0 <= v <= 20,
    "user": lambda v: type(v) is str,
}
_REQUIRED = ("model", "messages")


def _plain_message(message: Any) -> bool:
    if type(message) is not dict or message.get("role") not in _ROLES:
        return False
    content = message.get("content")
    return content is None or type(content) is str


def _plainly_valid(body: dict[str, Any]) -> bool:
    """Whether `body` holds only fields of `_PLAIN_FIELDS`, the required ones among them, each passing
    its check: such a body is valid without the schema's validation, which costs more than all these
    checks on a passthrough request. Anything else (content parts, tools, a number given as a string)
    goes through the schema, which also words the error."""
    fields = _PLAIN_FIELDS
    for key, value in body.items():
        check = fields.get(key)
        if check is None or (value is not None and not check(value)):
            return False
    return all(body.get(key) is not None for key in _REQUIRED)


def check_request(body: Any, *, max_n: int, max_tokens: int) -> None:
    """Raises InvalidRequest (naming the offending parameter) for a body we must not forward."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_body")
    if _plainly_valid(body):
        _check_limits(
            body.get("n"),
            body.get("max_tokens"),
            body.get("max_completion_tokens"),
            body.get("stop"),
            body.get("top_logprobs"),
            body.get("logprobs"),
            max_n=max_n,
            max_tokens=max_tokens,
        )
        return
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        # drop pydantic's union-branch names ("str", "list[ContentPart]") from the location
        param = ".".join(p for p in loc if not _is_union_branch(p))
        if err.get("type") == "missing":
            message = f"missing required parameter: {param!r}"
        else:
            message = f"invalid value for {param!r}: {err.get('msg')}"
        raise InvalidRequest(
            message,
            param=param or None,
            code="invalid_value" if err.get("type") != "missing" else "missing_required_parameter",
        ) from None
    _check_limits(
        req.n,
        req.max_tokens,
        req.max_completion_tokens,
        req.stop,
        req.top_logprobs,
        req.logprobs,
        max_n=max_n,
        max_tokens=max_tokens,
    )


def _check_limits(
    n: int | None,
    max_tokens_: int | None,
    max_completion_tokens: int | None,
    stop: Any,
    top_logprobs: int | None,
    logprobs: bool | None,
    *,
    max_n: int,
    max_tokens: int,
) -> None:
    """The server's own limits on a request the schema accepts."""
    if n is not None and n > max_n:
        raise InvalidRequest(f"n must be at most {max_n}", param="n", code="invalid_value")
    for key, value in (("max_tokens", max_tokens_), ("max_completion_tokens", max_completion_tokens)):
        if value is not None and value > max_tokens:
            raise InvalidRequest(f"{key} must be at most {max_tokens}", param=key, code="invalid_value")
    if isinstance(stop, list) and len(stop) > 4:
        raise InvalidRequest("stop may hold at most 4 sequences", param="stop", code="invalid_value")
    if top_logprobs is not None and not logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs", code="invalid_value")
