"""POST /v1/runs/{id}/resume and /fork over real HTTP: a run failed by the upstream continues where it
stopped, refusals say why, and a fork recomputes only what follows its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure, echo_responder

PIPELINE = "none&none&none-fake-model"


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("resume") / "optigraph.db"
    with start_stack(db, default_model="fake-model") as stack:
        yield stack


@pytest.fixture
def stack(rstack: Stack) -> Iterator[Stack]:
    rstack.reset()
    yield rstack
    rstack.reset()


def chat(stack: Stack, content: str, model: str = PIPELINE) -> tuple[int, dict[str, Any], str]:
    with stack.http() as http:
        r = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}]})
    return r.status_code, r.json(), r.headers["x-optigraph-run-id"]


def post(stack: Stack, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    with stack.http() as http:
        r = http.post(path, json=body)
    return r.status_code, r.json()


def stage_inputs(stack: Stack) -> list[str]:
    return [last_user_text(b) for b in stack.log.bodies]


def test_a_run_failed_by_the_upstream_resumes_from_the_failed_stage(stack: Stack) -> None:
    broken = {"on": True}

    def fails_stage_two(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body) == "echo: q1":
            return HTTPFailure(400, "stage two is broken")
        return echo_responder(body, index)

    stack.script.fn = fails_stage_two
    status, body, run_id = chat(stack, "q1")
    assert status == 400, body
    assert stack.run(run_id)["status"] == "failed"
    assert stage_inputs(stack) == ["q1", "echo: q1"]

    broken["on"] = False
    stack.log.bodies.clear()
    status, body = post(stack, f"/v1/runs/{run_id}/resume")
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["optigraph"]["run_id"] == run_id
    assert body["choices"][0]["message"]["content"] == "echo: echo: echo: q1"
    assert stage_inputs(stack) == ["echo: q1", "echo: echo: q1"]  # stage one was not asked again
    # every stored call counts, stage one's and the failed attempt too (core/usage.py)
    assert body["usage"]["total_tokens"] > 0 and body["optigraph"]["upstream_calls"] == 4

    run = stack.run(run_id)
    assert (
        run["status"] == "completed" and run["response"]["choices"][0]["message"]["content"] == "echo: echo: echo: q1"
    )
    calls = [(last_user_text(c["request"]), c["status"]) for c in stack.calls(run_id)]
    assert calls == [("q1", "ok"), ("echo: q1", "error"), ("echo: q1", "ok"), ("echo: echo: q1", "ok")]


def test_finished_branches_and_child_steps_are_not_run_again(stack: Stack) -> None:
    """The second branch is a pipeline (a child graph): its first stage finished inside the child's
    own checkpoint namespace before its second stage failed; the resume re-enters the child there."""
    broken = {"on": True}

    def fails_once(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body) == "echo: p":
            return HTTPFailure(400, "down")
        return echo_responder(body, index)

    stack.script.fn = fails_once
    with stack.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "none|(none&none)-fake-model",
                "temperature": 0.5,
                "messages": [{"role": "user", "content": "p"}],
            },
        )
    run_id = r.headers["x-optigraph-run-id"]
    assert r.status_code == 400
    assert stack.run(run_id)["status"] == "failed"
    assert sorted(stage_inputs(stack)) == ["echo: p", "p", "p"]
    broken["on"] = False
    stack.log.bodies.clear()
    status, body = post(stack, f"/v1/runs/{run_id}/resume")
    assert status == 200, body
    assert [c["message"]["content"] for c in body["choices"]] == ["echo: p", "echo: echo: p"]
    assert stage_inputs(stack) == ["echo: p"]  # neither the first branch nor the child's first stage again
    assert body["optigraph"]["upstream_calls"] == 4  # the failed attempt counts too (core/usage.py)


def test_resume_refusals_say_why(stack: Stack) -> None:
    status, body, passthrough = chat(stack, "hello", model="fake-model")
    assert status == 200
    stack.run(passthrough)
    status, body = post(stack, f"/v1/runs/{passthrough}/resume")
    assert status == 409 and body["error"]["code"] == "run_not_resumable"
    assert "passthrough" in body["error"]["message"]

    status, body, done = chat(stack, "done")
    assert status == 200
    stack.run(done)
    status, body = post(stack, f"/v1/runs/{done}/resume")
    assert status == 409 and "completed" in body["error"]["message"]

    status, body = post(stack, "/v1/runs/no-such-run/resume")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = post(stack, "/v1/runs/no-such-run/fork", {})
    assert status == 404
    status, body = post(stack, f"/v1/runs/{passthrough}/fork", {})
    assert status == 409


def _step_after(detail: dict[str, Any], node: str) -> str:
    for step in detail["threads"][0]["steps"]:
        if any(t["name"] == node for t in step["tasks"]) and step.get("checkpoint_id"):
            return step["checkpoint_id"]
    raise AssertionError(f"no step ran {node}")


def test_fork_from_a_mid_run_checkpoint_with_a_patch(stack: Stack) -> None:
    status, body, parent = chat(stack, "f1")
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: echo: echo: f1"
    stack.run(parent)
    with stack.http() as http:
        detail = http.get(f"/v1/runs/{parent}").json()
    checkpoint = _step_after(detail, "2.none/done")  # stage two's answers are collected
    stack.log.bodies.clear()

    patch = {"answers": [{"message": {"role": "assistant", "content": "edited"}, "finish_reason": "stop"}]}
    status, body = post(stack, f"/v1/runs/{parent}/fork", {"checkpoint_id": checkpoint, "patch": patch})
    assert status == 200, body
    child = body["optigraph"]["run_id"]
    assert child != parent and body["optigraph"]["parent_id"] == parent
    assert body["choices"][0]["message"]["content"] == "echo: edited"
    assert stage_inputs(stack) == ["edited"]  # only stage three ran again
    assert body["optigraph"]["upstream_calls"] == 1
    run = stack.run(child)
    assert run["parent_id"] == parent and run["status"] == "completed"
    assert [last_user_text(c["request"]) for c in stack.calls(child)] == ["edited"]
    assert stack.calls(parent) and len(stack.calls(parent)) == 3  # the parent is untouched


def test_fork_with_a_request_patch_and_the_latest_checkpoint(stack: Stack) -> None:
    status, body, parent = chat(stack, "f2")
    stack.run(parent)
    with stack.http() as http:
        detail = http.get(f"/v1/runs/{parent}").json()
    checkpoint = _step_after(detail, "1.none/done")
    stack.log.bodies.clear()
    status, body = post(
        stack, f"/v1/runs/{parent}/fork", {"checkpoint_id": checkpoint, "patch": {"request": {"temperature": 0.2}}}
    )
    assert status == 200, body
    assert [b.get("temperature") for b in stack.log.bodies] == [0.2, 0.2]  # stages two and three, new temperature
    assert body["choices"][0]["message"]["content"] == "echo: echo: echo: f2"

    stack.log.bodies.clear()
    status, body = post(stack, f"/v1/runs/{parent}/fork", {})  # the latest checkpoint: nothing left to run
    assert status == 200, body
    assert stack.log.bodies == [] and body["choices"][0]["message"]["content"] == "echo: echo: echo: f2"

    status, body = post(stack, f"/v1/runs/{parent}/fork", {"patch": {"nope": 1}})
    assert status == 400 and "nope" in body["error"]["message"]
    status, body = post(stack, f"/v1/runs/{parent}/fork", {"thread": "other"})
    assert status == 400


def test_cli_resume_and_fork(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    from optigraph.cli import main

    broken = {"on": True}

    def fails_stage_three(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body) == "echo: echo: c1":
            return HTTPFailure(400, "down")
        return echo_responder(body, index)

    stack.script.fn = fails_stage_three
    status, body, run_id = chat(stack, "c1")
    assert status == 400
    stack.run(run_id)
    broken["on"] = False
    with pytest.raises(SystemExit) as done:
        main(["runs", "resume", run_id, "--server", stack.url])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: completed, 4 upstream calls" in out and "echo: echo: echo: c1" in out
    with pytest.raises(SystemExit) as done:
        main(["runs", "resume", run_id, "--server", stack.url])
    assert done.value.code == 1 and "409" in capsys.readouterr().err

    with pytest.raises(SystemExit) as done:
        main(["runs", "fork", run_id, "--server", stack.url, "--json", "--patch", '{"request": {"temperature": 0.3}}'])
    assert done.value.code == 0
    import json

    answer = json.loads(capsys.readouterr().out)
    assert answer["optigraph"]["parent_id"] == run_id
    with pytest.raises(SystemExit) as done:
        main(["runs", "fork", run_id, "--server", stack.url, "--patch", "[1]"])
    assert done.value.code == 1
