"""--log-conversations writes OptILLM's conversation-log JSONL from the runs table, and
`optigraph runs export --format jsonl [--since]` writes the same lines offline from the database."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from api_stack import Stack, start_stack
from upstream import HTTPFailure

from optigraph.cli import main as cli_main

OPTILLM_KEYS = [
    "timestamp",
    "request_id",
    "approach",
    "model",
    "client_request",
    "provider_calls",
    "final_response",
    "total_duration_ms",
    "error",
]
HELLO = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("conversation_log")
    with start_stack(
        root / "c.db", default_model="fake-model", log_conversations=True, conversation_log_dir=root / "logs"
    ) as s:
        yield s, root / "logs"


def logged_lines(directory: Path, count: int) -> list[dict[str, Any]]:
    """The log's lines once it holds `count` (the log is written in the background)."""
    deadline = time.monotonic() + 30  # a hang guard, not a timing check
    while True:
        lines = [
            json.loads(x) for f in sorted(directory.glob("conversations_*.jsonl")) for x in f.read_text().splitlines()
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_each_finished_run_is_logged_in_optillms_format_and_export_writes_the_same(
    logged: tuple[Stack, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, directory = logged
    client = stack.client()
    plain = client.chat.completions.with_raw_response.create(model="fake-model", messages=HELLO, temperature=0.5)
    streamed = client.chat.completions.with_raw_response.create(model="fake-model", messages=HELLO, stream=True)
    "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    bon = client.chat.completions.with_raw_response.create(model="bon-fake-model", messages=HELLO)
    stack.script.fn = lambda body, i: HTTPFailure(400, {"error": {"message": "no such model"}})
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model="moa-fake-model", messages=HELLO)
    ids = [
        plain.headers["x-optigraph-run-id"],
        streamed.headers["x-optigraph-run-id"],
        bon.headers["x-optigraph-run-id"],
        failed.value.response.headers["x-optigraph-run-id"],
    ]
    lines = {entry["request_id"]: entry for entry in logged_lines(directory, len(ids))}
    assert set(ids) <= set(lines)

    first = lines[ids[0]]
    assert list(first) == OPTILLM_KEYS
    assert first["approach"] == "none" and first["model"] == "fake-model" and first["error"] is None
    assert first["client_request"]["temperature"] == 0.5 and first["client_request"]["messages"] == HELLO
    (call,) = first["provider_calls"]
    assert call["call_number"] == 1 and call["request"]["messages"] == HELLO and call["request"]["temperature"] == 0.5
    assert call["response"]["choices"][0]["message"]["content"] == "echo: What is 6 times 7?"
    assert call["response"]["usage"]["completion_tokens"] > 0
    assert first["final_response"]["choices"][0]["message"]["content"] == "echo: What is 6 times 7?"
    assert first["final_response"]["timestamp"] and first["total_duration_ms"] >= 0

    # a streamed answer is rebuilt from what was stored
    assert lines[ids[1]]["final_response"]["choices"][0]["message"]["content"] == "echo: What is 6 times 7?"
    # every upstream call of bon, numbered in order; the answer is bon's
    run = stack.run(ids[2])
    assert [c["call_number"] for c in lines[ids[2]]["provider_calls"]] == list(range(1, run["calls"] + 1))
    assert lines[ids[2]]["approach"] == "bon"
    # a failed run: its error message, no final response
    assert "no such model" in lines[ids[3]]["error"] and lines[ids[3]]["final_response"] is None

    # offline, from the database: the same lines
    url = f"sqlite:///{stack.db_path}"
    code, exported, _ = _export(capsys, "--db-url", url)
    assert code == 0
    by_id = {e["request_id"]: e for e in exported}
    assert all(by_id[run_id] == lines[run_id] for run_id in ids)
    # --since: runs created at or after it
    assert _export(capsys, "--db-url", url, "--since", "2999-01-01")[:2] == (0, [])
    since = [e["request_id"] for e in _export(capsys, "--db-url", url, "--since", lines[ids[2]]["timestamp"])[1]]
    assert ids[2] in since and ids[3] in since and ids[0] not in since and ids[1] not in since
    # --out-dir: OptILLM's daily files, named like the live log's
    assert _export(capsys, "--db-url", url, "--out-dir", str(tmp_path / "out"))[0] == 0
    names = sorted(f.name for f in directory.glob("*.jsonl"))
    assert all(re.fullmatch(r"conversations_\d{4}-\d{2}-\d{2}\.jsonl", n) for n in names)
    assert sorted(f.name for f in (tmp_path / "out").glob("*.jsonl")) == names
    written = [json.loads(x) for f in (tmp_path / "out").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert {e["request_id"] for e in written} == set(by_id)


def test_export_refuses_a_bad_since_and_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _export(capsys, "--db-url", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 1 and "no database" in err
    code, _, err = _export(capsys, "--db-url", f"sqlite:///{tmp_path / 'none.db'}", "--since", "yesterday")
    assert code == 1 and "--since 'yesterday'" in err


def _export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    """`optigraph runs export --format jsonl ARGV`: exit status, the JSON lines printed, stderr."""
    try:
        cli_main(["runs", "export", "--format", "jsonl", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, [json.loads(x) for x in captured.out.splitlines()], captured.err
