"""`optigraph eval` end to end: an optigraph server in front of the fake upstream, whose scripted
answers are right for some problems and wrong for others, so each approach's accuracy is known."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import HTTPFailure, ServerThread, UpstreamLog, make_app  # noqa: E402

from optigraph.api.app import create_app  # noqa: E402
from optigraph.cli import main  # noqa: E402
from optigraph.config import Settings  # noqa: E402
from optigraph.evals.problems import load_problems  # noqa: E402
from optigraph.nodes.rate import RATING_REQUEST  # noqa: E402

PROBLEMS = {p.id: p for p in load_problems()}
IDS = ["arith-01", "word-01", "word-02", "logic-01", "logic-02", "code-01"]
ANSWERS = {
    "arith-01": "47 * 23 = 1081, 156 / 12 = 13, 1081 - 13 + 89 = 1157.\nFinal answer: 1157",  # right
    "word-01": "4 * 3 + 6 * 1.25 = 19.5, so 50 - 19.5 = 31.\nFinal answer: 31",  # wrong (re2 gets it right)
    "logic-01": "Every bloop is a razzy and every razzy a lazzy.\nFinal answer: B",  # right
    "logic-02": "Final answer: Alice",  # wrong
    "code-01": "```python\ndef is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n"
    "    return t == t[::-1]\n```",  # right
}
RE2_WORD_01 = "4 * 3 + 6 * 1.25 = 19.5, so 50 - 19.5 = 30.5.\nFinal answer: $30.50"


def responder(body: dict[str, Any], index: int) -> Any:
    users = [m.get("content") or "" for m in body.get("messages") or [] if m.get("role") == "user"]
    if users and users[-1] == RATING_REQUEST:
        return "Rating: 8"
    text = "\n".join(str(u) for u in users)
    for pid in IDS:
        prompt = PROBLEMS[pid].prompt
        if prompt in text:
            if pid == "word-02":
                return HTTPFailure(400, "scripted failure for word-02")
            if pid == "word-01" and text.count(prompt) >= 2:  # re2 states the question twice
                return RE2_WORD_01
            return ANSWERS[pid]
    return "I do not know."


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, UpstreamLog]]:
    log = UpstreamLog()
    with ServerThread(make_app(responder, log=log)) as server:
        yield server, log


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    length, kind = struct.unpack(">I4s", data[8:16])
    crc_ok = zlib.crc32(data[12 : 16 + length]) == struct.unpack(">I", data[16 + length : 20 + length])[0]
    return crc_ok and width > 100 and height > 100 and data[-8:-4] == b"IEND"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["eval", *argv])
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_eval_in_process_server_in_front_of_an_upstream(
    upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, log = upstream
    out_dir = tmp_path / "out"
    code, stdout, stderr = run_cli(
        [
            "--approaches",
            "none,re2,bon",
            "--model",
            "fake-model",
            "--upstream",
            server.url + "/v1",
            "--ids",
            ",".join(IDS),
            "--concurrency",
            "3",
            "--max-tokens",
            "200",
            "--out",
            str(out_dir),
            "--params",
            '{"bon": {"n": 2}}',
        ],
        capsys,
    )  # sent only with bon (a server refuses others' params)
    assert code == 0, stderr
    main_table, by_category = stdout.split("correct by category:")
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in main_table.splitlines()
        if line.startswith("| ") and not line.startswith("| approach")
    }
    # accuracy, 95% interval, correct, errors, prompt tok, completion tok, upstream calls, mean wall s, total
    assert rows["none"][:4] == ["50.0%", "19-81%", "3/6", "1"]  # Wilson: 0.188-0.812
    assert rows["re2"][:4] == ["66.7%", "30-90%", "4/6", "1"]
    assert rows["bon"][:4] == ["50.0%", "19-81%", "3/6", "1"]
    assert rows["none"][6] == "1.0"  # per answered problem (a failed request reports no calls)
    assert rows["bon"][6] == "3.0"  # one call sampling n=2 candidates, then a rating for each
    assert float(rows["bon"][5]) > float(rows["none"][5])
    # paired with none on the same problems: re2 alone got word-01 right, bon agreed with none everywhere
    paired = by_category.split("paired with none on the same problems:")[1]
    assert "| re2      |     6 |          3 |             1 |         0 |       2 |     1.000 |" in paired
    assert "re2 right, none wrong: word-01" in paired and "none right, re2 wrong: -" in paired
    assert "bon right, none wrong: -" in paired
    assert "| re2      |        1/1 |  1/1 |   1/2 |  1/2 |" in by_category
    assert "3 request(s) failed (counted as wrong)" in stdout and "scripted failure for word-02" in stdout
    assert "bon: 100%" in stderr and "18/18" in stderr  # the progress bar, named after the running approach

    lines = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(IDS)
    assert [(r["approach"], r["id"]) for r in lines[: len(IDS)]] == [("none", pid) for pid in IDS]
    got = {(r["approach"], r["id"]): r for r in lines}
    assert got["none", "arith-01"]["correct"] and got["none", "arith-01"]["answer"] == "1157"
    assert got["none", "arith-01"]["upstream_calls"] == 1 and got["none", "arith-01"]["run_id"]
    assert got["none", "word-01"]["answer"] == "31" and not got["none", "word-01"]["correct"]
    assert got["re2", "word-01"]["correct"] and got["re2", "word-01"]["grade_method"] == "numeric"
    assert got["none", "code-01"]["correct"] and got["none", "code-01"]["grade_method"] == "code"
    assert got["none", "logic-02"]["answer"] == "Alice" and not got["none", "logic-02"]["correct"]
    failed = got["bon", "word-02"]
    assert not failed["correct"] and "400" in failed["error"] and "scripted failure" in failed["error"]
    assert all(r["wall_s"] > 0 and r["model"] == "fake-model" for r in lines)

    summary = json.loads((out_dir / "summary.json").read_text())
    assert [a["approach"] for a in summary["approaches"]] == ["none", "re2", "bon"]
    assert summary["approaches"][1]["accuracy"] == pytest.approx(4 / 6)
    assert summary["approaches"][0]["by_category"]["word"] == {"correct": 0, "problems": 2}
    assert is_png(out_dir / "plot.png")
    assert (out_dir / "optigraph.db").exists()  # the in-process server's runs, for inspection
    # Approaches were chosen with the model prefix and reached the upstream as the plain model.
    assert {b["model"] for b in log.bodies} == {"fake-model"}


def test_an_optigraph_endpoint_is_checked_before_running(
    upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, log = upstream
    settings = Settings(
        base_url=server.url + "/v1", db_url=f"sqlite:///{tmp_path / 'og.db'}", log_level="warning", api_key="server-key"
    )
    with ServerThread(create_app(settings)) as proxy:
        before = len(log.bodies)
        code, _, stderr = run_cli(
            [
                "--approaches",
                "none,bon&nosuch",
                "--model",
                "fake-model",
                "--api-key",
                "server-key",
                "--base-url",
                proxy.url + "/v1",
                "--out",
                str(tmp_path / "o"),
            ],
            capsys,
        )
        assert code == 2 and "unknown approach nosuch" in stderr
        code, _, stderr = run_cli(
            [
                "--approaches",
                "none",
                "--model",
                "fake-model",
                "--api-key",
                "wrong",
                "--base-url",
                proxy.url + "/v1",
                "--out",
                str(tmp_path / "o"),
            ],
            capsys,
        )
        assert code == 2 and "refused the key (401)" in stderr
    assert len(log.bodies) == before


def test_setup_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run_cli(["--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--model is required" in stderr
    code, _, stderr = run_cli(["--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--category", "nope"], capsys)
    assert code == 2 and "no problems" in stderr
    code, _, stderr = run_cli(["--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)], capsys)
    assert code == 2 and "cannot reach http://127.0.0.1:9/v1" in stderr


def test_against_a_plain_openai_endpoint(
    upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed straight at a server that is not optigraph, with a user's problem file: `none` sends the
    model name unchanged, and each answer counts as one upstream call."""
    server, log = upstream
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    problems = tmp_path / "mine.jsonl"
    problems.write_text(
        json.dumps({"id": "a1", "prompt": PROBLEMS["arith-01"].prompt, "answer": "1157"})
        + "\n"
        + json.dumps({"id": "lg", "prompt": PROBLEMS["logic-02"].prompt, "answer": "Carol", "grader": "exact"})
        + "\n"
    )
    before = len(log.bodies)
    code, stdout, stderr = run_cli(
        [
            "--approaches",
            "none",
            "--model",
            "fake-model",
            "--base-url",
            server.url + "/v1",
            "--problems",
            str(problems),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "| none     |    50.0% |        9-91% |     1/2 |      0 |" in stdout
    assert stderr == ""  # no progress bar
    assert [b["model"] for b in log.bodies[before:]] == ["fake-model", "fake-model"]
    assert log.headers[-1]["authorization"] == "Bearer k"
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["upstream_calls"] for r in rows] == [1, 1] and all(r["run_id"] is None for r in rows)


def test_generated_problems(upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("reasoning_gym")
    server, _ = upstream
    code, stdout, stderr = run_cli(
        [
            "--approaches",
            "none",
            "--model",
            "fake-model",
            "--base-url",
            server.url + "/v1",
            "--reasoning-gym",
            "basic_arithmetic",
            "--count",
            "3",
            "--seed",
            "5",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "| none     |     0.0% |        0-56% |     0/3 |" in stdout  # the scripted upstream knows none of them
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["basic_arithmetic-5-0", "basic_arithmetic-5-1", "basic_arithmetic-5-2"]
    assert all(r["category"] == "basic_arithmetic" and r["grader"] == "number" for r in rows)


def test_the_sandbox_level_reaches_the_eval_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optigraph.cli import parser
    from optigraph.evals.runner import config_from_args

    base = ["eval", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]
    assert config_from_args(parser().parse_args(base)).sandbox_level == "strict"
    assert config_from_args(parser().parse_args([*base, "--sandbox-level", "reduced"])).sandbox_level == "reduced"
    with pytest.raises(SystemExit) as done:
        parser().parse_args([*base, "--sandbox-level", "loose"])
    assert done.value.code == 2 and "invalid choice: 'loose'" in capsys.readouterr().err


def test_trials_send_different_seeds_and_saved_results_report_again(
    upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--trials runs every problem once per trial with seed + trial; --results reports saved runs again
    (pooled, with intervals and the paired comparison) without sending anything."""
    server, log = upstream
    out_dir = tmp_path / "trials"
    before = len(log.bodies)
    common = ["--model", "fake-model", "--base-url", server.url + "/v1", "--ids", "arith-01,word-01"]
    code, stdout, stderr = run_cli(
        [*common, "--approaches", "none", "--trials", "2", "--seed", "40", "--out", str(out_dir)], capsys
    )
    assert code == 0, stderr
    sent = log.bodies[before:]
    assert sorted(b["seed"] for b in sent) == [40, 40, 41, 41]
    lines = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], r["trial"], r["seed"]) for r in lines] == [
        ("arith-01", 0, 40),
        ("word-01", 0, 40),
        ("arith-01", 1, 41),
        ("word-01", 1, 41),
    ]
    assert "2 problems, 2 trials" in stdout and "none: accuracy per trial 50.0%, 50.0%" in stdout
    assert "| none     |    50.0% |       15-85% |     2/4 |" in stdout  # Wilson 2/4: 0.150-0.850

    # a second "approach" saved elsewhere: the same problems, every answer right
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "approach": "pal", "correct": True}) + "\n" for r in lines))
    during = len(log.bodies)
    code, stdout, stderr = run_cli(["--results", str(out_dir), str(other), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, stderr
    assert len(log.bodies) == during  # nothing sent
    assert "| pal      |   100.0% |      51-100% |     4/4 |" in stdout
    assert "pal right, none wrong: word-01, word-01#1" in stdout
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["paired"][0]["only_approach"] == ["word-01", "word-01#1"]
    assert summary["paired"][0]["p_value"] == pytest.approx(0.5)
    assert is_png(tmp_path / "rep" / "plot.png")
    code, stdout, stderr = run_cli(
        ["--results", str(out_dir), str(other), "--ids", "arith-01", "--out", str(tmp_path / "rep1")], capsys
    )
    assert code == 0 and "| pal      |   100.0% |" in stdout and "2/2" in stdout and "word-01" not in stdout
    code, _, stderr = run_cli(["--results", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "rep2")], capsys)
    assert code == 2 and "cannot read results" in stderr
