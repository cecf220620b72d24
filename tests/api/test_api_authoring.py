"""Approaches authored outside optigraph (the worked examples of docs/authoring.md: a Python module
and a YAML spec), loaded from an approaches directory at start and used in expressions through the
real server; what reached the upstream proves what ran. A clash stops the start."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, last_user_text, start_stack

from optigraph.api.app import create_app
from optigraph.config import Settings
from optigraph.engine.loading import load_registry
from optigraph.errors import ApproachLoadError
from optigraph.nodes.rate import RATING_REQUEST

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)
QUESTION = [{"role": "user", "content": "Name a prime."}]


def write_examples(directory: Path) -> Path:
    for name, text in EXAMPLE.findall((ROOT / "docs" / "authoring.md").read_text()):
        (directory / name).write_text(text)
    return directory


def responder(body: dict[str, Any], index: int) -> str:
    """Samples answer `candidate <i>`; ratings give candidate 1 a 9 and the others a 2; anything else
    echoes its system instruction and question."""
    messages = body.get("messages") or []
    if last_user_text(body) == RATING_REQUEST:
        return "9" if messages[-2]["content"] == "candidate 1" else "Rating: 2/10"
    if body.get("n", 1) > 1:
        return f"candidate {index}"
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    return f"[{system}] {last_user_text(body)}"


@pytest.fixture(scope="module")
def authored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = write_examples(tmp_path_factory.mktemp("approaches"))
    with start_stack(
        tmp_path_factory.mktemp("authoring") / "a.db", default_model="fake-model", approaches_dir=directory
    ) as s:
        yield s


@pytest.fixture
def stack(authored: Stack) -> Iterator[Stack]:
    authored.reset()
    authored.script.fn = responder
    yield authored
    authored.reset()


def test_yaml_and_python_approaches_in_one_expression(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="my_bon&shout-fake-model",
        messages=QUESTION,
        temperature=0.7,
        extra_body={"optillm_params": {"my_bon": {"k": 3}, "shout": {"style": "in one word"}}},
    )
    r = raw.parse()
    assert r.choices[0].message.content == "[Answer in one word.] candidate 1"
    ext = r.model_extra["optigraph"]
    assert ext["approach"] == "my_bon&shout" and ext["upstream_calls"] == 1 + 3 + 1

    bodies = stack.log.bodies
    sample, ratings, final = bodies[0], bodies[1:4], bodies[4]
    assert sample["n"] == 3 and sample["temperature"] == 0.7 and sample["messages"] == QUESTION
    assert sorted(b["messages"][-2]["content"] for b in ratings) == ["candidate 0", "candidate 1", "candidate 2"]
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 256 and "n" not in b for b in ratings)
    assert final["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "candidate 1"},
    ]

    run = stack.run(raw.headers["x-optigraph-run-id"])
    assert run["status"] == "completed"
    calls = stack.calls(run["id"])
    assert len(calls) == 5 and all(c["request"] for c in calls)


def test_yaml_approach_defaults_and_parallel_with_a_builtin(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model="my_bon|re2-fake-model", messages=QUESTION)
    assert [c.message.content for c in r.choices] == [
        "candidate 1",
        "[] Name a prime.\nRead the question again: Name a prime.",
    ]
    assert r.model_extra["optigraph"]["upstream_calls"] == 1 + 4 + 1  # k defaults to 4; re2 makes one call
    sample = next(b for b in stack.log.bodies if b.get("n"))
    assert sample["n"] == 4 and sample["temperature"] == 1.0


def test_python_approach_streams(stack: Stack) -> None:
    chunks = list(stack.client().chat.completions.create(model="shout-fake-model", messages=QUESTION, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[Answer in capital letters.] Name a prime."
    assert stack.log.bodies[0]["stream"] is True


def test_bad_parameter_of_a_yaml_approach_is_a_400(stack: Stack) -> None:
    with stack.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "my_bon-fake-model", "messages": QUESTION, "optillm_params": {"my_bon": {"k": 99}}},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "optillm_params.my_bon.k"
    assert stack.log.bodies == []


def test_listed_with_schema_and_cost(stack: Stack) -> None:
    with stack.http() as http:
        listed = {a["name"]: a for a in http.get("/v1/approaches").json()["data"]}
        shown = http.get("/v1/approaches/my_bon").json()
    assert {"my_bon", "shout", "bon"} <= set(listed)
    assert listed["my_bon"]["calls"] == "1 + k"
    assert "k" in str(listed["my_bon"]) and "style" in str(listed["shout"])
    assert "judge" in str(shown)


def test_clash_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "re2.yaml").write_text("name: re2\nnodes:\n  g: {kind: generate, reread: true}\n")
    settings = Settings(
        base_url="http://127.0.0.1:9/v1", db_url=f"sqlite:///{tmp_path / 'x.db'}", approaches_dir=tmp_path
    )
    with pytest.raises(ApproachLoadError, match=r"re2\.yaml: approach 're2' is already registered"):
        create_app(settings)


def test_bad_spec_stops_the_start_and_the_command_says_where(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "broken.yaml").write_text("name: broken\nnodes:\n  g: {kind: generat}\n")
    with pytest.raises(ApproachLoadError, match=r"broken\.yaml:3: node 'g': unknown node kind 'generat'"):
        load_registry(approaches_dir=tmp_path, entry_points=False)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "optigraph",
            "serve",
            "--approaches-dir",
            str(tmp_path),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--db-url",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{tmp_path / 'broken.yaml'}:3: node 'g': unknown node kind 'generat'" in done.stderr
    assert "Traceback" not in done.stderr
