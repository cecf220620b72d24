"""An HTTP backend's capabilities per model: remembered per model name, never one model's for another."""

from __future__ import annotations

from optigraph.backends.openai_http import CAPS_CACHE_SIZE, OpenAIHTTPBackend


def test_each_model_keeps_its_own_capabilities_across_calls() -> None:
    backend = OpenAIHTTPBackend("http://127.0.0.1:9/v1", n_sampling=False)
    reasoning, plain = backend.capabilities("o1-mini"), backend.capabilities("gpt-4o-mini")
    assert reasoning.max_tokens_field == "max_completion_tokens" and not reasoning.temperature
    assert plain.max_tokens_field == "max_tokens" and plain.temperature
    assert not reasoning.n_sampling and not plain.n_sampling  # the operator's statement applies to both
    # asked again (the remembered answer), each model still gets its own
    assert backend.capabilities("o1-mini") == reasoning and backend.capabilities("gpt-4o-mini") == plain


def test_the_remembered_models_stay_bounded() -> None:
    backend = OpenAIHTTPBackend("http://127.0.0.1:9/v1")
    for i in range(CAPS_CACHE_SIZE + 50):  # model names are the client's to choose
        backend.capabilities(f"model-{i}")
    assert len(backend._caps) == CAPS_CACHE_SIZE
    assert backend.capabilities("o3").max_tokens_field == "max_completion_tokens"
