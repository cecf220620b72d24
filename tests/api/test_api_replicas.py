"""Two optigraph servers on one PostgreSQL database: a run started on one is listed, shown and
resumed on the other."""

from __future__ import annotations

import time
from typing import Any

import httpx
from api_stack import last_user_text
from upstream import HTTPFailure, ServerThread, UpstreamLog, echo_responder, make_app

from optigraph.api.app import create_app
from optigraph.config import Settings


def test_a_run_failed_on_one_server_is_listed_shown_and_resumed_on_another(postgres_url: str) -> None:
    broken = {"on": True}

    def fails_stage_two(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body) == "echo: shared":
            return HTTPFailure(400, "stage two is down")
        return echo_responder(body, index)

    log = UpstreamLog()
    with ServerThread(make_app(fails_stage_two, log=log)) as up:
        settings = Settings(base_url=up.url + "/v1", db_url=postgres_url, default_model="fake-model")
        with ServerThread(create_app(settings)) as a, ServerThread(create_app(settings)) as b:
            r = httpx.post(
                a.url + "/v1/chat/completions",
                timeout=30,
                json={"model": "none&none&none-fake-model", "messages": [{"role": "user", "content": "shared"}]},
            )
            assert r.status_code == 400
            run_id = r.headers["x-optigraph-run-id"]
            with httpx.Client(base_url=b.url, timeout=30) as http:
                for _ in range(600):  # A's recorder writes in the background (up to 30 s on a loaded machine)
                    listed = http.get("/v1/runs", params={"status": "failed", "limit": 1000}).json()
                    if run_id in [x["id"] for x in listed["data"]]:
                        break
                    time.sleep(0.05)
                assert run_id in [x["id"] for x in listed["data"]]
                shown = http.get(f"/v1/runs/{run_id}").json()
                assert shown["status"] == "failed" and shown["expression"] == "none&none&none"
                assert shown["threads"][0]["steps"]  # B reads A's checkpoints
                broken["on"] = False
                sent = len(log.bodies)
                r = http.post(f"/v1/runs/{run_id}/resume")
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == "echo: echo: echo: shared"
                assert [last_user_text(x) for x in log.bodies[sent:]] == ["echo: shared", "echo: echo: shared"]
            shown = httpx.get(f"{a.url}/v1/runs/{run_id}", timeout=30).json()
            assert shown["status"] == "completed"
            assert [c["status"] for c in shown["upstream_calls"]] == ["ok", "error", "ok", "ok"]
