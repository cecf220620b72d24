"""A stored run resumes with exactly its own expression, parameters and threads: a failed fork of an
n > 1 run resumes as the fork, and a change of the server's default approach changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from api_stack import last_user_text, start_stack
from upstream import HTTPFailure, echo_responder


def _checkpoint_after(detail: dict[str, Any], thread: str, node: str) -> str:
    [steps] = [t["steps"] for t in detail["threads"] if t["thread_id"] == thread]
    for step in steps:
        if any(t["name"] == node for t in step["tasks"]) and step.get("checkpoint_id"):
            return step["checkpoint_id"]
    raise AssertionError(f"no step of {thread} ran {node}")


def test_a_failed_fork_of_an_n2_run_resumes_as_the_fork(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db", default_model="fake-model") as stack, stack.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "none&none-fake-model", "n": 2, "messages": [{"role": "user", "content": "q"}]},
        )
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        parent = r.headers["x-optigraph-run-id"]
        stack.run(parent)
        detail = http.get(f"/v1/runs/{parent}").json()
        checkpoint = _checkpoint_after(detail, f"{parent}.1", "1.none/done")

        broken = {"on": True}

        def stage_two_down(body: dict[str, Any], index: int) -> Any:
            if broken["on"]:
                return HTTPFailure(400, "stage two is down")
            return echo_responder(body, index)

        stack.script.fn = stage_two_down
        patch = {"messages": [{"role": "user", "content": "forked"}]}
        r = http.post(
            f"/v1/runs/{parent}/fork",
            json={
                "thread": f"{parent}.1",
                "checkpoint_id": checkpoint,
                "patch": {"answers": [{"message": {"role": "assistant", "content": "patched"}}], **patch},
            },
        )
        assert r.status_code == 400, r.text
        [fork] = [
            x["id"]
            for x in http.get("/v1/runs", params={"status": "failed"}).json()["data"]
            if x["parent_id"] == parent
        ]
        assert stack.run(fork)["status"] == "failed"

        broken["on"] = False
        stack.log.bodies.clear()
        r = http.post(f"/v1/runs/{fork}/resume")
        assert r.status_code == 200, r.text
        # the fork's single thread went on from its own checkpoint: stage two on the patched answer
        assert [c["message"]["content"] for c in r.json()["choices"]] == ["echo: patched"]
        assert [last_user_text(b) for b in stack.log.bodies] == ["patched"]
        assert stack.run(fork)["parent_id"] == parent


def test_resume_ignores_a_change_of_the_servers_default_approach(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    sampling_down = {"on": True}

    def respond(body: dict[str, Any], index: int) -> Any:
        if sampling_down["on"] and body.get("n"):  # bon's sampling call: the only one asking for n
            return HTTPFailure(400, "sampling is down")
        return echo_responder(body, index)

    with start_stack(db, approach="none&bon", default_model="fake-model") as first:
        first.script.fn = respond
        r = httpx.post(
            first.base_url + "/chat/completions",
            timeout=30,
            json={
                "model": "fake-model",
                "optillm_params": {"bon": {"n": 2}},
                "messages": [{"role": "user", "content": "q"}],
            },
        )
        assert r.status_code == 400, r.text
        run_id = r.headers["x-optigraph-run-id"]
        assert first.run(run_id)["expression"] == "none&bon"

    sampling_down["on"] = False
    with start_stack(db, approach="moa", default_model="fake-model") as second:  # another default now
        second.script.fn = respond
        r = httpx.post(f"{second.url}/v1/runs/{run_id}/resume", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["optigraph"]["approach"] == "none&bon"
        # bon with its stored n = 2 (not its default 3, nor moa): one sampling call and two ratings;
        # the finished first stage is not asked again
        assert [b.get("n") for b in second.log.bodies] == [2, None, None]
        assert second.run(run_id)["status"] == "completed"
