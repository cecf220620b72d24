"""Plugins end to end through the real server with the official openai client: the built-in privacy,
readurls and json plugins, the worked examples of docs/plugins.md (Python and YAML) loaded from a
directory, a router whose decision shows in the run, a named second upstream, and a resume mid-way."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, last_user_text, start_stack
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from upstream import HTTPFailure, ServerThread, UpstreamLog, echo_responder, make_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)
PII = {"email": "jane.roe@example.org", "phone": "+1 415 555 0134", "card": "4111 1111 1111 1111"}
PAGE = "<html><body><h1>Menu</h1><p>Today: lentil soup.</p></body></html>"
SECOND_KEY = "second-upstream-secret"

TEST_PLUGINS = """
from optigraph.core.spec import PluginSpec


async def choose(state, runtime):
    text = state["messages"][-1]["content"]
    if "think hard" in text:
        return {"route": "re2", "reason": "asked to think hard"}
    return {}


async def ask_second(state, runtime):
    llm = runtime.context.llm_for("second", "second-model")
    reply = await llm.chat([{"role": "user", "content": "second opinion?"}], node="second_opinion.ask")
    note = {"role": "system", "content": "A colleague says: " + reply.text}
    return {"messages": [note, *state["messages"]], "usage": reply.usage}


SPECS = [
    PluginSpec(name="router_test", description="routes on a keyword", pre=choose, routes=True),
    PluginSpec(name="second_opinion", description="asks the second upstream first", pre=ask_second),
]
"""


def site() -> Starlette:
    async def page(request: Any) -> Response:
        return Response(PAGE, media_type="text/html")

    return Starlette(routes=[Route("/menu", page)])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("plugins")
    for name, text in EXAMPLE.findall((ROOT / "docs" / "plugins.md").read_text()):
        (directory / name).write_text(text)
    (directory / "test_plugins.py").write_text(TEST_PLUGINS)
    second_log = UpstreamLog()
    mp = pytest.MonkeyPatch()
    mp.setenv("OPTIGRAPH_UPSTREAM_SECOND_API_KEY", SECOND_KEY)
    with ServerThread(site()) as pages, ServerThread(make_app(lambda body, i: "looks fine", log=second_log)) as second:
        from optigraph.config import UpstreamSettings

        with start_stack(
            tmp_path_factory.mktemp("db") / "p.db",
            default_model="fake-model",
            approaches_dir=directory,
            readurls_allow=["127.0.0.1"],
            upstreams={"second": UpstreamSettings(url=second.url + "/v1")},
        ) as stack:
            yield {"stack": stack, "pages": pages, "second": second_log}
    mp.undo()


@pytest.fixture
def stack(env: dict[str, Any]) -> Iterator[Stack]:
    env["stack"].reset()
    env["second"].bodies.clear()
    yield env["stack"]
    env["stack"].reset()


def question_with_pii() -> str:
    return f"I am {PII['email']}, phone {PII['phone']}, card {PII['card']}. Repeat my details."


def stored_calls_text(stack: Stack, run_id: str) -> str:
    stack.run(run_id)  # written in the background: wait until the run is stored as finished
    calls = stack.calls(run_id)
    assert calls, "the run's upstream calls were recorded"
    return json.dumps(calls)


def test_plugins_are_listed_with_their_kind(stack: Stack) -> None:
    with stack.http() as http:
        data = http.get("/v1/approaches").json()["data"]
    kinds = {d["name"]: d for d in data}
    assert kinds["privacy"]["kind"] == "plugin" and kinds["privacy"]["stages"] == ["pre", "post"]
    assert kinds["privacy"]["streams_through"] is True
    assert kinds["readurls"]["stages"] == ["pre"] and kinds["readurls"]["needs"] == ["network"]
    assert kinds["json"]["stages"] == ["pre", "post"]
    assert kinds["signed"]["kind"] == "plugin" and kinds["house_style"]["kind"] == "plugin"
    assert kinds["bon"]["kind"] == "approach"


def test_privacy_keeps_personal_data_away_from_the_upstream_and_its_records(stack: Stack) -> None:
    response = stack.client().chat.completions.create(
        model="privacy&none-fake-model", messages=[{"role": "user", "content": question_with_pii()}]
    )
    answer = response.choices[0].message.content
    assert answer == "echo: " + question_with_pii()
    run_id = response.model_extra["optigraph"]["run_id"]
    sent = json.dumps(stack.log.bodies)
    stored = stored_calls_text(stack, run_id)
    for value in PII.values():
        assert value not in sent and value not in stored
    assert "[EMAIL_1]" in sent and "[PHONE_1]" in sent and "[CARD_1]" in sent
    assert stack.run(run_id)["status"] == "completed"


def checkpoints(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    """Every checkpoint of the run (its own and its subgraphs'), decoded as LangGraph wrote it, in order."""
    import sqlite3

    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    with sqlite3.connect(stack.db_path) as db:
        rows = db.execute(
            "SELECT checkpoint_ns, type, checkpoint FROM checkpoints WHERE thread_id = ? ORDER BY checkpoint_id",
            (run_id,),
        ).fetchall()
    return [{"ns": ns, **serde.loads_typed((kind, blob))} for ns, kind, blob in rows]


@pytest.mark.parametrize("stream", [False, True])
def test_privacy_at_the_edge_nothing_stored_holds_the_originals(stack: Stack, stream: bool) -> None:
    """What docs/plugins.md says is stored: with privacy first in the expression, the run's stored request,
    its resume spec, every checkpoint (the graph's input and its final state included), every upstream call
    and the stored answer hold placeholders; the mapping is kept only as a token the server's privacy_key
    opens; the client alone gets the originals back."""
    from optigraph.core.context import RunContext
    from optigraph.plugins.privacy import _fernet, unseal

    with stack.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "privacy&none-fake-model",
                "stream": stream,
                "user": PII["email"],
                "messages": [{"role": "user", "content": question_with_pii()}],
            },
        )
    assert r.status_code == 200
    assert PII["card"] in r.text, "the client's copy of the echoed answer is restored"
    run_id = r.headers["x-optigraph-run-id"]
    run = stack.run(run_id)
    assert run["status"] == "completed"
    sent, calls = json.dumps(stack.log.bodies), stored_calls_text(stack, run_id)
    stored_run = json.dumps(run, default=str)
    assert "[EMAIL_1]" in stored_run and "[CARD_1]" in stored_run
    for value in PII.values():
        assert value not in sent and value not in calls and value not in stored_run
    saved = checkpoints(stack, run_id)
    assert [c for c in saved if c["ns"]], "the wrapped approach's own checkpoints are there too"
    for c in saved:
        values = json.dumps(c["channel_values"], default=str)
        assert all(v not in values for v in PII.values()), c["ns"]
    first = next(c for c in saved if "messages" in c["channel_values"])
    assert "[EMAIL_1]" in json.dumps(first["channel_values"]["messages"]), "the graph's input is anonymized"
    assert "[CARD_1]" in json.dumps(saved[-1]["channel_values"]["answers"]), "the stored answer keeps placeholders"
    token = saved[-1]["channel_values"]["private"]["mapping"]
    assert all(v not in token for v in PII.values())
    context = RunContext(run_id=run_id, llm=None, settings=stack.settings)  # type: ignore[arg-type]
    mapping = unseal({"mapping": token}, _fernet(context))
    assert mapping == {"[EMAIL_1]": PII["email"], "[PHONE_1]": PII["phone"], "[CARD_1]": PII["card"]}


