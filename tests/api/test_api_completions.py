"""POST /v1/completions and POST /v1/embeddings, passed through to the upstream, driven with the
official openai client (streaming and not)."""

from __future__ import annotations

import openai
import pytest
from api_stack import Stack, closed_port_url, start_stack


def test_completion_passes_through(stack: Stack) -> None:
    done = stack.client().completions.create(
        model="fake-model", prompt="say hi", max_tokens=20, temperature=0.2, extra_body={"top_k": 5}
    )
    assert done.object == "text_completion" and done.choices[0].text == "completion of: say hi"
    assert done.choices[0].finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2, 4)
    sent = stack.log.bodies[0]
    assert sent == {"model": "fake-model", "prompt": "say hi", "max_tokens": 20, "temperature": 0.2, "top_k": 5}
    assert stack.log.headers[0]["authorization"] == "Bearer client-key"  # the client's key, as for chat


def test_completion_streams_chunk_by_chunk(stack: Stack) -> None:
    chunks = list(stack.client().completions.create(model="fake-model", prompt="stream it", stream=True))
    assert [c.choices[0].text for c in chunks] == ["completion", " of:", " stream", " it", ""]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert stack.log.bodies[0]["stream"] is True


def test_embeddings_pass_through(stack: Stack) -> None:
    out = stack.client().embeddings.create(model="embedder", input=["one two", "three"], encoding_format="float")
    assert [d.embedding for d in out.data] == [[7.0, 2.0], [5.0, 1.0]]
    assert out.model == "embedder" and out.usage.total_tokens == 3
    assert stack.log.bodies[0] == {"model": "embedder", "input": ["one two", "three"], "encoding_format": "float"}


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"model": "fake-model"}, "prompt"),
        ("/v1/completions", {"prompt": "x"}, "model"),
        ("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/embeddings", {"model": "e", "input": []}, "input"),
    ],
)
def test_bad_bodies_are_400s_before_the_upstream(stack: Stack, route: str, body: dict, param: str) -> None:
    with stack.http() as http:
        resp = http.post(route, json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param
    assert stack.log.bodies == []


def test_an_unreachable_upstream_is_a_502(tmp_path) -> None:
    with start_stack(tmp_path / "o.db", base_url=closed_port_url()) as stack:
        client = stack.client()
        for call in (
            lambda: client.completions.create(model="m", prompt="x"),
            lambda: client.completions.create(model="m", prompt="x", stream=True),
            lambda: client.embeddings.create(model="m", input="x"),
        ):
            with pytest.raises(openai.APIStatusError) as err:
                call()
            assert err.value.status_code == 502 and err.value.body["code"] == "upstream_error"
