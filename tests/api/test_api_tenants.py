"""Keys, scopes and tenants over real HTTP: database keys (memory/keys.py) name a tenant and scopes;
one tenant never sees another's runs on any route (a 404, as for a run that does not exist), and a
missing scope is a 403 naming it. The server's own --api-key is an admin of the tenant "default"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure, echo_responder

from optigraph.memory.db import open_database
from optigraph.memory.keys import create_key, revoke_key
from optigraph.memory.migrate import upgrade_schema

ALL = ["chat", "runs:read", "runs:write"]
GRAPH = {"model": "none&none-fake-model", "messages": [{"role": "user", "content": "tenant text"}]}


def on_db(db_path: Path, work: Any) -> Any:
    async def run() -> Any:
        db = open_database(f"sqlite:///{db_path}")
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def new_key(db_path: Path, name: str, tenant: str, scopes: list[str]) -> str:
    return on_db(db_path, lambda db: create_key(db, name=name, tenant=tenant, scopes=scopes))[1]


@dataclass
class Tenants:
    stack: Stack
    a: str  # tenant a, every run scope
    b: str  # tenant b, every run scope
    reader: str  # tenant a, runs:read only
    chatter: str  # tenant a, chat only

    def http(self, key: str | None) -> httpx.Client:
        return self.stack.http(headers={"authorization": f"Bearer {key}"} if key else {})


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    db_path = tmp_path_factory.mktemp("tenants") / "t.db"
    upgrade_schema(f"sqlite:///{db_path}")
    keys = {
        "a": new_key(db_path, "a", "team-a", ALL),
        "b": new_key(db_path, "b", "team-b", ALL),
        "reader": new_key(db_path, "reader", "team-a", ["runs:read"]),
        "chatter": new_key(db_path, "chatter", "team-a", ["chat"]),
    }
    with start_stack(db_path, default_model="fake-model", api_key="admin-key", access_cache_s=0) as s:
        yield Tenants(stack=s, **keys)


def make_run(t: Tenants, key: str, body: dict[str, Any] = GRAPH) -> str:
    with t.http(key) as http:
        r = http.post("/v1/chat/completions", json=body)
    run_id = r.headers["x-optigraph-run-id"]
    t.stack.run(run_id)
    return run_id


def test_a_key_makes_runs_of_its_tenant_and_is_never_forwarded(tenants: Tenants) -> None:
    run_id = make_run(tenants, tenants.a)
    assert tenants.stack.run(run_id)["tenant"] == "team-a"
    assert tenants.stack.log.headers[-1].get("authorization") is None
    admin = make_run(tenants, "admin-key")
    assert tenants.stack.run(admin)["tenant"] == "default"


def test_a_wrong_or_missing_key_is_401(tenants: Tenants) -> None:
    for key in (None, "og_nothere_xxxxxxxx", "wrong"):
        with tenants.http(key) as http:
            assert http.post("/v1/chat/completions", json=GRAPH).status_code == 401
            assert http.get("/v1/runs").status_code == 401


def test_another_tenants_run_does_not_exist_on_any_route(tenants: Tenants) -> None:
    def stage_two_down(body: dict[str, Any], i: int) -> Any:
        return (
            HTTPFailure(400, "stage two is down")
            if last_user_text(body) == "echo: tenant text"
            else echo_responder(body, i)
        )

    tenants.stack.script.fn = stage_two_down
    with tenants.http(tenants.a) as http:
        failed = http.post("/v1/chat/completions", json=GRAPH)
    assert failed.status_code == 400
    mine = failed.headers["x-optigraph-run-id"]
    tenants.stack.run(mine)
    tenants.stack.script.fn = echo_responder
    done = make_run(tenants, tenants.a)
    with tenants.http(tenants.b) as http:
        listed = http.get("/v1/runs", params={"limit": 1000}).json()["data"]
        assert not {mine, done} & {r["id"] for r in listed}
        for run_id in (mine, done):
            for method, path, body in (
                ("GET", f"/v1/runs/{run_id}", None),
                ("POST", f"/v1/runs/{run_id}/resume", None),
                ("POST", f"/v1/runs/{run_id}/fork", {}),
                ("DELETE", f"/v1/runs/{run_id}", None),
                ("GET", f"/ui/runs/{run_id}", None),
            ):
                r = http.request(method, path, json=body)
                assert r.status_code == 404, (method, path, r.text)
            # the other tenant's run id is no cursor either (a 400 like any unknown id, nothing revealed)
            assert http.get("/v1/runs", params={"after": run_id}).status_code == 400
        page = http.get("/ui")
        assert page.status_code == 200 and mine not in page.text and done not in page.text
    with tenants.http("admin-key") as http:  # an admin of another tenant does not cross tenants either
        assert http.get(f"/v1/runs/{mine}").status_code == 404
        assert mine not in {r["id"] for r in http.get("/v1/runs", params={"limit": 1000}).json()["data"]}
    with tenants.stack.http() as http:  # a web session made with tenant b's key
        login = http.post("/ui/login", data={"key": tenants.b, "next": f"/ui/runs/{mine}"})
        assert login.status_code == 303
        cookie = {"optigraph_session": login.cookies["optigraph_session"]}
    with tenants.stack.http(cookies=cookie) as http:
        assert http.get(f"/ui/runs/{mine}").status_code == 404
        assert mine not in http.get("/ui").text
    assert tenants.stack.run(mine)["status"] == "failed"  # untouched by all that
    with tenants.http(tenants.a) as http:  # its own tenant sees, resumes, forks and deletes it
        assert mine in {r["id"] for r in http.get("/v1/runs", params={"limit": 1000}).json()["data"]}
        assert http.get(f"/v1/runs/{mine}").status_code == 200
        assert http.get(f"/ui/runs/{mine}").status_code == 200
        assert http.post(f"/v1/runs/{mine}/resume").status_code == 200
        fork = http.post(f"/v1/runs/{done}/fork", json={})
        assert fork.status_code == 200
        assert tenants.stack.run(fork.headers["x-optigraph-run-id"])["tenant"] == "team-a"
        assert http.delete(f"/v1/runs/{done}").json() == {"id": done, "object": "run.deleted", "deleted": True}
        assert http.get(f"/v1/runs/{done}").status_code == 404


def test_scopes_decide_what_a_key_may_do(tenants: Tenants) -> None:
    run_id = make_run(tenants, tenants.a)
    with tenants.http(tenants.reader) as http:
        r = http.post("/v1/chat/completions", json=GRAPH)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
        assert "'chat'" in r.json()["error"]["message"]
        assert http.get(f"/v1/runs/{run_id}").status_code == 200
        for method, path in (
            ("POST", f"/v1/runs/{run_id}/resume"),
            ("POST", f"/v1/runs/{run_id}/fork"),
            ("DELETE", f"/v1/runs/{run_id}"),
        ):
            r = http.request(method, path, json={} if path.endswith("fork") else None)
            assert r.status_code == 403 and "'runs:write'" in r.json()["error"]["message"], path
    with tenants.http(tenants.chatter) as http:
        assert http.get("/v1/runs").status_code == 403
        assert http.get(f"/v1/runs/{run_id}").status_code == 403
        assert http.get("/ui").status_code == 403
        sandboxed = {**GRAPH, "model": "coc-fake-model"}
        r = http.post("/v1/chat/completions", json=sandboxed)
        assert r.status_code == 403 and "'plugins:code'" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={**GRAPH, "model": "readurls&none-fake-model"})
        assert r.status_code == 403 and "'plugins:web'" in r.json()["error"]["message"]
    assert tenants.stack.run(run_id)["status"] == "completed"


def test_a_revoked_key_stops_working(tenants: Tenants) -> None:
    key = new_key(tenants.stack.db_path, "short-lived", "team-c", ALL)
    make_run(tenants, key)
    on_db(tenants.stack.db_path, lambda db: revoke_key(db, "short-lived"))
    with tenants.http(key) as http:
        assert http.post("/v1/chat/completions", json=GRAPH).status_code == 401


def test_an_open_server_asks_for_keys_once_one_exists(tmp_path: Path) -> None:
    db_path = tmp_path / "open.db"
    with start_stack(db_path, default_model="fake-model", access_cache_s=0) as s:
        with s.http() as http:
            assert http.post("/v1/chat/completions", json=GRAPH).status_code == 200  # open: tenant "default"
            key = new_key(db_path, "first", "team-a", ALL)
            assert http.post("/v1/chat/completions", json=GRAPH).status_code == 401
            r = http.post("/v1/chat/completions", json=GRAPH, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200
