"""The local backend: models on this machine behind the OpenAI chat-completions shape.

Model names are `[local/]base[+adapter...]` (see optigraph/local/models.py); a request's model name may
only name what the server's configuration offers (optigraph/local/names.py). The work runs on one
worker thread (optigraph/local/worker.py) that batches requests arriving together; this module only
turns request bodies into jobs and results back into OpenAI responses and chunks.

Body fields it reads: messages, max_tokens / max_completion_tokens, temperature, top_p, n, stop, seed,
logprobs, top_logprobs, active_adapter, decoding (+ the chosen strategy's own fields), reasoning_effort,
response_format (json_object and json_schema by constrained decoding, optigraph/local/grammar.py).
It refuses (400) tools, functions and a tool_choice other than none/auto: it cannot call tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from optigraph.core.backend import Capabilities
from optigraph.errors import InvalidRequest, OptigraphError, UpstreamError

T = TypeVar("T")

DEFAULT_MAX_TOKENS = 512
MAX_N = 64
MAX_TOP_LOGPROBS = 20
BASE_NAMES = frozenset({"none", "base"})  # active_adapter values that mean "no adapter"


@dataclass(frozen=True)
class LocalRequest:
    messages: list[dict[str, str]]
    max_tokens: int | None  # None: not given
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    logprobs: bool
    top_logprobs: int
    active_adapter: str | None
    decoding: str | None
    decoding_params: BaseModel | None
    explicit: frozenset[str]  # the fields the client set
    json: bool = False  # response_format asks for JSON: constrained decoding
    schema: dict[str, Any] | None = None  # ... matching this schema (None: any JSON object)
    prompt: str | None = None  # a legacy completion's raw prompt (no chat template), instead of messages


def _number(body: dict[str, Any], name: str, default: Any, low: float, high: float, kind: type = float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int if kind is int else int | float)
        or not low <= value <= high
    ):
        raise InvalidRequest(
            f"{name} must be {'an integer' if kind is int else 'a number'} between {low} and {high}", param=name
        )
    return kind(value)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                raise InvalidRequest("the local model accepts text content only", param="messages")
            parts.append(str(part.get("text") or ""))
        return "\n".join(parts)
    raise InvalidRequest("message content must be a string or a list of text parts", param="messages")


def _decoding(body: dict[str, Any]) -> tuple[str | None, BaseModel | None]:
    name = body.get("decoding")
    if name is None or name == "none":
        return None, None
    from optigraph.local.decoding.registry import DECODERS

    if not isinstance(name, str) or name not in DECODERS:
        raise InvalidRequest(
            f"unknown decoding {name!r}: one of {', '.join(sorted(DECODERS))}", param="decoding", code="invalid_value"
        )
    model = DECODERS[name].params
    try:
        return name, model.model_validate({k: v for k, v in body.items() if k in model.model_fields})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{name}: {field}: {first['msg']}", param=field, code="invalid_value") from exc


def refuse_unsupported(body: dict[str, Any], *, structured: bool | None = None) -> None:
    """A 400 naming the field for what the local model cannot honour: tool calling, and structured output
    where constrained decoding is not installed. `tool_choice` "none" or "auto" (no tools: nothing to
    call) and `response_format` {"type": "text"} (what it returns anyway) are fine. `structured`: whether
    the backend constrains output (default: whether outlines-core is installed here)."""
    for name in ("tools", "functions"):
        if body.get(name):
            raise InvalidRequest(
                f"the local model does not support tool calling: remove {name}",
                param=name,
                code="unsupported_parameter",
            )
    for param in ("tool_choice", "function_call"):
        if body.get(param) not in (None, "none", "auto"):
            raise InvalidRequest(
                f"the local model does not support tool calling: {param} must be absent, 'none' or 'auto'",
                param=param,
                code="unsupported_parameter",
            )
    from optigraph.local.grammar import available, schema_of

    wanted, _ = schema_of(body.get("response_format"))
    if wanted and not (available() if structured is None else structured):
        raise InvalidRequest(
            "the local model constrains its output to JSON only with outlines-core installed "
            "(pip install 'optigraph[local]'): response_format must be text here",
            param="response_format",
            code="unsupported_parameter",
        )


def parse_request(body: dict[str, Any]) -> LocalRequest:
    """Checks the fields the local model uses and refuses those it cannot honour; others are ignored."""
    refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages must be a non-empty list of messages", param="messages")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("stop must be a string or a list of strings", param="stop")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidRequest("logprobs must be a boolean", param="logprobs")
    top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, int)
    if top and not logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs", code="invalid_value")
    adapter = body.get("active_adapter")
    if adapter is not None and not isinstance(adapter, str):
        raise InvalidRequest("active_adapter must be the name of an adapter in the model name", param="active_adapter")
    max_tokens = _number(body, "max_completion_tokens", None, 1, 1 << 20, int)
    decoding, params = _decoding(body)
    n = _number(body, "n", 1, 1, MAX_N, int)
    if decoding is not None and n > 1:
        raise InvalidRequest(f"decoding {decoding!r} returns one choice: n must be 1", param="n")
    if decoding is not None and logprobs:
        raise InvalidRequest(f"logprobs are not available with decoding {decoding!r}", param="logprobs")
    from optigraph.local.grammar import schema_of

    wanted, schema = schema_of(body.get("response_format"))
    if decoding is not None and wanted:
        raise InvalidRequest(
            f"decoding {decoding!r} cannot constrain its output: response_format must be text with it",
            param="response_format",
            code="unsupported_parameter",
        )
    return LocalRequest(
        messages=[
            {
                "role": "system" if m.get("role") == "developer" else str(m.get("role") or "user"),
                "content": _text(m.get("content")),
            }
            for m in messages
        ],
        max_tokens=max_tokens or _number(body, "max_tokens", None, 1, 1 << 20, int),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        n=n,
        stop=tuple(s for s in stops if s),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 64) - 1, int),
        logprobs=bool(logprobs),
        top_logprobs=top,
        active_adapter=adapter,
        decoding=decoding,
        decoding_params=params,
        explicit=frozenset(k for k, v in body.items() if v is not None),
        json=wanted,
        schema=schema,
    )


def parse_prompt_request(body: dict[str, Any]) -> LocalRequest:
    """A legacy completion (POST /v1/completions): one prompt string, sampled as it is (no chat
    template). What only a chat or the upstream API offers is refused, naming the field."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("the local model takes one non-empty prompt string", param="prompt", code="invalid_value")
    for name in ("suffix", "echo", "logprobs", "best_of", "decoding"):
        if body.get(name) not in (None, False, 1 if name == "best_of" else None):
            raise InvalidRequest(
                f"{name} is not supported for completions on the local model",
                param=name,
                code="unsupported_parameter",
            )
    chat = {k: v for k, v in body.items() if k not in ("prompt", "suffix", "echo", "logprobs", "best_of")}
    return replace(
        parse_request({**chat, "messages": [{"role": "user", "content": prompt}]}), messages=[], prompt=prompt
    )


