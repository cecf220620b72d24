"""Rows of token sequences decoded together, one token per step, over one KV cache.

Every local generation builds on this: standard sampling, n samples of one prompt, several requests
at once, and the decoding strategies. Rows may start from different prompts (left padded), be
duplicated after the prefill (n samples share their prompt's prefill) and be dropped when they finish
(a finished row stops costing compute). Use on the model's worker thread only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


class Batch:
    """The decoding state of `rows` sequences: after `prefill` and each `step`, `logits` holds the next-token
    logits of every row (float32, shape [rows, vocab])."""

    def __init__(
        self,
        model: Any,
        cache: Any,
        mask: Any,
        positions: Any,
        logits: Any,
        adapters: list[str] | None,
        hidden: Any = None,
        cache_arg: str = "past_key_values",
    ) -> None:
        self.model = model
        self.cache_arg = cache_arg
        self.cache = cache
        self.mask = mask  # [rows, length]: 0 over left padding
        self.positions = positions  # [rows]: position of each row's last token
        self.logits = logits
        self.adapters = adapters  # peft adapter per row, or None when the model has no adapters
        self.hidden = hidden  # [rows, hidden] last hidden state, when asked for

    @classmethod
    def prefill(
        cls,
        model: Any,
        prompts: Sequence[Sequence[int]],
        *,
        pad_id: int,
        adapters: Sequence[str] | None = None,
        hidden: bool = False,
    ) -> Batch:
        """Runs the prompts (left padded to one length) through the model in one forward pass."""
        import torch
        from transformers import DynamicCache

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every row needs a non-empty prompt")
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        names = list(adapters) if adapters is not None else None
        cache_arg = _cache_argument(model)
        logits, last = _forward(model, ids, mask, positions, cache, names, hidden, cache_arg)
        return cls(model, cache, mask, positions[:, -1], logits, names, last, cache_arg)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        """Tokens per row so far, padding included (the KV cache length)."""
        return int(self.mask.shape[1])

    def step(self, tokens: Any, *, hidden: bool = False) -> None:
        """Appends one token to every row (a LongTensor [rows] or a list) and computes the next logits."""
        import torch

        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(self.rows, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        self.positions = self.positions + 1
        self.logits, self.hidden = _forward(
            self.model, ids, self.mask, self.positions.unsqueeze(1), self.cache, self.adapters, hidden, self.cache_arg
        )

    def select(self, rows: Sequence[int]) -> None:
        """Keeps these rows in this order; a row may appear several times (copies share their past)."""
        import torch

        if not rows:
            raise ValueError("select needs at least one row; drop the batch instead")
        index = torch.tensor(list(rows), dtype=torch.long)
        self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.logits = self.logits.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)
        if self.adapters is not None:
            self.adapters = [self.adapters[i] for i in rows]

    @property
    def can_extend(self) -> bool:
        """Whether other rows can join (a plain growing KV cache; sliding-window or quantised caches cannot)."""
        layers = getattr(self.cache, "layers", None)
        return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)

    def extend(self, other: Batch) -> None:
        """Appends `other`'s rows (prefilled separately, from the same model) to this batch, between steps.

        The shorter side is left-padded in the KV cache and the attention mask, so every row keeps its
        own positions and sees only its own tokens. Check `can_extend` first."""
        import torch

        own_rows = self.rows
        if self.length < other.length:
            self._pad_left(other.length - self.length)
        elif other.length < self.length:
            other._pad_left(self.length - other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, other.mask])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.hidden = (
            torch.cat([self.hidden, other.hidden]) if self.hidden is not None and other.hidden is not None else None
        )
        if self.adapters is not None or other.adapters is not None:
            self.adapters = (self.adapters or [BASE_ADAPTER] * own_rows) + (
                other.adapters or [BASE_ADAPTER] * other.rows
            )

    def _pad_left(self, count: int) -> None:
        import torch.nn.functional as F

        for layer in self.cache.layers:  # [rows, heads, length, head_dim]: pad the length on the left
            layer.keys = F.pad(layer.keys, (0, 0, count, 0))
            layer.values = F.pad(layer.values, (0, 0, count, 0))
        self.mask = F.pad(self.mask, (count, 0))


def _cache_argument(model: Any) -> str:
    """The name under which this model's forward takes the KV cache (`cache` in newer transformers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _forward(
    model: Any,
    ids: Any,
    mask: Any,
    positions: Any,
    cache: Any,
    adapters: list[str] | None,
    hidden: bool,
    cache_arg: str,
) -> tuple[Any, Any]:
    import torch

    extra: dict[str, Any] = {"adapter_names": adapters} if adapters is not None else {}
    extra[cache_arg] = cache
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=hidden,
            logits_to_keep=1,
            **extra,
        )
    last = out.hidden_states[-1][:, -1, :].float() if hidden else None
    return out.logits[:, -1, :].float(), last