def test_privacy_a_forked_run_answers_its_client_with_the_originals(stack: Stack) -> None:
    """A fork of a privacy run starts from a stored checkpoint (placeholders only) and still restores the
    answer for its client: the mapping travels encrypted in the run's state."""
    first = stack.client().chat.completions.with_raw_response.create(
        model="privacy&none-fake-model", messages=[{"role": "user", "content": question_with_pii()}]
    )
    run_id = first.headers["x-optigraph-run-id"]
    stack.run(run_id)
    with stack.http() as http:
        r = http.post(f"/v1/runs/{run_id}/fork", json={})
    assert r.status_code == 200, r.text
    assert PII["phone"] in r.json()["choices"][0]["message"]["content"]
    stored = json.dumps(stack.run(r.json()["optigraph"]["run_id"]), default=str)
    assert all(v not in stored for v in PII.values())


def test_privacy_further_in_the_expression_works_as_a_wrapper(stack: Stack) -> None:
    """Not first (`readurls&privacy&none`), the plugin still keeps the originals from the upstream and restores
    them in the answer; what comes before it (the run's input) is the client's own text."""
    reply = stack.client().chat.completions.create(
        model="readurls&privacy&none-fake-model", messages=[{"role": "user", "content": question_with_pii()}]
    )
    assert PII["card"] in reply.choices[0].message.content
    assert all(v not in json.dumps(stack.log.bodies) for v in PII.values())


