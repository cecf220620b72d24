"""`optigraph spl list|show|edit|delete|export|import` on a real SQLite database, and a server on the
same database seeing the edits."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "api"))

from api_stack import start_stack  # noqa: E402

from optigraph.cli import main  # noqa: E402
from optigraph.memory.db import open_database  # noqa: E402
from optigraph.memory.migrate import upgrade_schema  # noqa: E402
from optigraph.memory.strategies import StrategyStore  # noqa: E402


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


async def _seed(db_url: str) -> list[int]:
    db = open_database(db_url)
    try:
        store = StrategyStore(db)
        a = await store.add("arithmetic", "Work digit by digit.", uses=4, successes=3)
        b = await store.add("factual", "Name the source.")
        return [a.id, b.id]
    finally:
        await db.dispose()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'optigraph.db'}"
    upgrade_schema(url)
    return url


def test_list_show_edit_delete(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = asyncio.run(_seed(db_url))
    code, out, _ = cli(capsys, "spl", "list", "--db-url", db_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "type", "uses", "ok", "rate", "text"]
    assert lines[1].split()[:5] == [str(first), "arithmetic", "4", "3", "0.67"] and "Work digit by digit." in lines[1]
    code, out, _ = cli(capsys, "spl", "list", "--db-url", db_url, "--type", "factual", "--json")
    assert [s["id"] for s in json.loads(out)] == [second]

    code, out, _ = cli(
        capsys, "spl", "edit", "--db-url", db_url, str(first), "--text", "Carry with care.", "--uses", "5"
    )
    assert code == 0 and json.loads(out)["text"] == "Carry with care." and json.loads(out)["uses"] == 5
    code, out, _ = cli(capsys, "spl", "show", "--db-url", db_url, str(first))
    shown = json.loads(out)
    assert (shown["text"], shown["uses"], shown["successes"], shown["problem_type"]) == (
        "Carry with care.",
        5,
        3,
        "arithmetic",
    )

    code, out, _ = cli(capsys, "spl", "delete", "--db-url", db_url, str(second))
    assert code == 0 and out.strip() == f"deleted strategy {second}"
    code, _, err = cli(capsys, "spl", "show", "--db-url", db_url, str(second))
    assert code == 1 and f"no strategy {second}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["edit", "1"], "nothing to change"),
        (["edit", "1", "--successes", "9"], "successes (9) must be between 0 and uses (4)"),
        (["edit", "99", "--text", "x"], "no strategy 99"),
        (["delete", "99"], "no strategy 99"),
    ],
)
def test_bad_commands_say_why(db_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    asyncio.run(_seed(db_url))
    code, _, err = cli(capsys, "spl", argv[0], "--db-url", db_url, *argv[1:])
    assert code == 1 and message in err


def test_export_then_import_into_another_database(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed(db_url))
    exported = tmp_path / "strategies.json"
    code, out, _ = cli(capsys, "spl", "export", "--db-url", db_url, "--out", str(exported))
    assert code == 0 and "exported 2 strategies" in out
    items = json.loads(exported.read_text())
    assert [(i["problem_type"], i["text"], i["uses"], i["successes"]) for i in items] == [
        ("arithmetic", "Work digit by digit.", 4, 3),
        ("factual", "Name the source.", 0, 0),
    ]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_schema(other)
    code, out, _ = cli(capsys, "spl", "import", "--db-url", other, str(exported))
    assert code == 0 and out.startswith("imported 2 strategies")
    code, out, _ = cli(capsys, "spl", "export", "--db-url", other)
    assert json.loads(out) == items


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a JSON list"),
        ('[{"problem_type": "poetry", "text": "x"}]', "'problem_type' must be one of"),
        ('[{"problem_type": "logic", "text": " "}]', "needs a non-empty 'text'"),
        ('[{"problem_type": "logic", "text": "x", "uses": 1, "successes": 2}]', "successes <= uses"),
        ("not json", "cannot read"),
    ],
)
def test_a_bad_import_file_changes_nothing(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = cli(capsys, "spl", "import", "--db-url", db_url, str(bad))
    assert code == 1 and message in err
    code, out, _ = cli(capsys, "spl", "list", "--db-url", db_url)
    assert out.strip() == "no strategies"


def test_a_missing_database_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "spl", "list", "--db-url", f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert code == 1 and "no database at" in err


def test_an_edit_from_the_command_line_reaches_a_running_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_stack(tmp_path / "served.db", default_model="fake-model") as stack:
        url = f"sqlite:///{stack.db_path}"
        first, _ = asyncio.run(_seed(url))
        cli(capsys, "spl", "edit", "--db-url", url, str(first), "--text", "Check the last digit.")
        stack.client().chat.completions.create(
            model="spl-fake-model", messages=[{"role": "user", "content": "What is 37 * 41?"}]
        )
        assert "Check the last digit." in stack.log.bodies[0]["messages"][0]["content"]
