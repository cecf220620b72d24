"""Adaptive self-consistency replayed on a fixed run's recorded samples (evals/replay.py): the
approach's own stopping rule and vote, over samples taken in the order they were recorded."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread, make_app  # noqa: E402

from optigraph.cli import main  # noqa: E402
from optigraph.evals.problems import load_problems  # noqa: E402
from optigraph.evals.replay import Sample, replay_one  # noqa: E402
from optigraph.graphs.self_consistency import SelfConsistencyParams  # noqa: E402

RULE = SelfConsistencyParams.model_validate({"adaptive": True}).model_dump()
PROBLEMS = {p.id: p for p in load_problems()}


def sample(text: str, *, completion_tokens: int = 10, finish: str = "stop") -> Sample:
    message = {"role": "assistant", "content": text}
    return Sample({"text": text, "message": message, "finish_reason": finish}, 3, completion_tokens)


def replay(texts: list[str], **kw: Any) -> Any:
    return asyncio.run(replay_one([sample(t, **kw) for t in texts], RULE))


def test_two_agreeing_samples_settle_the_vote() -> None:
    got = replay(["Final answer: 7", "Final answer: 7", "Final answer: 9", "Final answer: 9", "Final answer: 9"])
    assert (got.drawn, got.rounds) == (2, 1)
    assert got.answer.endswith("7")  # the fixed vote over all five would say 9
    assert (got.prompt_tokens, got.completion_tokens) == (6, 20)


def test_a_split_vote_draws_until_the_lead_is_two() -> None:
    got = replay(["Final answer: 7", "Final answer: 9", "Final answer: 9", "Final answer: 9", "Final answer: 7"])
    assert (got.drawn, got.rounds) == (4, 2)
    assert got.answer.endswith("9")
    got = replay([f"Final answer: {i}" for i in range(5)])  # never settled: the whole budget
    assert (got.drawn, got.rounds, got.completion_tokens) == (5, 3, 50)


def test_cut_samples_do_not_vote() -> None:
    samples = [sample("Final answer: 4", finish="length"), sample("Final answer: 4", finish="length")]
    samples += [sample("Final answer: 5"), sample("Final answer: 5"), sample("Final answer: 6")]
    got = asyncio.run(replay_one(samples, RULE))
    assert got.drawn == 4 and got.answer.endswith("5")  # two cut 4s are no lead at all


def test_replay_of_a_real_fixed_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    distinct = itertools.count(100)

    def responder(body: dict[str, Any], index: int) -> str:
        text = "\n".join(m.get("content") or "" for m in body["messages"])
        if PROBLEMS["arith-01"].prompt in text:
            return "47 * 23 = 1081 ... Final answer: 1157"  # every sample agrees, and is right
        return f"Final answer: {next(distinct)}"  # every sample differs

    with ServerThread(make_app(responder, n_support=False)) as server:
        fixed = tmp_path / "fixed"
        argv = ["eval", "--approaches", "self_consistency", "--model", "fake-model", "--upstream"]
        argv += [server.url + "/v1", "--ids", "arith-01,word-01", "--no-progress", "--out", str(fixed)]
        argv += ["--params", '{"self_consistency": {"adaptive": false, "samples": 5}}']
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None), capsys.readouterr().err
    capsys.readouterr()
    out = tmp_path / "replayed"
    with pytest.raises(SystemExit) as done:
        main(["eval", "--replay-adaptive", str(fixed), "--out", str(out)])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "self_consistency (adaptive, replayed)" in printed and "paired with self_consistency" in printed
    base = {r["id"]: r for r in map(json.loads, (fixed / "results.jsonl").read_text().splitlines())}
    rows = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert base["arith-01"]["upstream_calls"] == 5 and base["arith-01"]["correct"]
    easy, split = rows["arith-01"], rows["word-01"]
    assert easy["correct"] and easy["upstream_calls"] == 2
    assert easy["completion_tokens"] * 5 == base["arith-01"]["completion_tokens"] * 2
    assert split["upstream_calls"] == 5 and not split["correct"]
    assert split["completion_tokens"] == base["word-01"]["completion_tokens"]
    assert (out / "summary.json").is_file()


def test_a_folder_without_an_eval_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["eval", "--replay-adaptive", str(tmp_path), "--out", str(tmp_path / "o")])
    assert done.value.code == 2 and "holds no eval" in capsys.readouterr().err


def test_bad_params_are_a_setup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.jsonl").write_text("")
    (tmp_path / "optigraph.db").write_bytes(b"")
    with pytest.raises(SystemExit) as done:
        main(["eval", "--replay-adaptive", str(tmp_path), "--params", "{nope", "--out", str(tmp_path / "o")])
    assert done.value.code == 2 and "--params is not JSON" in capsys.readouterr().err
