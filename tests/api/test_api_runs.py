"""GET /v1/runs, GET /v1/runs/{id}, GET /v1/approaches[/{expression}] over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure, echo_responder

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry

REFUSE = "please refuse this"


def refusing(body: dict[str, Any], index: int) -> Any:
    """Echoes, except that a conversation whose last user turn asks for it is refused (400)."""
    if REFUSE in last_user_text(body):
        return HTTPFailure(400, "refused by the fake upstream")
    return echo_responder(body, index)


@dataclass
class Served:
    stack: Stack
    ids: dict[str, str]  # label -> run id, in the order served
    order: list[str]  # run ids, oldest first


def serve(stack: Stack, label: str, model: str, content: str, ids: dict[str, str], **kw: Any) -> None:
    client = stack.client()
    try:
        response = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], **kw
        )
        run_id = response.headers["x-optigraph-run-id"]
    except openai.APIStatusError as exc:
        run_id = exc.response.headers["x-optigraph-run-id"]
    stack.run(run_id)
    ids[label] = run_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server of its own (exact listings), with runs of every shape, served one after another."""
    db = tmp_path_factory.mktemp("runs") / "optigraph.db"
    with start_stack(db, default_model="fake-model") as stack:
        stack.script.fn = refusing
        ids: dict[str, str] = {}
        serve(stack, "pass1", "fake-model", "first", ids)
        serve(stack, "pass2", "fake-model", "second", ids)
        serve(stack, "parallel", "none|none-fake-model", "in parallel", ids)
        serve(stack, "pipeline", "none&none-fake-model", "in a pipeline", ids)
        serve(stack, "other", "other-model", "another model", ids)
        serve(stack, "failed", "none&none-fake-model", REFUSE, ids)
        serve(stack, "n2", "none|none-fake-model", "two choices", ids, n=2)
        serve(stack, "long", "fake-model", "x" * 6000, ids)
        yield Served(stack=stack, ids=ids, order=list(ids.values()))


def get(stack: Stack, path: str, **params: Any) -> Any:
    with stack.http() as http:
        response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def error(stack: Stack, path: str, status: int, **params: Any) -> dict[str, Any]:
    with stack.http() as http:
        response = http.get(path, params=params)
    assert response.status_code == status, response.text
    return response.json()["error"]


# ---- listing -----------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_without_bodies(served: Served) -> None:
    page = get(served.stack, "/v1/runs")
    assert page["object"] == "list" and page["has_more"] is False and page["next_cursor"] is None
    assert [r["id"] for r in page["data"]] == served.order[::-1]
    for run in page["data"]:
        assert "request" not in run and "response" not in run
        assert run["object"] == "run" and run["created_at"] and run["status"] in ("completed", "failed")
    by_id = {r["id"]: r for r in page["data"]}
    parallel = by_id[served.ids["parallel"]]
    assert parallel["expression"] == "none|none" and parallel["model"] == "fake-model"
    assert parallel["checkpointed"] is True and parallel["usage"]["calls"] == 2
    assert (
        parallel["usage"]["total_tokens"]
        == parallel["usage"]["prompt_tokens"] + parallel["usage"]["completion_tokens"]
        > 0
    )
    assert by_id[served.ids["pass1"]]["checkpointed"] is False


