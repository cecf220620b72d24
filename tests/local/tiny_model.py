"""A tiny random-weight Llama model, a tokenizer trained here, and peft LoRA adapters, written to disk.

Everything is built in-process: nothing comes from a model hub. The model directory is a normal
Hugging Face directory (config.json, safetensors, tokenizer files), so it loads like a user's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 1 2 3 4 5 6 7 8 9 0 = + - * /",
    "What is two plus two? Two plus two is four. The answer is 4.",
    "Let me think step by step. First, add the numbers. Then, check the result.",
    "Wait, Alternatively, However, Additionally, so therefore the final answer is",
    "Hello! How can I help you today? I am a small model that writes short answers.",
    "<think> reasoning goes here </think> and then the answer follows.",
] * 20

SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinyModel:
    path: Path  # the model directory
    adapters: dict[str, Path]  # adapter name -> peft adapter directory


def build_tokenizer(path: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return fast


def build_tiny_model(root: Path, *, seed: int = 0) -> TinyModel:
    """Writes the model to root/'tiny-llama' and two LoRA adapters to root/'lora-a', root/'lora-b'."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    path = root / "tiny-llama"
    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper than a random init's near-uniform distribution: greedy paths differ by prompt
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(path)
    adapters = {}
    for i, name in enumerate(("lora-a", "lora-b")):
        torch.manual_seed(seed + 100 + i)
        base = LlamaForCausalLM.from_pretrained(path)
        peft_model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        )
        peft_model.save_pretrained(root / name)
        adapters[name] = root / name
    return TinyModel(path=path, adapters=adapters)


# ---- references for the tests: the model run directly, no optigraph code in between --------------


def last_logits(model, ids):  # -> FloatTensor [vocab]
    """The next-token logits after `ids`, from one full forward pass without a cache."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0, -1].float()


def direct_greedy(model, prompt, steps: int, eos: int | None = None) -> list[int]:
    """Greedy tokens after `prompt`, one full forward pass per token (stops after `eos`, included)."""
    ids = list(prompt)
    for _ in range(steps):
        token = int(last_logits(model, ids).argmax())
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt) :]


def hf_greedy(model, prompt, steps: int) -> list[int]:
    """Hugging Face `generate(do_sample=False)` on the prompt alone (ends at end-of-sequence, included)."""
    import torch

    ids = torch.tensor([list(prompt)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            do_sample=False,
            top_p=None,
            top_k=None,
            temperature=None,
        )
    return out[0, len(prompt) :].tolist()


def byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet (transformers' own table): vocabulary piece character -> byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def token_id(tokenizer, entry: dict) -> int:
    """The vocabulary id behind a logprobs entry, found from its bytes (byte-level pieces) or its text
    (special tokens); fails when the entry names no token of the vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = tokenizer.get_vocab()
    piece = "".join(bytes_to_unicode()[b] for b in entry["bytes"])
    if piece in vocab:
        return vocab[piece]
    return vocab[entry["token"]]


def copy_model(source: Path, target: Path, *, chat_template: bool = True) -> Path:
    """A copy of a model directory (another model as far as a cache is concerned); without
    `chat_template` the tokenizer loses its template (the 'role: content' fallback applies)."""
    import json
    import shutil

    shutil.copytree(source, target)
    if not chat_template:
        (target / "chat_template.jinja").unlink(missing_ok=True)
        config_file = target / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config.pop("chat_template", None)
        config_file.write_text(json.dumps(config))
    return target