class LocalBackend:
    """Models on this machine: a bounded cache of loaded models and one batching worker thread."""

    name = "local"

    def __init__(
        self,
        default_model: str = "smollm2",
        *,
        models_dir: Path | None = None,
        max_models: int = 2,
        dtype: str = "float32",
        batch_window_ms: float = 5.0,
        max_batch_rows: int = 32,
        threads: int = 0,
    ) -> None:
        from optigraph.local.cache import ModelCache
        from optigraph.local.models import parse_spec
        from optigraph.local.worker import LocalWorker

        self.models_dir = models_dir
        self.default_model = default_model
        self.default_spec = parse_spec(default_model, models_dir)  # a missing default model fails at start
        self.cache = ModelCache(max_models=max_models, dtype=dtype)
        self.worker = LocalWorker(
            self.cache, batch_window_s=batch_window_ms / 1000.0, max_batch_rows=max_batch_rows, threads=threads
        )

    # ---- names ---------------------------------------------------------------------------------

    def spec(self, model: str | None) -> Any:
        """The ModelSpec of a client's model name (`local` or empty: the default model): a built-in name,
        the default model, or a name inside the models directory (optigraph/local/names.py); NotFound
        otherwise, the same whether or not a file exists there."""
        from optigraph.local.names import client_spec

        if not model or model.lower() in ("local", "local/"):
            return self.default_spec
        return client_spec(model, configured=self.default_model, default=self.default_spec, models_dir=self.models_dir)

    def capabilities(self, model: str) -> Capabilities:
        from optigraph.local.grammar import available

        return Capabilities(n_sampling=True, logprobs=True, streaming=True, local=True, structured_output=available())

    @property
    def status(self) -> str:
        """The default model's state: `not loaded`, `loading`, `ready`, `evicted` or `failed: <why>`."""
        return self.cache.state(self.default_spec.base)

    def describe(self) -> list[dict[str, Any]]:
        """The loaded models (for /health)."""
        return self.cache.describe()

    async def warmup(self, model: str | None = None) -> None:
        """Loads a model now (at server start, in a background task) instead of on first use."""
        await self.worker.call(self.spec(model), lambda lm: None)

    async def run(self, fn: Callable[[Any], T], model: str | None = None) -> T:
        """`fn(loaded model)` on the worker thread, after earlier work (loads the model first if needed)."""
        return await self.worker.call(self.spec(model), fn)

    # ---- requests ------------------------------------------------------------------------------

    def _adapter(self, spec: Any, lm: Any, active: str | None) -> str | None:
        """The peft adapter of a request's rows: `active_adapter`, else the last named in the model name."""
        if active is None:
            return lm.row_adapter(spec.default_adapter)
        if active.lower() in BASE_NAMES:
            return lm.row_adapter(None)
        for name, path in spec.adapters:
            if active in (name, str(path)) or Path(active).name == name:
                return lm.row_adapter(name)
        names = ", ".join(name for name, _ in spec.adapters) or "none loaded"
        raise InvalidRequest(
            f"active_adapter {active!r} is not an adapter of this model name ({names}); add it as base+adapter",
            param="active_adapter",
            code="adapter_not_found",
        )

    def _prompt(self, lm: Any, req: LocalRequest) -> list[int]:
        if req.prompt is not None:
            prompt = list(lm.tokenizer(req.prompt)["input_ids"])
        else:
            prompt = lm.encode_chat(req.messages)
        if len(prompt) >= lm.context:
            raise InvalidRequest(
                f"the prompt has {len(prompt)} tokens; the model's context holds {lm.context}",
                param="messages",
                code="context_length_exceeded",
            )
        return prompt

    async def _generate(self, body: dict[str, Any], req: LocalRequest, on_delta: Any = None) -> tuple[int, list[Any]]:
        """(prompt tokens, choices) of a standard generation."""
        from optigraph.local.generate import GenerateJob
        from optigraph.local.sampling import Sampling, make_generator

        spec = self.spec(body.get("model"))
        cancel = threading.Event()
        seen: dict[str, int] = {}

        def prepare(lm: Any) -> GenerateJob:
            prompt = self._prompt(lm, req)
            seen["prompt"] = len(prompt)
            return GenerateJob(
                prompt=prompt,
                n=req.n,
                max_tokens=req.max_tokens or DEFAULT_MAX_TOKENS,
                sampling=Sampling(temperature=req.temperature, top_p=req.top_p),
                generator=make_generator(req.seed),
                stop=req.stop,
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs,
                adapter=self._adapter(spec, lm, req.active_adapter),
                grammar=lm.grammar(req.schema) if req.json else None,
                cancel=cancel,
                on_delta=on_delta,
            )

        try:
            choices = await self.worker.generate(spec, prepare)
        except OptigraphError:
            raise
        except Exception as exc:
            raise UpstreamError(f"local generation failed: {exc}") from exc
        finally:
            cancel.set()  # a cancelled request stops its rows at the next token
        return seen["prompt"], choices

    async def _decode(
        self, body: dict[str, Any], req: LocalRequest, emit: Callable[[str], None] | None
    ) -> tuple[int, Any]:
        """(prompt tokens, DecodeResult) of a decoding strategy."""
        from optigraph.local.decoding.base import DecodeContext
        from optigraph.local.decoding.registry import DECODERS
        from optigraph.local.sampling import Sampling, make_generator

        spec = self.spec(body.get("model"))
        decoder = DECODERS[req.decoding or ""]
        cancel = threading.Event()

        def run(lm: Any) -> tuple[int, Any]:
            prompt = self._prompt(lm, req)
            adapter = self._adapter(spec, lm, req.active_adapter)
            ctx = DecodeContext(
                lm=lm,
                messages=req.messages,
                prompt=prompt,
                adapter=adapter,
                max_tokens=req.max_tokens,
                sampling=Sampling(temperature=req.temperature, top_p=req.top_p),
                generator=make_generator(req.seed),
                cancel=cancel,
                emit=emit,
                explicit=req.explicit,
            )
            with _active_adapter(lm, adapter):
                return len(prompt), decoder.run(ctx, req.decoding_params)

        try:
            return await self.worker.call(spec, run)
        except OptigraphError:
            raise
        except Exception as exc:
            raise UpstreamError(f"local decoding {req.decoding!r} failed: {exc}") from exc
        finally:
            cancel.set()

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        """One chat completion with `n` choices, as an OpenAI response dict."""
        req = parse_request(body)
        response = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.default_model,
        }
        if req.decoding is not None:
            prompt_tokens, result = await self._decode(body, req, None)
            message = {"role": "assistant", "content": result.text}
            return {
                **response,
                "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
                "usage": _usage(prompt_tokens + result.prompt_tokens, result.completion_tokens),
                "optigraph_decoding": {"strategy": req.decoding, **result.info},
            }
        prompt_tokens, choices = await self._generate(body, req)
        return {
            **response,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": {"content": c.logprobs, "refusal": None} if req.logprobs else None,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, sum(c.tokens for c in choices)),
        }

    async def complete_text(self, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy completion (`text_completion`) of a raw prompt, with `n` choices."""
        req = parse_prompt_request(body)
        prompt_tokens, choices = await self._generate(body, req)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or self.default_model,
            "choices": [
                {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, sum(c.tokens for c in choices)),
        }

    async def stream_text(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A legacy completion's chunks (`text_completion` objects) as tokens are generated."""
        req = parse_prompt_request(body)
        async for chunk in self._stream(body, req):
            out = {**chunk, "object": "text_completion", "id": "cmpl-" + chunk["id"].removeprefix("chatcmpl-")}
            if chunk["choices"]:
                c = chunk["choices"][0]
                out["choices"] = [
                    {
                        "index": c["index"],
                        "text": c["delta"].get("content") or "",
                        "finish_reason": c["finish_reason"],
                        "logprobs": None,
                    }
                ]
            yield out

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Chunks as tokens are generated. An error before the first token raises before any chunk."""
        async for chunk in self._stream(body, parse_request(body)):
            yield chunk

    async def _stream(self, body: dict[str, Any], req: LocalRequest) -> AsyncIterator[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str, list[Any]] | None] = asyncio.Queue()

        def put(event: tuple[int, str, list[Any]]) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone
                pass

        if req.decoding is not None:
            task: asyncio.Future[Any] = asyncio.ensure_future(self._decode(body, req, lambda text: put((0, text, []))))
        else:
            task = asyncio.ensure_future(self._generate(body, req, lambda i, text, entries: put((i, text, entries))))
        task.add_done_callback(lambda _: events.put_nowait(None))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or self.default_model,
        }

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, entries: Any = None) -> dict[str, Any]:
            logprobs = {"content": entries or [], "refusal": None} if req.logprobs and finish is None else None
            out = {**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
            return {**out, "usage": None} if include_usage else out

        started: set[int] = set()
        sent: dict[int, str] = {}
        try:
            while (event := await events.get()) is not None:
                index, text, entries = event
                delta: dict[str, Any] = {"content": text}
                if index not in started:
                    started.add(index)
                    delta = {"role": "assistant", **delta}
                sent[index] = sent.get(index, "") + text
                yield chunk(index, delta, entries=entries)
            if req.decoding is not None:
                prompt_tokens, result = task.result()
                finals = [(result.text, result.finish_reason)]
                usage = _usage(prompt_tokens + result.prompt_tokens, result.completion_tokens)
            else:
                prompt_tokens, choices = task.result()
                finals = [(c.text, c.finish_reason) for c in choices]
                usage = _usage(prompt_tokens, sum(c.tokens for c in choices))
            for index, (text, finish) in enumerate(finals):
                rest = text[len(sent.get(index, "")) :] if text.startswith(sent.get(index, "")) else ""
                if rest or index not in started:  # strategies that decide at the end send their answer here
                    yield chunk(index, {**({"role": "assistant"} if index not in started else {}), "content": rest})
                yield chunk(index, {}, finish)
            if include_usage:
                final = {**base, "choices": [], "usage": usage}
                if req.decoding is not None:
                    final["optigraph_decoding"] = {"strategy": req.decoding, **result.info}
                yield final
        finally:
            if not task.done():
                task.cancel()  # the client went away: the job's cancel event stops its rows

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        models = [{"id": self.default_model, "object": "model", "owned_by": "optigraph-local"}]
        models += [
            {"id": m["id"], "object": "model", "owned_by": "optigraph-local"}
            for m in self.describe()
            if m["id"] != self.default_spec.base.id
        ]
        return models

    async def aclose(self) -> None:
        """Stops the worker thread (a generation in progress ends with an error) and waits for it."""
        await asyncio.to_thread(self.worker.close)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@contextlib.contextmanager
def _active_adapter(lm: Any, adapter: str | None) -> Iterator[None]:
    """Makes `adapter` the peft model's active adapter while a decoding strategy runs (alone on the worker)."""
    from optigraph.local.batch import BASE_ADAPTER

    if adapter is None:
        yield
    elif adapter == BASE_ADAPTER:
        with lm.model.disable_adapter():
            yield
    else:
        lm.model.set_adapter(adapter)
        yield