def test_runs_are_filtered(served: Served) -> None:
    ids, stack = served.ids, served.stack

    def listed(**params: Any) -> list[str]:
        return [r["id"] for r in get(stack, "/v1/runs", **params)["data"]]

    assert listed(status="failed") == [ids["failed"]]
    assert listed(status="completed") == [i for i in served.order[::-1] if i != ids["failed"]]
    assert listed(status="running") == []
    assert listed(approach="none | none") == [ids["n2"], ids["parallel"]]  # the canonical form is matched
    assert listed(approach="none&none") == [ids["failed"], ids["pipeline"]]
    assert listed(approach="none") == [ids["long"], ids["other"], ids["pass2"], ids["pass1"]]
    assert listed(model="no-such-model") == []
    assert listed(model="other-model") == [ids["other"]]
    assert listed(model="other-model", approach="none|none") == []
    runs = {r["id"]: r for r in get(stack, "/v1/runs")["data"]}
    middle = runs[ids["pipeline"]]["created_at"]
    assert listed(created_after=middle) == [i for i in served.order[::-1] if runs[i]["created_at"] > middle]
    assert listed(created_before=middle) == [i for i in served.order[::-1] if runs[i]["created_at"] < middle]
    assert listed(created_after=middle, created_before=runs[ids["n2"]]["created_at"]) == [ids["failed"], ids["other"]]
    assert listed(created_after="2000-01-01T00:00:00") == served.order[::-1]  # no offset: UTC


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        ({"status": "bogus"}, "status", "unknown status 'bogus'"),
        ({"approach": "bon&("}, "approach", "approach filter"),
    ],
)
def test_a_bad_run_filter_is_a_400(served: Served, params: dict[str, str], param: str, says: str) -> None:
    with served.stack.http() as http:
        resp = http.get("/v1/runs", params=params)
    assert resp.status_code == 400, resp.text
    body = resp.json()["error"]
    assert body["param"] == param and says in body["message"] and body["type"] == "invalid_request_error"


def test_runs_are_paginated_with_a_cursor(served: Served) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"after": cursor} if cursor else {})}
        page = get(served.stack, "/v1/runs", **params)
        pages += 1
        seen += [r["id"] for r in page["data"]]
        assert len(page["data"]) <= 3
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        assert page["next_cursor"] == page["data"][-1]["id"]
        cursor = page["next_cursor"]
    assert seen == served.order[::-1] and pages == 3  # 8 runs: 3 + 3 + 2
    exact = get(served.stack, "/v1/runs", limit=len(served.order))
    assert exact["has_more"] is False and len(exact["data"]) == len(served.order)
    filtered = get(served.stack, "/v1/runs", approach="none", limit=2)
    assert [r["id"] for r in filtered["data"]] == [served.ids["long"], served.ids["other"]] and filtered["has_more"]
    rest = get(served.stack, "/v1/runs", approach="none", limit=2, after=filtered["next_cursor"])
    assert [r["id"] for r in rest["data"]] == [served.ids["pass2"], served.ids["pass1"]] and not rest["has_more"]


def test_bad_listing_parameters_are_400s(served: Served) -> None:
    assert error(served.stack, "/v1/runs", 400, after="no-such-run")["code"] == "invalid_cursor"
    assert error(served.stack, "/v1/runs", 400, limit=0)["param"] == "limit"
    assert error(served.stack, "/v1/runs", 400, limit=1001)["param"] == "limit"
    assert error(served.stack, "/v1/runs", 400, created_after="yesterday")["param"] == "created_after"


# ---- one run -----------------------------------------------------------------------------------


def names(steps: list[dict[str, Any]]) -> list[list[str]]:
    return [[t["name"] for t in step["tasks"]] for step in steps]


