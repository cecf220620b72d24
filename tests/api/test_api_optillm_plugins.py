"""OptILLM plugin files (a module with SLUG and run(system_prompt, initial_query, client, model
[, request_config]) returning (text, completion_tokens)) loaded unchanged from --plugins-dir and driven
through the API with the official openai client: alone, in pipelines before and after built-in
approaches, and in parallel. Their client's calls are the run's recorded upstream calls, under the
plugin's node; a plugin that raises fails its run with a 502 that names it; the run's budget holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack

# Written the way OptILLM documents its plugins: module constants, a synchronous run, the openai
# client's objects (choices[0].message.content, usage.completion_tokens, model_dump()).
SHOUT = '''
"""Shouts the model's answer."""
SLUG = "shout"


def run(system_prompt, initial_query, client, model, request_config=None):
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": initial_query}],
        temperature=0.2,
        max_tokens=64,
    )
    dumped = response.model_dump()
    assert dumped["choices"][0]["message"]["content"] == response.choices[0].message.content
    suffix = (request_config or {}).get("suffix", "")
    return response.choices[0].message.content.upper() + suffix, response.usage.completion_tokens
'''

# No request_config parameter (OptILLM's older plugin signature); asks for two choices at once.
TWICE = """
SLUG = "twice"


def run(system_prompt, initial_query, client, model):
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "twice " + initial_query}], n=2
    )
    texts = [choice.message.content for choice in response.choices]
    return " + ".join(texts), response.usage.completion_tokens
"""

BROKEN = """
SLUG = "broken"


def run(system_prompt, initial_query, client, model, request_config=None):
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": initial_query}])
    raise KeyError("no such thing")
"""

# Catches every error and goes on, as many OptILLM plugins do: the run's budget must still hold.
GREEDY = """
SLUG = "greedy"


def run(system_prompt, initial_query, client, model, request_config=None):
    done = 0
    for _ in range(10):
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": initial_query}])
            done += 1
        except Exception:
            pass
    return f"made {done} calls", 0
"""

ASYNC = """
SLUG = "later"


async def run(system_prompt, initial_query, client, model, request_config=None):
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": initial_query}])
    return "later: " + response.choices[0].message.content, 1
"""

ECHO_CONFIG = """
SLUG = "echo_config"


def run(system_prompt, initial_query, client, model, request_config=None):
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": initial_query}])
    keys = sorted(k for k in request_config if k in ("k", "mcts_depth", "num_candidates"))
    return " ".join(f"{k}={request_config[k]}" for k in keys), 0
"""

HELPER = "VALUE = 1\n"  # no SLUG/run: skipped, as OptILLM skips it


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("optillm_project")
    (root / "shout_plugin.py").write_text(SHOUT)
    (root / "helper.py").write_text(HELPER)
    (root / "readurls_plugin.py").write_text('SLUG = "readurls"\n\ndef run(*a):\n    return "not me", 0\n')
    nested = root / "optillm" / "plugins"  # OptILLM's own layout under --plugins-dir
    nested.mkdir(parents=True)
    plugins = {"twice": TWICE, "broken": BROKEN, "greedy": GREEDY, "later": ASYNC, "echo_config": ECHO_CONFIG}
    for name, text in plugins.items():
        (nested / f"{name}_plugin.py").write_text(text)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, plugins_dir: Path) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("optillm_plugins") / "p.db"
    with start_stack(db, default_model="fake-model", plugins_dir=plugins_dir, max_upstream_calls=64) as s:
        yield s


@pytest.fixture
def stack(server: Stack) -> Iterator[Stack]:
    server.reset()
    yield server
    server.reset()


def chat(stack: Stack, model: str, text: str = "hello there", **kw):
    return stack.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": text}], **kw
    )


def test_a_plugin_file_alone_answers_through_the_runs_llm(stack: Stack) -> None:
    raw = chat(stack, "shout-fake-model", extra_body={"suffix": "!"})
    answer = raw.parse()
    # OptILLM's flattening: the system prompt apart, the turns as "User: ..." lines
    assert answer.choices[0].message.content == "ECHO: USER: HELLO THERE!"
    sent = stack.log.bodies
    assert len(sent) == 1
    assert sent[0]["messages"] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "User: hello there"},
    ]
    assert sent[0]["temperature"] == 0.2 and sent[0]["max_tokens"] == 64 and sent[0]["model"] == "fake-model"
    run_id = raw.headers["x-optigraph-run-id"]
    run = stack.run(run_id)
    assert run["status"] == "completed" and run["expression"] == "shout" and run["calls"] == 1
    calls = stack.calls(run_id)
    assert [c["node"] for c in calls] == ["shout"]
    assert calls[0]["completion_tokens"] > 0
    assert answer.usage.completion_tokens == calls[0]["completion_tokens"]


def test_plugins_are_listed_and_helpers_and_builtin_names_are_skipped(stack: Stack) -> None:
    with stack.http() as http:
        listed = {a["name"]: a for a in http.get("/v1/approaches").json()["data"]}
    assert {"shout", "twice", "broken", "greedy", "later"} <= set(listed)
    assert "helper" not in listed
    assert "OptILLM plugin file" in listed["shout"]["description"]
    # the built-in readurls plugin still serves its name, not the file that claimed it
    assert listed["readurls"]["kind"] == "plugin"


def test_a_plugin_before_an_approach_hands_it_the_question(stack: Stack) -> None:
    raw = chat(stack, "shout&re2-fake-model")
    run_id = raw.headers["x-optigraph-run-id"]
    assert stack.run(run_id)["status"] == "completed"
    assert [c["node"] for c in stack.calls(run_id)][0] == "shout"
    # re2 asked the upstream about the plugin's text, in the last user turn
    assert "ECHO: USER: HELLO THERE" in last_user_text(stack.log.bodies[-1])


def test_a_plugin_after_an_approach_gets_its_answer_and_n_is_sampled(stack: Stack) -> None:
    raw = chat(stack, "none&twice-fake-model")
    answer = raw.parse().choices[0].message.content
    assert answer == "echo: twice User: echo: hello there + echo: twice User: echo: hello there"
    run_id = raw.headers["x-optigraph-run-id"]
    stored = stack.run(run_id)
    nodes = [c["node"] for c in stack.calls(run_id)]
    assert nodes[0] != "twice" and nodes.count("twice") >= 1
    assert stored["calls"] == len(nodes)


def test_plugins_run_in_parallel_branches_and_async_plugins_work(stack: Stack) -> None:
    raw = chat(stack, "shout|later-fake-model")
    texts = [c.message.content for c in raw.parse().choices]
    assert texts == ["ECHO: USER: HELLO THERE", "later: echo: User: hello there"]
    run_id = raw.headers["x-optigraph-run-id"]
    stack.run(run_id)
    assert sorted(c["node"] for c in stack.calls(run_id)) == ["later", "shout"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_plugin_that_raises_fails_its_run_with_a_clear_502(stack: Stack, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        chat(stack, "broken-fake-model", stream=stream)
    err = info.value
    assert err.status_code == 502
    body = err.body if isinstance(err.body, dict) else {}
    assert body.get("code") == "plugin_failed" and body.get("type") == "plugin_error"
    assert "plugin 'broken'" in body["message"] and "KeyError" in body["message"]
    run_id = err.response.headers["x-optigraph-run-id"]
    run = stack.run(run_id)
    assert run["status"] == "failed" and "KeyError" in run["error"]["error"]["message"]
    assert [c["node"] for c in stack.calls(run_id)] == ["broken"]  # the call it made before raising


def test_a_plugin_that_swallows_errors_still_stops_at_the_runs_budget(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(stack, "greedy-fake-model", extra_body={"optigraph": {"max_upstream_calls": 3}})
    assert info.value.body["code"] == "budget_exceeded"
    run = stack.run(info.value.response.headers["x-optigraph-run-id"])
    assert run["status"] == "failed" and run["calls"] == 3
    assert len(stack.log.bodies) == 3


def test_optillm_params_reach_the_plugins_request_config(stack: Stack) -> None:
    answer = chat(stack, "shout-fake-model", extra_body={"optillm_params": {"shout": {"suffix": "?"}}}).parse()
    assert answer.choices[0].message.content.endswith("?")


def test_a_plugin_run_streams_its_answer_to_the_client(stack: Stack) -> None:
    chunks = list(chat(stack, "shout-fake-model", stream=True, stream_options={"include_usage": True}).parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ECHO: USER: HELLO THERE"
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens > 0


def test_optillm_body_fields_reach_a_plugin_files_request_config(stack: Stack) -> None:
    # OptILLM hands the whole body to a plugin: its fields for other approaches included
    answer = chat(stack, "shout-fake-model", extra_body={"num_candidates": 5, "suffix": "#"}).parse()
    assert answer.choices[0].message.content.endswith("#")
    raw = chat(stack, "echo_config-fake-model", extra_body={"num_candidates": 5, "mcts_depth": 2, "k": 3})
    assert raw.parse().choices[0].message.content == "k=3 mcts_depth=2 num_candidates=5"
    assert not {"num_candidates", "mcts_depth"} & set(stack.log.bodies[-1])
