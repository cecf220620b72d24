"""bon's selection rule replayed on a recorded bon eval (evals/replay_select.py): the same candidates
and ratings, another rule, at no model cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread, make_app  # noqa: E402

from optigraph.cli import main  # noqa: E402
from optigraph.evals.problems import load_problems  # noqa: E402
from optigraph.nodes.rate import RATING_REQUEST  # noqa: E402

PROBLEMS = {p.id: p for p in load_problems()}


def rows(folder: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())}


def test_a_recorded_bon_run_replayed_with_the_weighted_vote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def responder(body: dict[str, Any], index: int) -> str:
        if body["messages"][-1].get("content") == RATING_REQUEST:  # the wrong answer rated a little higher
            return "9" if body["messages"][-2]["content"] == "Final answer: 1000" else "8"
        # The two right candidates are the same text: each must get its own rating in the replay.
        return "Final answer: 1000" if index == 0 else "47 * 23 = 1081 ...\nFinal answer: 1157"

    with ServerThread(make_app(responder, n_support=True)) as server:
        recorded = tmp_path / "bon"
        argv = ["eval", "--approaches", "bon", "--model", "fake-model", "--upstream", server.url + "/v1"]
        argv += ["--ids", "arith-01", "--no-progress", "--out", str(recorded)]
        argv += ["--params", '{"bon": {"selection": "score"}}']  # OptILLM's rule: the best rating
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None), capsys.readouterr().err
    capsys.readouterr()
    assert not rows(recorded)["arith-01"]["correct"]

    voted = tmp_path / "voted"
    with pytest.raises(SystemExit) as done:
        main(["eval", "--replay-select", str(recorded), "--out", str(voted)])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "bon (weighted_vote, replayed)" in printed and "paired with bon" in printed
    again = rows(voted)["arith-01"]
    assert again["correct"] and again["answer"] == "1157"
    assert again["upstream_calls"] == rows(recorded)["arith-01"]["upstream_calls"] == 4  # the same calls

    same = tmp_path / "same"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "eval",
                "--replay-select",
                str(recorded),
                "--params",
                '{"bon": {"selection": "score"}}',
                "--out",
                str(same),
            ]
        )
    assert done.value.code in (0, None)
    assert not rows(same)["arith-01"]["correct"]  # the recorded rule replayed gives the recorded answer


def test_a_bad_selection_is_a_setup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.jsonl").write_text("")
    (tmp_path / "optigraph.db").write_bytes(b"")
    params = '{"bon": {"selection": "loudest"}}'
    with pytest.raises(SystemExit) as done:
        main(["eval", "--replay-select", str(tmp_path), "--params", params, "--out", str(tmp_path / "o")])
    assert done.value.code == 2 and "cannot replay" in capsys.readouterr().err
