"""The memory plugin through the real server with the official openai client: a conversation
remembered across requests (stored in the SQLite file; on PostgreSQL, shared by two servers), and a
document many times a model's context reduced to what the question needs."""

from __future__ import annotations

import random
import sqlite3
import uuid
from typing import Any

import httpx
import openai
import pytest
from api_stack import Stack, last_user_text
from upstream import ServerThread, UpstreamLog, echo_responder, make_app

from optigraph.api.app import create_app
from optigraph.config import Settings

FACT = "My flight is BA117, it leaves gate 22 at 07:40."
QUESTION = "Which gate does my flight leave from?"


def memory(conversation: str, **params: Any) -> dict[str, Any]:
    return {"optillm_params": {"memory": {"conversation": conversation, **params}}}


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"])


def stored_chunks(stack: Stack, conversation: str) -> list[tuple[str, str, str | None]]:
    con = sqlite3.connect(stack.db_path, timeout=5)
    try:
        return con.execute(
            "SELECT role, text, tenant FROM memory_chunks WHERE conversation = ? ORDER BY id", (conversation,)
        ).fetchall()
    finally:
        con.close()


def test_a_conversation_is_remembered_across_requests_and_stored_in_the_database(stack: Stack) -> None:
    client = stack.client()
    first = client.chat.completions.create(
        model="memory&none-fake-model", extra_body=memory("trip-42"), messages=[{"role": "user", "content": FACT}]
    )
    assert first.choices[0].message.content == "echo: " + FACT
    # kept under the run's tenant: an open server's callers are the tenant "default"
    assert stored_chunks(stack, "trip-42") == [("user", FACT, "default"), ("assistant", "echo: " + FACT, "default")]

    stream = client.chat.completions.create(
        model="memory&none-fake-model",
        extra_body=memory("trip-42"),
        stream=True,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == "echo: " + QUESTION  # it streams as usual
    second = stack.log.bodies[1]
    assert [m["role"] for m in second["messages"]] == ["system", "system", "user"]
    assert "gate 22" in second["messages"][1]["content"] and last_user_text(second) == QUESTION
    assert [row[1] for row in stored_chunks(stack, "trip-42")][2:] == [QUESTION, "echo: " + QUESTION]

    client.chat.completions.create(
        model="memory&none-fake-model",
        extra_body=memory("another-trip"),
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert "gate 22" not in prompt_text(stack.log.bodies[2])  # another conversation recalls nothing of it


def test_without_a_conversation_id_nothing_is_stored(stack: Stack) -> None:
    con = sqlite3.connect(stack.db_path, timeout=5)
    before = con.execute("SELECT count(*) FROM memory_chunks").fetchone()[0]
    stack.client().chat.completions.create(
        model="memory&none-fake-model", messages=[{"role": "user", "content": "Nothing to keep."}]
    )
    assert con.execute("SELECT count(*) FROM memory_chunks").fetchone()[0] == before
    con.close()


def test_a_document_far_over_the_limit_reaches_the_upstream_reduced_to_the_fact(stack: Stack) -> None:
    rng = random.Random(5)
    words = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "heath", "inlet", "jetty"]
    sentences = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(5000)]  # 60,000 words
    sentences.insert(2500, FACT)
    response = stack.client().chat.completions.create(
        model="memory&none-fake-model",
        extra_body={"optillm_params": {"memory": {"max_context_tokens": 3000}}},
        messages=[{"role": "system", "content": " ".join(sentences)}, {"role": "user", "content": QUESTION}],
    )
    assert response.choices[0].message.content == "echo: " + QUESTION
    [sent] = stack.log.bodies
    assert len(prompt_text(sent)) <= 3000 * 4 and FACT in sent["messages"][0]["content"]
    assert last_user_text(sent) == QUESTION


def test_bad_memory_parameters_are_a_400_naming_them(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        stack.client().chat.completions.create(
            model="memory&none-fake-model",
            extra_body=memory("x", top_k=0),
            messages=[{"role": "user", "content": "hi"}],
        )
    assert err.value.body["param"] == "optillm_params.memory.top_k"
    assert err.value.body["code"] == "invalid_approach_parameter"
    assert stack.log.bodies == []


def test_on_postgresql_two_servers_share_a_conversation(postgres_url: str) -> None:
    log = UpstreamLog()
    with ServerThread(make_app(echo_responder, log=log)) as up:
        settings = Settings(base_url=up.url + "/v1", db_url=postgres_url, default_model="fake-model")
        with ServerThread(create_app(settings)) as a, ServerThread(create_app(settings)) as b:
            conversation = f"pg-{uuid.uuid4().hex}"  # the session's database is shared
            for server, text in ((a, FACT), (b, QUESTION)):
                r = httpx.post(
                    server.url + "/v1/chat/completions",
                    timeout=30,
                    json={
                        "model": "memory&none-fake-model",
                        "messages": [{"role": "user", "content": text}],
                        **memory(conversation),
                    },
                )
                assert r.status_code == 200, r.text
    assert "gate 22" in log.bodies[1]["messages"][0]["content"]
    assert log.bodies[1]["messages"][0]["role"] == "system" and last_user_text(log.bodies[1]) == QUESTION