def test_privacy_restores_a_streamed_answer(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="privacy&none-fake-model", stream=True, messages=[{"role": "user", "content": question_with_pii()}]
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5
    assert "".join(pieces) == "echo: " + question_with_pii()
    assert not any("[EMAIL" in p or "[PHONE" in p for p in pieces)
    for value in PII.values():
        assert value not in json.dumps(stack.log.bodies)


def test_readurls_adds_the_page_to_the_question(env: dict[str, Any], stack: Stack) -> None:
    url = env["pages"].url + "/menu"
    response = stack.client().chat.completions.create(
        model="readurls&none-fake-model", messages=[{"role": "user", "content": f"What is on {url} today?"}]
    )
    sent = last_user_text(stack.log.bodies[0])
    assert sent.startswith(f"What is on {url} today?") and "Today: lentil soup." in sent
    assert "lentil soup" in response.choices[0].message.content


def test_json_answers_validate_against_the_schema_after_a_repair(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"dish": {"type": "string"}, "vegan": {"type": "boolean"}},
        "required": ["dish", "vegan"],
        "additionalProperties": False,
    }
    answers = iter(['Here you go: {"dish": "soup"}', '{"dish": "soup", "vegan": true}'])
    stack.script.fn = lambda body, i: next(answers)
    response = stack.client().chat.completions.create(
        model="json&none-fake-model",
        messages=[{"role": "user", "content": "Today's dish?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "dish", "schema": schema}},
    )
    assert json.loads(response.choices[0].message.content) == {"dish": "soup", "vegan": True}
    assert len(stack.log.bodies) == 2
    assert all(b["response_format"]["type"] == "json_schema" for b in stack.log.bodies)
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    nodes = [c["node"] for c in stack.calls(run_id)]
    assert nodes == ["passthrough", "json.repair"]


def test_the_documented_python_and_yaml_plugins_work_in_an_expression(stack: Stack) -> None:
    response = stack.client().chat.completions.create(
        model="signed&house_style&none-fake-model",
        messages=[{"role": "user", "content": "Which color?"}],
        extra_body={"optillm_params": {"signed": {"tone": "casual", "signature": "-- Kim"}}},
    )
    sent = stack.log.bodies[0]["messages"]
    assert sent[0] == {"role": "system", "content": "Answer in a casual tone.\n\nUse British spelling."}
    assert response.choices[0].message.content == "echo: Which colour?\n(house style)\n\n-- Kim"


def test_a_routing_decision_is_recorded_in_the_run(stack: Stack) -> None:
    response = stack.client().chat.completions.create(
        model="router_test&none-fake-model", messages=[{"role": "user", "content": "please think hard"}]
    )
    assert "Read the question again" in last_user_text(stack.log.bodies[0])
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    with stack.http() as http:
        detail = http.get(f"/v1/runs/{run_id}").json()
        page = http.get(f"/ui/runs/{run_id}").text
    assert detail["threads"][0]["decisions"] == [
        {"node": "router_test.run", "plugin": "router_test", "route": "re2", "reason": "asked to think hard"}
    ]
    assert "asked to think hard" in page and "id='decisions'" in page


def test_a_plugin_reaches_a_named_upstream_with_its_own_key(env: dict[str, Any], stack: Stack) -> None:
    response = stack.client(api_key="client-key").chat.completions.create(
        model="second_opinion&none-fake-model", messages=[{"role": "user", "content": "Is it safe?"}]
    )
    second = env["second"]
    assert [b["model"] for b in second.bodies] == ["second-model"]
    assert second.headers[0]["authorization"] == f"Bearer {SECOND_KEY}"  # its own key, not the client's
    assert stack.log.bodies[0]["messages"][0] == {"role": "system", "content": "A colleague says: looks fine"}
    run_id = response.model_extra["optigraph"]["run_id"]
    assert response.model_extra["optigraph"]["upstream_calls"] == 2
    stack.run(run_id)
    backends = sorted(c["backend"] for c in stack.calls(run_id))
    assert backends == ["openai", "openai:second"]


def test_a_run_that_failed_inside_the_wrapped_part_resumes_with_its_private_state(stack: Stack) -> None:
    broken = {"on": True}

    def fail_second_stage(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body).startswith("echo:"):
            return HTTPFailure(400, "stage two is broken")
        return echo_responder(body, index)

    stack.script.fn = fail_second_stage
    with stack.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "privacy&none&none-fake-model",
                "messages": [{"role": "user", "content": question_with_pii()}],
            },
        )
    run_id = r.headers["x-optigraph-run-id"]
    assert r.status_code == 400 and stack.run(run_id)["status"] == "failed"
    assert len(stack.log.bodies) == 2
    broken["on"] = False
    with stack.http() as http:
        r = http.post(f"/v1/runs/{run_id}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: echo: " + question_with_pii()
    assert len(stack.log.bodies) == 3  # only the failed stage ran again; privacy.pre did not run twice
    assert all(v not in json.dumps(stack.log.bodies) for v in PII.values())


def test_a_restarted_server_restores_a_resumed_privacy_run_only_with_the_same_key(tmp_path: Path) -> None:
    """Documented: the mapping is encrypted with OPTIGRAPH_PRIVACY_KEY; a server started with
    another key says so (409) before running anything again, and the right key resumes."""
    db = tmp_path / "restart.db"

    def fail_second_stage(body: dict[str, Any], index: int) -> Any:
        if last_user_text(body).startswith("echo:"):
            return HTTPFailure(400, "stage two is broken")
        return echo_responder(body, index)

    body = {"model": "privacy&none&none-fake-model", "messages": [{"role": "user", "content": question_with_pii()}]}
    with start_stack(db, default_model="fake-model", privacy_key="the first key") as first:
        first.script.fn = fail_second_stage
        with first.http() as http:
            r = http.post("/v1/chat/completions", json=body)
        run_id = r.headers["x-optigraph-run-id"]
        assert r.status_code == 400 and first.run(run_id)["status"] == "failed"
    with start_stack(db, default_model="fake-model", privacy_key="another key") as second:
        with second.http() as http:
            r = http.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "privacy_key_changed"
        assert not second.log.bodies, "nothing ran again"
        assert second.run(run_id)["status"] == "failed"
    with start_stack(db, default_model="fake-model", privacy_key="the first key") as third:
        with third.http() as http:
            r = http.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "echo: echo: " + question_with_pii()
        assert all(v not in json.dumps(third.log.bodies) for v in PII.values())
