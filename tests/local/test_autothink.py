"""autothink on the tiny model: the classifier's log-prob evidence, the budget, the locally derived
steering vector and its hook (on while generating, gone afterwards)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from optigraph.local.decoding import autothink
from optigraph.local.decoding.autothink import (
    CLASSIFY_PREFILL,
    CLASSIFY_PROMPT,
    DECODER,
    LABELS,
    PATTERNS,
    STEERING_QUESTIONS,
    STEERING_SCALE,
    AutoThinkParams,
    classify,
    decoder_layers,
    heuristic_complexity,
    layer_index,
    pattern_weights,
    query_text,
    steered,
    steering_vector,
    thinking_budget,
)

QUERY = "What is two plus two?"


def plain_logits(lm: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([ids])).logits[0].float()


def sequence_logprob(lm: Any, prompt: list[int], label: list[int]) -> float:
    """log p(label | prompt) from one unbatched forward pass over prompt + label."""
    logp = torch.log_softmax(plain_logits(lm, prompt + label), dim=-1)
    return sum(float(logp[len(prompt) - 1 + i, token]) for i, token in enumerate(label))


def classifier_prompt(lm: Any, query: str) -> list[int]:
    return lm.encode_chat([{"role": "user", "content": CLASSIFY_PROMPT.format(query=query)}], prefill=CLASSIFY_PREFILL)


def label_ids(lm: Any, name: str) -> list[int]:
    return list(lm.tokenizer(LABELS[name], add_special_tokens=False)["input_ids"])


def test_heuristic_markers() -> None:
    assert heuristic_complexity("What is the capital of France?") == ("LOW", ())
    assert heuristic_complexity("Solve 3x + 5 = 20 and explain why.") == ("HIGH", ("math", "reasoning"))
    assert heuristic_complexity("Fix this:\n```\ndef f(x): return x\n```") == ("HIGH", ("code",))
    assert heuristic_complexity("tell me a story " * 40)[1] == ("long",)


def test_query_is_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    assert query_text(messages) == "second"
    assert query_text([{"role": "system", "content": "only"}]) == "only"


def test_classifier_evidence_is_the_labels_log_probability(tiny_lm: Any, make_context: Any) -> None:
    found, spent = classify(make_context(), QUERY)
    high, low = label_ids(tiny_lm, "HIGH"), label_ids(tiny_lm, "LOW")
    prompt, baseline = classifier_prompt(tiny_lm, QUERY), classifier_prompt(tiny_lm, autothink.BASELINE_QUERY)
    assert found.logprob_high == pytest.approx(sequence_logprob(tiny_lm, prompt, high), abs=1e-3)
    assert found.logprob_low == pytest.approx(sequence_logprob(tiny_lm, prompt, low), abs=1e-3)
    expected_base = sequence_logprob(tiny_lm, baseline, high) - sequence_logprob(tiny_lm, baseline, low)
    assert found.baseline_margin == pytest.approx(expected_base, abs=1e-3)
    assert found.margin == pytest.approx(found.logprob_high - found.logprob_low - found.baseline_margin, abs=1e-6)
    assert found.label in ("HIGH", "LOW") and spent >= len(prompt) + len(baseline)


def test_the_model_decides_when_its_margin_is_clear_else_the_heuristic(
    make_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = "Solve 3x + 5 = 20."
    monkeypatch.setattr(autothink, "MODEL_MARGIN", 0.0)
    by_model, _ = classify(make_context(), query)
    assert by_model.source == "model" and by_model.label == ("HIGH" if by_model.margin > 0 else "LOW")
    monkeypatch.setattr(autothink, "MODEL_MARGIN", 1e9)
    fallback, _ = classify(make_context(), query)
    assert fallback.source == "heuristic" and fallback.label == "HIGH" and fallback.markers == ("math",)
    assert fallback.margin == pytest.approx(by_model.margin)


def test_thinking_budget_scales_with_max_tokens() -> None:
    assert thinking_budget("HIGH", 5120) == (1024, 4096)
    assert thinking_budget("LOW", 8192) == (256, 1024)  # never above OptILLM's budgets
    assert thinking_budget("HIGH", 1024) == (205, 819)
    assert thinking_budget("LOW", 1024) == (51, 205)
    for max_tokens in (64, 512, 3000):
        assert thinking_budget("HIGH", max_tokens)[1] > thinking_budget("LOW", max_tokens)[1]
        assert thinking_budget("HIGH", max_tokens)[1] < max_tokens  # room is left for the answer


def test_layer_and_strength_resolution() -> None:
    assert layer_index(None, 2) == 1 and layer_index(None, 28) == 16
    assert layer_index(19, 2) == 1 and layer_index(0, 28) == 0  # OptILLM's 19 clamped to a shallow model
    assert set(pattern_weights(3.0).values()) == {2.0}
    weights = pattern_weights({"self_correction": 2.5, "organization": -1.0, "not_a_pattern": 1.0})
    assert weights["self_correction"] == 2.0 and weights["organization"] == 0.0
    assert weights["depth_and_thoroughness"] == 0.0 and set(weights) == set(PATTERNS)


def test_decoder_layers_are_found_through_peft(tiny: Any, tiny_lm: Any) -> None:
    from peft import PeftModel

    assert decoder_layers(tiny_lm.model) is tiny_lm.model.model.layers
    wrapped = PeftModel.from_pretrained(copy.deepcopy(tiny_lm.model), str(tiny.adapters["lora-a"]))
    assert decoder_layers(wrapped) is wrapped.get_base_model().model.layers


def test_steering_vector_is_the_mean_contrast_of_hidden_states(tiny_lm: Any, make_context: Any) -> None:
    pattern = "depth_and_thoroughness"
    vector, spent = steering_vector(make_context(), 0, {**dict.fromkeys(PATTERNS, 0.0), pattern: 1.5})
    assert vector.shape == (tiny_lm.model.config.hidden_size,)
    diffs, norms = [], []
    for question in STEERING_QUESTIONS:
        states = []
        for start in PATTERNS[pattern]:
            ids = tiny_lm.encode_chat([{"role": "user", "content": question}], prefill=start)
            with torch.inference_mode():
                out = tiny_lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            states.append(out.hidden_states[1][0, -1].float())  # the output of decoder layer 0
        diffs.append(states[0] - states[1])
        norms += [float(state.norm()) for state in states]
    direction = torch.stack(diffs).mean(dim=0)
    # the contrast's direction, at STEERING_SCALE of the states' mean norm per unit of strength
    expected = direction / direction.norm() * STEERING_SCALE * (sum(norms) / len(norms)) * 1.5
    assert torch.allclose(vector, expected, atol=1e-4)
    assert spent > 0
    assert steering_vector(make_context(), 0, dict.fromkeys(PATTERNS, 0.0)) == (None, 0)


def test_steering_changes_the_logits_only_while_on(tiny_lm: Any, make_context: Any) -> None:
    ids = make_context().prompt
    before = plain_logits(tiny_lm, ids)
    vector, _ = steering_vector(make_context(), 1, pattern_weights(2.0))
    with steered(tiny_lm.model, 1, vector):
        during = plain_logits(tiny_lm, ids)
    assert not torch.allclose(before, during, atol=1e-3)
    assert torch.equal(plain_logits(tiny_lm, ids), before)
    with pytest.raises(RuntimeError), steered(tiny_lm.model, 1, vector):
        raise RuntimeError("generation failed")
    assert torch.equal(plain_logits(tiny_lm, ids), before)  # removed on errors too


def test_run_reports_its_choices_and_leaves_the_model_as_it_was(tiny_lm: Any, make_context: Any) -> None:
    ids = make_context().prompt
    before = plain_logits(tiny_lm, ids)
    hooks = [dict(layer._forward_hooks) for layer in decoder_layers(tiny_lm.model)]  # transformers' own, if any
    pieces: list[str] = []
    result = DECODER.run(make_context(QUERY, max_tokens=100, emit=pieces.append), AutoThinkParams())
    assert torch.equal(plain_logits(tiny_lm, ids), before)
    assert [dict(layer._forward_hooks) for layer in decoder_layers(tiny_lm.model)] == hooks
    info = result.info
    label = info["classification"]["label"]
    assert (info["min_thinking_tokens"], info["max_thinking_tokens"]) == thinking_budget(label, 100)
    assert info["steering"]["enabled"] and info["steering"]["layer"] == 1 and info["steering"]["vector_norm"] > 0
    assert "".join(pieces) == result.text and result.text.startswith("<think>\n")
    assert result.prompt_tokens > 0  # the classifier and the contrast prompts ran through the model


def test_steering_and_complexity_switches(make_context: Any) -> None:
    params: dict[str, Any] = {"complexity": "high", "max_tokens": 100}
    steered_run = DECODER.run(make_context(seed=4, max_tokens=100), AutoThinkParams(**params))
    plain_run = DECODER.run(make_context(seed=4, max_tokens=100), AutoThinkParams(**params, steering=False))
    assert steered_run.info["classification"] == plain_run.info["classification"]
    assert plain_run.info["classification"]["source"] == "forced"
    assert (plain_run.info["min_thinking_tokens"], plain_run.info["max_thinking_tokens"]) == (20, 80)
    assert plain_run.info["steering"] == {"enabled": False}
    assert steered_run.text != plain_run.text  # same seed: only the steering differs
    ignored = AutoThinkParams.model_validate({"steering_dataset": "codelion/Qwen3-0.6B-pts-steering-vectors"})
    assert ignored.steering  # accepted, nothing is downloaded


def test_a_prompt_too_long_for_the_model_is_classified_by_the_heuristic(tiny_lm: Any, make_context: Any) -> None:
    import dataclasses

    ctx = make_context()
    ctx.lm = dataclasses.replace(tiny_lm, context=40)  # the classifier prompt no longer fits
    found, spent = classify(ctx, "Why is the sky blue?")
    assert (found.source, found.label, found.markers, spent) == ("heuristic", "HIGH", ("reasoning",), 0)
    assert found.margin is None


def test_every_parameter_is_described() -> None:
    assert all(field.description for field in AutoThinkParams.model_fields.values())