def test_a_parallel_run_shows_its_steps_in_order(served: Served) -> None:
    run = get(served.stack, f"/v1/runs/{served.ids['parallel']}")
    assert run["expression"] == "none|none" and run["status"] == "completed"
    assert run["request"]["messages"] == [{"role": "user", "content": "in parallel"}]
    assert [c["message"]["content"] for c in run["response"]["choices"]] == ["echo: in parallel"] * 2
    assert run["graph"]["choices"] == 2 and "subgraph none#2" in run["graph"]["mermaid"]
    [thread] = run["threads"]
    assert thread["thread_id"] == run["id"] and thread["next"] == []
    steps = thread["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert names(steps) == [["__start__"], ["none", "none#2"], ["collect"]]
    assert all(s["status"] == "done" for s in steps)
    for earlier, later in zip(steps, steps[1:]):  # each step starts from the checkpoint the one before wrote
        assert later["parent_checkpoint_id"] == earlier["checkpoint_id"]
        assert later["started_at"] >= earlier["started_at"]
    start = steps[0]["tasks"][0]
    assert start["writes"]["messages"] == [{"role": "user", "content": "in parallel"}]
    assert steps[0]["changes"]["messages"] == start["writes"]["messages"]
    for task, slot in zip(steps[1]["tasks"], ("none/0", "none#2/0")):
        assert task["kind"] == "push" and task["status"] == "done"
        assert task["input"]["messages"] == [{"role": "user", "content": "in parallel"}]
        assert task["writes"]["outputs"][slot][0]["message"]["content"] == "echo: in parallel"
        assert task["writes"]["usage"]["calls"] == 1
        assert task["checkpoint_ns"].startswith(task["name"] + ":")
        assert names(task["steps"]) == [["__start__"], ["passthrough"]]  # the branch's own graph
        inner = task["steps"][1]["tasks"][0]
        assert inner["writes"]["answers"][0]["message"]["content"] == "echo: in parallel"
    collect = steps[2]
    assert [a["message"]["content"] for a in collect["tasks"][0]["writes"]["answers"]] == ["echo: in parallel"] * 2
    assert set(collect["changes"]) == {"answers"}
    calls = run["upstream_calls"]
    assert len(calls) == 2
    for call in calls:
        assert call["node"] == "passthrough" and call["status"] == "ok" and call["attempt"] == 1
        assert call["backend"] == "openai" and call["model"] == "fake-model" and call["error"] is None
        assert call["messages"] == [{"role": "user", "content": "in parallel"}]
        assert call["choices"][0]["text"] == "echo: in parallel"
        assert call["usage"]["prompt_tokens"] == 2 and call["usage"]["completion_tokens"] == 3
        assert call["latency_ms"] > 0 and call["started_at"]
    totals = run["totals"]
    assert totals["calls"] == 2 and totals["failed_calls"] == 0
    assert totals["prompt_tokens"] == run["usage"]["prompt_tokens"] == 4
    assert totals["completion_tokens"] == run["usage"]["completion_tokens"] == 6
    assert totals["steps"] == 3 and totals["tasks"] == 4 + 4  # 4 at the top, 2 in each branch
    assert totals["by_node"]["passthrough"]["calls"] == 2


def test_a_pipeline_run_shows_each_stage_on_the_answer_before_it(served: Served) -> None:
    run = get(served.stack, f"/v1/runs/{served.ids['pipeline']}")
    steps = run["threads"][0]["steps"]
    assert names(steps) == [["__start__"], ["1.none"], ["1.none/done"], ["2.none"], ["2.none/done"]]
    assert steps[2]["tasks"][0]["writes"]["answers"][0]["message"]["content"] == "echo: in a pipeline"
    second = steps[3]["tasks"][0]
    assert second["input"]["branch"]["messages"] == [{"role": "user", "content": "echo: in a pipeline"}]
    assert second["steps"][0]["tasks"][0]["writes"]["messages"] == [{"role": "user", "content": "echo: in a pipeline"}]
    assert steps[4]["changes"]["answers"][0]["message"]["content"] == "echo: echo: in a pipeline"
    calls = run["upstream_calls"]
    assert [c["messages"][-1]["content"] for c in calls] == ["in a pipeline", "echo: in a pipeline"]
    assert [c["choices"][0]["text"] for c in calls] == ["echo: in a pipeline", "echo: echo: in a pipeline"]
    assert calls[0]["started_at"] <= calls[1]["started_at"]
    assert "1.none/done" in run["graph"]["mermaid"]


def test_a_passthrough_run_has_one_call_and_no_steps(served: Served) -> None:
    run = get(served.stack, f"/v1/runs/{served.ids['pass1']}")
    assert run["expression"] == "none" and run["checkpointed"] is False
    assert run["threads"] == [] and run["totals"]["steps"] == 0
    assert "passthrough" in run["graph"]["mermaid"] and run["graph"]["choices"] == 1
    [call] = run["upstream_calls"]
    assert call["node"] == "passthrough" and call["messages"] == [{"role": "user", "content": "first"}]
    assert call["choices"][0]["text"] == "echo: first" and call["status"] == "ok"
    assert run["totals"]["calls"] == 1 and run["usage"]["calls"] == 1


def test_a_failed_run_shows_the_step_that_failed(tmp_path: Path) -> None:
    with start_stack(tmp_path / "failed.db", default_model="fake-model") as stack:
        stack.script.fn = lambda body, i: (
            HTTPFailure(400, "stage two refused")
            if last_user_text(body).startswith("echo:")
            else echo_responder(body, i)
        )
        ids: dict[str, str] = {}
        serve(stack, "failed", "none&none-fake-model", "hello", ids)
        run = get(stack, f"/v1/runs/{ids['failed']}")
        assert [r["id"] for r in get(stack, "/v1/runs", status="failed")["data"]] == [ids["failed"]]
    assert run["status"] == "failed" and "stage two refused" in run["error"]["error"]["message"]
    [thread] = run["threads"]
    assert thread["next"] == ["2.none"]  # where a resume would continue
    steps = thread["steps"]
    assert names(steps) == [["__start__"], ["1.none"], ["1.none/done"], ["2.none"]]
    last = steps[-1]
    assert last["status"] == "incomplete" and last["checkpoint_id"] is None and last["changes"] is None
    assert last["parent_checkpoint_id"] == thread["checkpoint_id"]
    task = last["tasks"][0]
    assert task["status"] == "error" and "stage two refused" in task["error"]
    assert task["steps"][-1]["tasks"][0]["name"] == "passthrough" and task["steps"][-1]["tasks"][0]["status"] == "error"
    assert [c["status"] for c in run["upstream_calls"]] == ["ok", "error"]
    assert "stage two refused" in run["upstream_calls"][1]["error"]
    assert run["totals"]["failed_calls"] == 1


def test_a_run_with_n_choices_has_one_thread_each(served: Served) -> None:
    run = get(served.stack, f"/v1/runs/{served.ids['n2']}")
    assert [t["thread_id"] for t in run["threads"]] == [f"{run['id']}.0", f"{run['id']}.1"]
    for thread in run["threads"]:
        assert names(thread["steps"]) == [["__start__"], ["none", "none#2"], ["collect"]]
    assert len(run["upstream_calls"]) == 4 and run["totals"]["steps"] == 6


def test_long_strings_are_cut(served: Served) -> None:
    run = get(served.stack, f"/v1/runs/{served.ids['long']}")
    content = run["upstream_calls"][0]["messages"][0]["content"]
    assert content.startswith("x" * 4096) and content.endswith("[1904 more characters]")
    assert run["request"]["messages"][0]["content"] == content
    short = get(served.stack, f"/v1/runs/{served.ids['long']}", max_chars=10)
    assert short["upstream_calls"][0]["messages"][0]["content"] == "x" * 10 + "... [5990 more characters]"
    whole = get(served.stack, f"/v1/runs/{served.ids['long']}", max_chars=0)
    assert whole["upstream_calls"][0]["messages"][0]["content"] == "x" * 6000


def test_an_unknown_run_is_a_404(served: Served) -> None:
    err = error(served.stack, "/v1/runs/no-such-run", 404)
    assert err["type"] == "not_found_error" and "no-such-run" in err["message"]


def test_runs_and_approaches_need_the_key_when_the_server_has_one(tmp_path: Path) -> None:
    with start_stack(tmp_path / "auth.db", api_key="sekret", default_model="fake-model") as stack:
        run_id = (
            stack.client(api_key="sekret")
            .chat.completions.with_raw_response.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
            .headers["x-optigraph-run-id"]
        )
        stack.run(run_id)
        with stack.http() as http:
            for path in ("/v1/runs", f"/v1/runs/{run_id}", "/v1/approaches", "/v1/approaches/bon"):
                assert http.get(path).status_code == 401
                assert http.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
                assert http.get(path, headers={"authorization": "Bearer sekret"}).status_code == 200, path


# ---- approaches --------------------------------------------------------------------------------


def test_approaches_are_listed_with_schema_and_cost(stack: Stack) -> None:
    registry = builtin_registry()
    data = get(stack, "/v1/approaches")["data"]
    assert [a["name"] for a in data] == list(registry.names())
    for a in data:
        spec = registry.get(a["name"])
        assert a["description"] == spec.description and a["calls"] == spec.calls and a["rounds"] == spec.rounds
        assert a["needs"] == sorted(spec.needs) and a["papers"] == list(spec.papers)
        assert a["streams_final"] is spec.streams_final
        assert a["parameters"]["type"] == "object" and "properties" in a["parameters"]
    bon = next(a for a in data if a["name"] == "bon")
    assert bon["parameters"]["properties"]["n"]["default"] == bon["defaults"]["n"]
    assert bon["default_calls"] == evaluate(bon["calls"], bon["defaults"])
    assert bon["expected_calls"] == bon["calls"] and bon["default_expected_calls"] == bon["default_calls"]
    cepo = next(a for a in data if a["name"] == "cepo")  # stops early: fewer calls expected than at most
    assert cepo["expected_calls"] == registry.get("cepo").expected_calls
    assert cepo["default_expected_calls"] == evaluate(cepo["expected_calls"], cepo["defaults"]) < cepo["default_calls"]


def default_calls(name: str) -> int:
    spec = builtin_registry().get(name)
    return evaluate(spec.calls, spec.params().model_dump())


def default_rounds(name: str) -> int:
    spec = builtin_registry().get(name)
    return evaluate(spec.rounds, spec.params().model_dump())


def test_a_compiled_expression_is_drawn_with_its_cost(stack: Stack) -> None:
    info = get(stack, "/v1/approaches/" + quote("bon&re2|moa", safe=""))
    assert info["expression"] == "bon&re2|moa" and info["choices"] == 2
    mermaid = info["mermaid"]
    assert mermaid.lstrip("-\n").startswith("config") or "graph TD" in mermaid
    for part in ("graph TD", "subgraph bon&re2", "subgraph moa", "subgraph 1.bon", "collect", "(rate)", "(critique)"):
        assert part in mermaid, part
    assert [a["name"] for a in info["approaches"]] == ["bon", "re2", "moa"]
    assert info["cost"]["calls"] == default_calls("bon") + default_calls("re2") + default_calls("moa")
    assert info["cost"]["rounds"] == max(default_rounds("bon") + default_rounds("re2"), default_rounds("moa"))
    spaced = get(stack, "/v1/approaches/" + quote("( bon & re2 ) | moa", safe=""))
    assert spaced["expression"] == "bon&re2|moa" and spaced["mermaid"] == mermaid
    lone = get(stack, "/v1/approaches/bon")
    assert lone["choices"] == 1 and all(n in lone["mermaid"] for n in ("sample", "rate", "select"))


def test_a_pipeline_after_a_parallel_costs_a_run_per_choice(stack: Stack) -> None:
    info = get(stack, "/v1/approaches/" + quote("(re2|moa)&bon", safe=""))
    assert info["choices"] == 2
    assert info["cost"]["calls"] == default_calls("re2") + default_calls("moa") + 2 * default_calls("bon")
    assert info["cost"]["expected_calls"] == info["cost"]["calls"]
    cepo = get(stack, "/v1/approaches/" + quote("re2&cepo", safe=""))["cost"]
    spec = builtin_registry().get("cepo")
    assert cepo["expected_calls"] == default_calls("re2") + evaluate(spec.expected_calls, spec.params().model_dump())


def test_a_bad_expression_is_a_400(stack: Stack) -> None:
    err = error(stack, "/v1/approaches/" + quote("bon&(re2", safe=""), 400)
    assert err["code"] == "invalid_approach_expression" and err["param"] == "expression"
    assert "position" in err["message"]
    err = error(stack, "/v1/approaches/no_such_approach", 400)
    assert err["code"] == "unknown_approach"


def test_the_openapi_document_describes_the_run_and_approach_responses(stack: Stack) -> None:
    spec = get(stack, "/openapi.json")
    schemas = spec["components"]["schemas"]

    def response_ref(path: str) -> str:
        return spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]

    assert response_ref("/v1/runs") == "#/components/schemas/RunList"
    assert response_ref("/v1/runs/{run_id}") == "#/components/schemas/RunDetail"
    assert response_ref("/v1/approaches") == "#/components/schemas/ApproachList"
    assert response_ref("/v1/approaches/{expression}") == "#/components/schemas/ExpressionInfo"
    assert {"threads", "upstream_calls", "totals", "graph"} <= set(schemas["RunDetail"]["properties"])
    assert "expected_calls" in schemas["ApproachInfo"]["required"]
    assert schemas["Step"]["properties"]["tasks"]["items"]["$ref"] == "#/components/schemas/Task"
