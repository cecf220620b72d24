"""`executecode` (plugin) and `coc` (approach) end to end: the real server on loopback, the official
openai client, a scripted upstream, the real sandbox, the run and its upstream calls stored in SQLite."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, last_user_text, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("code") / "c.db", default_model="fake-model") as s:
        yield s


def run_detail(stack: Stack, run_id: str) -> dict[str, Any]:
    stack.run(run_id)
    with stack.http() as http:
        return http.get(f"/v1/runs/{run_id}").json()


def test_executecode_runs_the_models_code_and_answers_from_its_output(stack: Stack) -> None:
    stack.reset()

    def respond(body: dict[str, Any], index: int) -> str:
        user = last_user_text(body)
        if user.startswith("Your Python code was run in a sandbox"):
            return f"The 20th Fibonacci number is {user.split('```')[1].strip()}."
        return "I will compute it.\n```python\na, b = 0, 1\nfor _ in range(20):\n    a, b = b, a + b\nprint(a)\n```"

    stack.script.fn = respond
    response = stack.client().chat.completions.create(
        model="executecode&none-fake-model", messages=[{"role": "user", "content": "The 20th Fibonacci number?"}]
    )
    assert response.choices[0].message.content == "The 20th Fibonacci number is 6765."
    assert response.model_extra["optigraph"]["upstream_calls"] == 2
    run_id = response.model_extra["optigraph"]["run_id"]
    detail = run_detail(stack, run_id)
    assert detail["status"] == "completed"
    assert [c["node"] for c in stack.calls(run_id)] == ["passthrough", "executecode.answer"]
    steps = [t["name"] for step in detail["threads"][0]["steps"] for t in step["tasks"]]
    assert [n for n in steps if n.startswith("executecode.")] == [
        "executecode.pre",
        "executecode.run",
        "executecode.post",
    ]  # checkpointed nodes
    shown = json.dumps(detail)
    assert "executecode.post[0]: run 1 succeeded" in shown


def test_executecode_streamed_keeps_an_answer_whose_code_was_refused(stack: Stack) -> None:
    stack.reset()
    reply = "Reading it:\n```python\nprint(open('/etc/passwd').read())\n```"
    stack.script.fn = lambda body, index: reply
    stream = stack.client().chat.completions.create(
        model="executecode&none-fake-model", stream=True, messages=[{"role": "user", "content": "Show users."}]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == reply  # kept as the model wrote it: nothing ran, nothing was invented
    assert len(stack.log.bodies) == 1


def test_coc_runs_the_computable_part_and_emulates_the_semantic_call(stack: Stack) -> None:
    stack.reset()
    program = (
        'words = ["rose", "oak", "tulip"]\nflowers = [w for w in words if is_flower(w)]\n'
        'print(f"count={len(flowers) * 7}")'
    )

    def respond(body: dict[str, Any], index: int) -> str:
        system = " ".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "system")
        user = last_user_text(body)
        if "What the program printed" in system:
            return "The answer is " + re.search(r"count=(\d+)", system).group(1) + "."
        if "Chain of Code" in system:
            return f"```python\n{program}\n```"
        if user.startswith("You are emulating a Python interpreter"):
            return "RESULT: " + str("evaluated now: `is_flower('oak')`" not in user)
        return "unexpected call"

    stack.script.fn = respond
    response = stack.client().chat.completions.create(
        model="coc-fake-model", messages=[{"role": "user", "content": "Flowers among rose, oak, tulip, times 7?"}]
    )
    assert response.choices[0].message.content == "The answer is 14."
    run_id = response.model_extra["optigraph"]["run_id"]
    detail = run_detail(stack, run_id)
    assert detail["status"] == "completed"
    assert [c["node"] for c in stack.calls(run_id)] == ["write", "emulate", "emulate", "emulate", "answer"]
    shown = json.dumps(detail)
    assert "emulate: is_flower('oak') -> False" in shown and "count=14" in shown
