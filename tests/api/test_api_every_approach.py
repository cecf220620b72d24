"""Every registered approach, alone and composed, through the real server against an upstream that
answers with unhelpful text (no ratings, no verdicts, no code): each must still answer 200 with
usage summed over its calls, never fail on loose output."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from api_stack import Stack, start_stack

from optigraph.engine.registry import builtin_registry

HELLO = [{"role": "user", "content": "What is 6 times 7? End with: The answer is N."}]
# Decoding strategies need a local model's logits: tests/local/test_decoding_approaches.py runs them.
# The mcp plugin needs MCP servers configured (--mcp-config): tests/api/test_api_mcp.py runs it; the
# proxy plugin needs providers (--proxy-config): tests/api/test_api_proxy.py runs it.
APPROACHES = sorted(
    spec.name for spec in builtin_registry().specs.values() if not {"local", "mcp", "proxy"} & set(spec.needs)
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("every") / "e.db", default_model="fake-model") as s:
        yield s


@pytest.mark.parametrize("approach", APPROACHES)
def test_each_approach_answers_through_the_server(plain: Stack, approach: str) -> None:
    plain.reset()
    raw = plain.client().chat.completions.with_raw_response.create(
        model=f"{approach}-fake-model",
        messages=HELLO,
        max_tokens=256,
        extra_body={"optillm_params": {"mars": {"lightweight": True}}} if approach == "mars" else None,
    )
    r = raw.parse()
    assert r.choices and r.choices[0].message.content
    calls = r.model_extra["optigraph"]["upstream_calls"]
    assert calls == len(plain.log.bodies) >= 1
    assert r.usage.total_tokens > 0
    assert plain.run(raw.headers["x-optigraph-run-id"])["status"] == "completed"


def test_local_only_approaches_are_refused_for_an_http_upstream(plain: Stack) -> None:
    plain.reset()
    with pytest.raises(openai.BadRequestError) as err:
        plain.client().chat.completions.create(model="cot_decoding-fake-model", messages=HELLO)
    assert err.value.body["code"] == "approach_unsupported" and "local" in err.value.body["message"]
    assert plain.log.bodies == []


@pytest.mark.parametrize(
    ("expression", "choices"), [("plansearch&re2", 1), ("mcts|bon", 2), ("(self_consistency|moa)&cot_reflection", 2)]
)
def test_approaches_compose(plain: Stack, expression: str, choices: int) -> None:
    plain.reset()
    r = plain.client().chat.completions.create(model=f"{expression}-fake-model", messages=HELLO, max_tokens=256)
    assert len(r.choices) == choices and all(c.message.content for c in r.choices)
    assert r.model_extra["optigraph"]["upstream_calls"] == len(plain.log.bodies)
