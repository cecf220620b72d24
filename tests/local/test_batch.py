"""Batch (rows over one KV cache) and decode_rows against the tiny model run directly: left-padded
prompts of different lengths, greedy steps, row selection, mixed LoRA adapters, hidden states."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from tiny_model import direct_greedy, hf_greedy, last_logits

from optigraph.local.batch import BASE_ADAPTER, Batch
from optigraph.local.loop import decode_rows

CONTENTS = ["Hello!", "What is two plus two?", "Let me think step by step. First, add the numbers."]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def prompts(tiny_lm: Any) -> list[list[int]]:
    out = [tiny_lm.encode_chat([{"role": "user", "content": c}]) for c in CONTENTS]
    assert len({len(p) for p in out}) == len(out), "the prompts must differ in length (left padding)"
    return out


def greedy_steps(batch: Batch, steps: int) -> list[list[int]]:
    """`steps` greedy tokens per row (end-of-sequence or not)."""
    out: list[list[int]] = [[] for _ in range(batch.rows)]
    for _ in range(steps):
        tokens = batch.logits.argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            out[row].append(token)
        batch.step(tokens)
    return out


def test_prefill_of_different_lengths_then_greedy_steps_equal_hf_generate(
    tiny_lm: Any, prompts: list[list[int]]
) -> None:
    batch = Batch.prefill(tiny_lm.model, prompts, pad_id=tiny_lm.pad_id)
    assert batch.rows == 3 and batch.length == max(len(p) for p in prompts)
    assert batch.logits.shape == (3, tiny_lm.model.config.vocab_size) and batch.logits.dtype == torch.float32
    steps = 12
    generated = greedy_steps(batch, steps)
    assert batch.length == max(len(p) for p in prompts) + steps
    for prompt, tokens in zip(prompts, generated):
        reference = hf_greedy(tiny_lm.model, prompt, steps)
        assert len(reference) == steps and not tiny_lm.eos_ids & set(reference)  # no early end
        assert tokens == reference
    assert len({tuple(g) for g in generated}) == 3, "distinct prompts should give distinct continuations"


def test_logits_equal_a_direct_forward_pass_at_every_step(tiny_lm: Any, prompts: list[list[int]]) -> None:
    batch = Batch.prefill(tiny_lm.model, prompts, pad_id=tiny_lm.pad_id)
    sequences = [list(p) for p in prompts]
    for _ in range(6):
        for row, seq in enumerate(sequences):
            torch.testing.assert_close(batch.logits[row], last_logits(tiny_lm.model, seq), atol=TOLERANCE, rtol=0)
        tokens = batch.logits.argmax(-1)
        for seq, token in zip(sequences, tokens.tolist()):
            seq.append(token)
        batch.step(tokens)


def test_select_duplicates_drops_and_reorders_rows(tiny_lm: Any, prompts: list[list[int]]) -> None:
    batch = Batch.prefill(tiny_lm.model, prompts, pad_id=tiny_lm.pad_id)
    first = greedy_steps(batch, 3)
    batch.select([2, 0, 0])  # row 1 dropped, row 0 twice, order changed
    assert batch.rows == 3
    sequences = [prompts[2] + first[2], prompts[0] + first[0], prompts[0] + first[0]]
    for row, seq in enumerate(sequences):
        torch.testing.assert_close(batch.logits[row], last_logits(tiny_lm.model, seq), atol=TOLERANCE, rtol=0)
    # the two copies of row 0 part ways: one goes on greedily, the other takes its second-best token
    greedy = batch.logits.argmax(-1)
    tokens = greedy.clone()
    tokens[2] = batch.logits[2].topk(2).indices[1]
    assert tokens[1] != tokens[2]
    for seq, token in zip(sequences, tokens.tolist()):
        seq.append(token)
    batch.step(tokens)
    for _ in range(4):
        for row, seq in enumerate(sequences):
            torch.testing.assert_close(batch.logits[row], last_logits(tiny_lm.model, seq), atol=TOLERANCE, rtol=0)
        step = batch.logits.argmax(-1)
        for seq, token in zip(sequences, step.tolist()):
            seq.append(token)
        batch.step(step)
    # each row's continuation is the one of its own prompt, alone
    for seq, origin in zip(sequences[:2], (2, 0)):
        generated = seq[len(prompts[origin]) :]
        assert generated == direct_greedy(tiny_lm.model, prompts[origin], len(generated))
    batch.select([1])  # dropping to one row keeps it right
    torch.testing.assert_close(batch.logits[0], last_logits(tiny_lm.model, sequences[1]), atol=TOLERANCE, rtol=0)
    with pytest.raises(ValueError):
        batch.select([])


def test_hidden_states_are_the_last_layer_of_the_last_token(tiny_lm: Any, prompts: list[list[int]]) -> None:
    batch = Batch.prefill(tiny_lm.model, prompts[:2], pad_id=tiny_lm.pad_id, hidden=True)
    assert batch.hidden.shape == (2, tiny_lm.model.config.hidden_size)
    with torch.inference_mode():
        direct = tiny_lm.model(input_ids=torch.tensor([prompts[1]]), output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(batch.hidden[1], direct, atol=TOLERANCE, rtol=0)
    batch.step([5, 6])
    assert batch.hidden is None  # asked per step
    batch.step([5, 6], hidden=True)
    assert batch.hidden.shape == (2, tiny_lm.model.config.hidden_size)


def test_prefill_rejects_empty_prompts(tiny_lm: Any) -> None:
    with pytest.raises(ValueError):
        Batch.prefill(tiny_lm.model, [], pad_id=tiny_lm.pad_id)
    with pytest.raises(ValueError):
        Batch.prefill(tiny_lm.model, [[1, 2], []], pad_id=tiny_lm.pad_id)


def test_rows_with_different_adapters_in_one_batch(tiny_peft: Any, tiny_lm: Any, prompts: list[list[int]]) -> None:
    """peft mixes adapters per row: each row's logits equal a direct forward pass with its adapter alone."""
    adapters = [BASE_ADAPTER, "lora-a", "lora-b"]
    batch = Batch.prefill(tiny_peft, [prompts[1]] * 3, pad_id=tiny_lm.pad_id, adapters=adapters)
    sequences = [list(prompts[1]) for _ in adapters]
    for _ in range(3):
        for row, adapter in enumerate(adapters):
            if adapter == BASE_ADAPTER:
                with tiny_peft.disable_adapter():
                    expected = last_logits(tiny_peft, sequences[row])
            else:
                tiny_peft.set_adapter(adapter)
                expected = last_logits(tiny_peft, sequences[row])
            torch.testing.assert_close(batch.logits[row], expected, atol=TOLERANCE, rtol=0)
        tokens = batch.logits.argmax(-1)
        for seq, token in zip(sequences, tokens.tolist()):
            seq.append(token)
        batch.step(tokens)
    assert len({tuple(s) for s in sequences}) == 3, "the adapters should change the greedy path"
    batch.select([2, 0])
    assert batch.adapters == ["lora-b", BASE_ADAPTER]


