"""Local inference: models loaded on this machine (transformers + peft), batched token-by-token decoding,
logprobs, and the logits-level decoding strategies an HTTP upstream cannot offer.

Layers, bottom up:
- `batch.Batch`: rows decoded together over one KV cache (prefill, step, select rows).
- `sampling`, `text`: choosing tokens and turning them back into text (stop sequences, streaming).
- `generate`: standard chat generation for several requests at once (n, stop, seed, logprobs).
- `decoding/`: one module per decoding strategy (cot_decoding, entropy_decoding, thinkdeeper, deepconf, autothink).
- `models`, `cache`: finding and loading models and LoRA adapters; a bounded LRU of loaded models.
- `worker`: the one thread that owns the models and batches requests that arrive together.
The OpenAI-facing side is `optigraph.backends.local.LocalBackend`.
"""
