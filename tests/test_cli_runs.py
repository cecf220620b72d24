"""`optigraph runs list|show` and `optigraph approaches list|show`, against a real server and
against its database directly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "api"))

from api_stack import Stack, last_user_text, start_stack  # noqa: E402
from upstream import HTTPFailure, echo_responder  # noqa: E402

from optigraph.cli import main  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.engine.registry import builtin_registry  # noqa: E402

KEY = "cli-key"


@dataclass
class Served:
    stack: Stack
    ids: dict[str, str]

    @property
    def server(self) -> list[str]:
        return ["--server", self.stack.url, "--api-key", KEY]

    @property
    def db(self) -> list[str]:
        return ["--db-url", f"sqlite:///{self.stack.db_path}"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("cli") / "optigraph.db"
    with start_stack(db, default_model="fake-model", api_key=KEY) as stack:
        stack.script.fn = lambda body, i: (
            HTTPFailure(400, "refused") if "refuse" in last_user_text(body) else echo_responder(body, i)
        )
        ids: dict[str, str] = {}
        for label, model, content in [
            ("pass", "fake-model", "hello"),
            ("parallel", "none|none-fake-model", "both"),
            ("pipeline", "none&none-fake-model", "chain"),
            ("failed", "fake-model", "refuse this"),
        ]:
            try:
                raw = stack.client(api_key=KEY).chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": content}]
                )
                ids[label] = raw.headers["x-optigraph-run-id"]
            except openai.APIStatusError as exc:
                ids[label] = exc.response.headers["x-optigraph-run-id"]
            stack.run(ids[label])
        yield Served(stack=stack, ids=ids)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def row_of(out: str, run_id: str) -> list[str]:
    [line] = [line for line in out.splitlines() if line.startswith(run_id)]
    return line.split()


@pytest.mark.parametrize("source", ["server", "db"])
def test_runs_list_prints_a_table(served: Served, capsys: pytest.CaptureFixture[str], source: str) -> None:
    code, out, err = cli(capsys, "runs", "list", *getattr(served, source))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "APPROACH", "MODEL", "CALLS", "TOKENS", "LATENCY", "CREATED"]
    expected = {
        "pass": ("completed", "none", "1"),
        "parallel": ("completed", "none|none", "2"),
        "pipeline": ("completed", "none&none", "2"),
        "failed": ("failed", "none", "1"),
    }  # its one attempt counts
    for label, (status, approach, calls) in expected.items():
        row = row_of(out, served.ids[label])
        assert row[1:5] == [status, approach, "fake-model", calls], row
    order = [line.split()[0] for line in lines[1:] if line and line.split()[0] in served.ids.values()]
    assert order == [served.ids[k] for k in ("failed", "pipeline", "parallel", "pass")]  # newest first
    assert lines[0].index("STATUS") == lines[1].index(row_of(out, order[0])[1])  # aligned columns
    assert "4 runs" in out


@pytest.mark.parametrize("source", ["server", "db"])
def test_runs_list_filters_and_pages(served: Served, capsys: pytest.CaptureFixture[str], source: str) -> None:
    where = getattr(served, source)
    code, out, _ = cli(capsys, "runs", "list", "--status", "failed", *where)
    assert code == 0 and served.ids["failed"] in out and served.ids["pass"] not in out and "1 run" in out
    code, out, _ = cli(capsys, "runs", "list", "--approach", "none | none", *where)
    assert code == 0 and served.ids["parallel"] in out and served.ids["pipeline"] not in out
    code, out, _ = cli(capsys, "runs", "list", "--limit", "3", *where)
    assert code == 0 and served.ids["pass"] not in out
    cursor = out.strip().rsplit("--after ", 1)[1]
    assert cursor == served.ids["parallel"]
    code, out, _ = cli(capsys, "runs", "list", "--limit", "3", "--after", cursor, *where)
    assert code == 0 and served.ids["pass"] in out and "1 run" in out and "--after" not in out
    code, _, err = cli(capsys, "runs", "list", "--after", "nope", *where)
    assert code == 1 and "unknown cursor" in err


@pytest.mark.parametrize("source", ["server", "db"])
def test_runs_show_prints_steps_calls_and_totals(
    served: Served, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    code, out, err = cli(capsys, "runs", "show", served.ids["pipeline"], *getattr(served, source))
    assert code == 0, err
    assert f"Run {served.ids['pipeline']}" in out
    assert "status    completed" in out and "approach  none&none" in out
    assert "echo: echo: chain" in out  # the answer
    steps = out.split("Steps (thread")[1].split("Upstream calls")[0]
    lines = [line for line in steps.splitlines()[2:] if line.strip()]  # after the title and the header
    rows = [line.split() for line in lines]
    top = [line.split()[1] for line in lines if not line.startswith(" ")]  # child graphs' steps are indented
    assert top == ["__start__", "1.none", "1.none/done", "2.none", "2.none/done"]
    assert [r[1] for r in rows].count("passthrough") == 2 and all(r[2] == "done" for r in rows)
    calls = out.split("Upstream calls")[1].split("Totals:")[0].strip().splitlines()
    assert calls[0].split()[:4] == ["#", "NODE", "MODEL", "STATUS"]
    assert calls[1].split()[:4] == ["1", "passthrough", "fake-model", "ok"] and "user: chain" in calls[1]
    assert "echo: chain" in calls[1] and "user: echo: chain" in calls[2] and "echo: echo: chain" in calls[2]
    assert "Totals: 2 calls (0 failed, 0 retried)" in out


def test_runs_show_is_the_same_from_the_server_and_the_database(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    for label in ("pass", "parallel", "failed"):
        _, via_server, _ = cli(capsys, "runs", "show", served.ids[label], *served.server)
        _, via_db, _ = cli(capsys, "runs", "show", served.ids[label], *served.db)
        assert via_server == via_db
    assert "Steps: none recorded" in via_db and "failed" in via_db and "refused" in via_db


@pytest.mark.parametrize("source", ["server", "db"])
def test_runs_show_prints_the_checkpoint_ids_a_fork_needs(
    served: Served, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    _, out, _ = cli(capsys, "runs", "show", served.ids["parallel"], "--json", *served.server)
    steps = json.loads(out)["threads"][0]["steps"]
    code, out, err = cli(capsys, "runs", "show", served.ids["parallel"], *getattr(served, source))
    assert code == 0, err
    table = out.split("Steps (thread")[1].split("Upstream calls")[0].splitlines()[1:]
    assert table[0].split() == ["STEP", "NODE", "STATUS", "CHECKPOINT", "WROTE"]
    for step in steps:
        [row] = [line.split() for line in table[1:] if step["checkpoint_id"] in line.split()]
        assert row[0] == str(step["step"]) and row[3] == step["checkpoint_id"]


def test_runs_show_into_a_closed_pipe_is_quiet(served: Served) -> None:
    # `optigraph runs show ID | head -0`: the reader is gone before anything is written
    proc = subprocess.Popen(
        [sys.executable, "-m", "optigraph", "runs", "show", served.ids["parallel"], *served.server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err.decode()
    assert proc.returncode == 1


@pytest.mark.parametrize("source", ["server", "db"])
def test_runs_list_rejects_a_bad_filter(served: Served, capsys: pytest.CaptureFixture[str], source: str) -> None:
    code, _, err = cli(capsys, "runs", "list", "--status", "bogus", *getattr(served, source))
    assert code == 1 and "unknown status 'bogus'" in err and "0 runs" not in err
    code, _, err = cli(capsys, "runs", "list", "--approach", "bon&(", *getattr(served, source))
    assert code == 1 and "approach filter" in err and "position" in err


def test_runs_show_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", "show", served.ids["parallel"], "--json", *served.server)
    run = json.loads(out)
    assert code == 0 and run["id"] == served.ids["parallel"]
    assert [[t["name"] for t in s["tasks"]] for s in run["threads"][0]["steps"]] == [
        ["__start__"],
        ["none", "none#2"],
        ["collect"],
    ]


def test_runs_commands_fail_clearly(served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "runs", "show", "no-such-run", *served.server)
    assert code == 1 and "404" in err and "no-such-run" in err
    code, _, err = cli(capsys, "runs", "show", "no-such-run", *served.db)
    assert code == 1 and "no run with id 'no-such-run'" in err
    code, _, err = cli(capsys, "runs", "list", "--server", served.stack.url, "--api-key", "wrong")
    assert code == 1 and "401" in err
    code, _, err = cli(capsys, "runs", "list", "--server", "http://127.0.0.1:9", "--api-key", KEY)
    assert code == 1 and "cannot reach" in err
    code, _, err = cli(capsys, "runs", "list", "--db-url", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 1 and "no database" in err


@pytest.mark.parametrize("remote", [False, True])
def test_approaches_list(served: Served, capsys: pytest.CaptureFixture[str], remote: bool) -> None:
    code, out, err = cli(capsys, "approaches", "list", *(served.server if remote else []))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "CALLS", "ROUNDS"]
    assert [line.split()[0] for line in lines[1:]] == list(builtin_registry().names())
    bon = builtin_registry().get("bon")
    assert f"{evaluate(bon.calls, bon.params().model_dump())} calls" in next(
        line for line in lines if line.startswith("bon ")
    )


@pytest.mark.parametrize("remote", [False, True])
def test_approaches_show_draws_the_graph_and_its_cost(
    served: Served, capsys: pytest.CaptureFixture[str], remote: bool
) -> None:
    code, out, err = cli(capsys, "approaches", "show", "bon&re2|moa", *(served.server if remote else []))
    assert code == 0, err
    registry = builtin_registry()
    cost = {n: evaluate(registry.get(n).calls, registry.get(n).params().model_dump()) for n in ("bon", "re2", "moa")}
    assert out.startswith(f"bon&re2|moa: 2 choices; at default parameters {sum(cost.values())} upstream calls")
    assert "graph TD" in out and "subgraph bon&re2" in out and "subgraph moa" in out
    table = out.split("APPROACH", 1)[1].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["bon", "re2", "moa"]
    assert f"{cost['bon']} calls" in table[1]
    code, _, err = cli(capsys, "approaches", "show", "bon&(re2", *(served.server if remote else []))
    assert code == 1 and "position" in err


def test_the_command_runs_as_a_program(served: Served) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "optigraph", "runs", "list", *served.server], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert row_of(done.stdout, served.ids["parallel"])[1:3] == ["completed", "none|none"]