# ---- decode_rows -------------------------------------------------------------------------------


def greedy_pick(logits: Any, _alive: list[int]) -> Any:
    return logits.argmax(-1)


def test_decode_rows_stops_each_row_at_its_limit(tiny_lm: Any, prompts: list[list[int]]) -> None:
    batch = Batch.prefill(tiny_lm.model, prompts, pad_id=tiny_lm.pad_id)
    seen: list[list[int]] = []

    def pick(logits: Any, alive: list[int]) -> Any:
        seen.append(list(alive))
        return logits.argmax(-1)

    results = decode_rows(batch, limits=[2, 0, 5], pick=pick, eos_ids=tiny_lm.eos_ids)
    assert [len(r.tokens) for r in results] == [2, 0, 5]
    assert [r.finish_reason for r in results] == ["length"] * 3
    assert results[0].tokens == direct_greedy(tiny_lm.model, prompts[0], 2)
    assert results[2].tokens == direct_greedy(tiny_lm.model, prompts[2], 5)
    assert seen == [[0, 2], [0, 2], [2], [2], [2]]  # a finished row leaves the batch


def test_decode_rows_ends_a_row_at_end_of_sequence_and_on_after(tiny_lm: Any, prompts: list[list[int]]) -> None:
    first = direct_greedy(tiny_lm.model, prompts[1], 1)[0]
    batch = Batch.prefill(tiny_lm.model, prompts[:2], pad_id=tiny_lm.pad_id)
    # the first token of row 1 counts as end-of-sequence: that row ends at once with no tokens
    results = decode_rows(batch, limits=[3, 3], pick=greedy_pick, eos_ids=frozenset({first}))
    assert results[1].tokens == [] and results[1].finish_reason == "stop"
    expected = direct_greedy(tiny_lm.model, prompts[0], 3)
    if first in expected:  # row 0 meets that token too
        expected = expected[: expected.index(first)]
    assert results[0].tokens == expected
    assert results[0].finish_reason == ("length" if len(expected) == 3 else "stop")

    batch = Batch.prefill(tiny_lm.model, prompts[:2], pad_id=tiny_lm.pad_id)
    calls: list[tuple[int, int]] = []

    def after(row: int, token: int, logits: Any) -> str | None:
        calls.append((row, token))
        assert logits.shape == (tiny_lm.model.config.vocab_size,)
        return "found" if row == 0 and len([c for c in calls if c[0] == 0]) == 2 else None

    results = decode_rows(batch, limits=[10, 4], pick=greedy_pick, eos_ids=frozenset(), after=after)
    assert (len(results[0].tokens), results[0].finish_reason) == (2, "found")
    assert (len(results[1].tokens), results[1].finish_reason) == (4, "length")


def test_decode_rows_cancelled(tiny_lm: Any, prompts: list[list[int]]) -> None:
    cancel = threading.Event()
    batch = Batch.prefill(tiny_lm.model, prompts[:2], pad_id=tiny_lm.pad_id)

    def pick(logits: Any, alive: list[int]) -> Any:
        cancel.set()  # the client goes away after the first token
        return logits.argmax(-1)

    results = decode_rows(batch, limits=[50, 50], pick=pick, eos_ids=frozenset(), cancel=cancel)
    assert [len(r.tokens) for r in results] == [1, 1]
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
