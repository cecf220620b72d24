"""An OpenAI-SDK-shaped, synchronous client over a run's LLM, for code that runs in a worker thread
(OptILLM plugin files: `client.chat.completions.create(...)`).

Each call is sent to the event loop that runs the run (`asyncio.run_coroutine_threadsafe`) and goes
through the run's `LLM`: recorded as one of the run's upstream calls under `node`, charged to its
budget, retried, `n` emulated where the backend cannot sample it, on whatever backend serves the run.
The answer is an `openai.types.chat.ChatCompletion` when the openai package is installed (the object
OptILLM plugins are written against), else an attribute-access record with the same fields and
`model_dump()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from optigraph.core.llm import LLM, Completion

# Keyword arguments of the openai SDK's `create` that shape the HTTP request, not the body.
SDK_TRANSPORT_ARGS = frozenset({"extra_headers", "extra_query", "timeout"})
WAIT_SLICE_S = 0.5  # how often a waiting call checks that its run is still going (not a timeout)
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


class ClientClosed(RuntimeError):
    """The run the client belongs to has ended (finished, failed or cancelled): no more calls."""


class Record(Mapping[str, Any]):
    """A JSON object read by attribute (`r.choices[0].message.content`) or by key; a missing field
    reads as None, as the SDK's optional fields do."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self._data.get(name))

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return _plain(self._data)

    dict = model_dump  # the pydantic v1 name some plugins still call

    def __repr__(self) -> str:
        return f"Record({self._data!r})"


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Record(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def completion_document(completion: Completion, *, model: str, run_id: str) -> dict[str, Any]:
    """A chat.completion document for `completion`, complete enough for the SDK's types."""
    raw = completion.raw
    choices = []
    for i, choice in enumerate(completion.choices):
        message = {"role": "assistant", **(choice.get("message") or {})}
        message["role"] = "assistant"
        finish = choice.get("finish_reason")
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": finish if finish in FINISH_REASONS else "stop",
                "logprobs": choice.get("logprobs"),
            }
        )
    usage = completion.usage
    return {
        "id": raw.get("id") or f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": int(raw.get("created") or time.time()),
        "model": raw.get("model") or model,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
        },
    }


def response_object(document: dict[str, Any]) -> Any:
    """`document` as the openai SDK's ChatCompletion when it can be, else as a Record."""
    try:
        from openai.types.chat import ChatCompletion
    except ImportError:  # the openai package is optional; plugins only read fields
        return Record(document)
    try:
        return ChatCompletion.model_validate(document)
    except ValueError:  # an upstream's odd field: the fields are still all there
        return Record(document)


class _Completions:
    def __init__(self, client: SyncChatClient) -> None:
        self._client = client

    def create(self, *, messages: list[dict[str, Any]], model: str | None = None, **kwargs: Any) -> Any:
        """One chat completion through the run's LLM (see the module docstring). `model` is the run's
        model (the one the plugin was given); `stream=True` is refused."""
        return self._client.create(messages=messages, **kwargs)


class _Chat:
    def __init__(self, client: SyncChatClient) -> None:
        self.completions = _Completions(client)


class SyncChatClient:
    """`client.chat.completions.create(...)` from a worker thread, run on `loop` by `llm`."""

    def __init__(self, llm: LLM, loop: asyncio.AbstractEventLoop, *, node: str) -> None:
        self.llm = llm
        self.loop = loop
        self.node = node
        self.chat = _Chat(self)
        self._closed = threading.Event()
        self.errors: list[BaseException] = []  # what the run's LLM raised to the plugin, in order

    def close(self) -> None:
        """Refuse further calls (the run moved on; a thread left running must not spend its budget)."""
        self._closed.set()

    def create(self, *, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self._closed.is_set():
            raise ClientClosed(f"the run of this client has ended; {self.node!r} may not call the model any more")
        if kwargs.get("stream"):
            raise ValueError(f"{self.node!r}: stream=True is not supported by optigraph's plugin client")
        body: dict[str, Any] = {k: v for k, v in kwargs.items() if k not in SDK_TRANSPORT_ARGS and k != "extra_body"}
        body.update(kwargs.get("extra_body") or {})
        body = {k: v for k, v in body.items() if v is not None and k not in ("stream", "stream_options", "model")}
        body["messages"] = list(messages)
        future = asyncio.run_coroutine_threadsafe(self.llm.forward(body, node=self.node), self.loop)
        try:
            completion = self._wait(future)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        return response_object(completion_document(completion, model=self.llm.model, run_id=self.llm.run_id))

    def _wait(self, future: concurrent.futures.Future[Completion]) -> Completion:
        """The call's answer; gives up when the run ends meanwhile (cancelled, or the server stopping),
        so that a worker thread is never left waiting on a loop that will not answer."""
        while True:
            try:
                return future.result(timeout=WAIT_SLICE_S)
            except TimeoutError:
                if self._closed.is_set():
                    future.cancel()
                    raise ClientClosed(f"the run of this client ended while {self.node!r} waited for a call") from None
