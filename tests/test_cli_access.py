"""`optigraph keys`, `optigraph tenants` and the safe start: keys are shown once and stored hashed,
limits are set per tenant, and `serve` refuses to listen beyond loopback with no authentication."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from test_cli_serve import optigraph

from optigraph.cli import main


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db-url", f"sqlite:///{tmp_path / 'k.db'}"]
    code, out, _ = cli(
        capsys,
        "keys",
        "create",
        "--name",
        "ci",
        "--tenant",
        "team-a",
        "--scope",
        "chat",
        "--scope",
        "runs:read",
        "--rpm",
        "30",
        *db,
    )
    assert code == 0
    key = re.search(r"og_[0-9a-f]{12}_\S+", out).group(0)
    fields = json.loads(out[: out.index("\n\nkey")])
    assert fields["tenant"] == "team-a" and fields["scopes"] == ["chat", "runs:read"] and fields["rpm"] == 30
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("k.db*"))
    assert key.encode() not in stored  # only its digest is kept
    code, out, _ = cli(capsys, "keys", "list", *db)
    assert code == 0 and "ci" in out and "team-a" in out and key not in out
    code, _, err = cli(capsys, "keys", "create", "--name", "ci", "--tenant", "x", *db)
    assert code == 1 and "exists already" in err
    code, _, err = cli(capsys, "keys", "create", "--name", "bad", "--tenant", "x", "--scope", "root", *db)
    assert code == 1 and "unknown scope root" in err
    assert cli(capsys, "keys", "revoke", "ci", *db)[0] == 0
    code, out, _ = cli(capsys, "keys", "list", *db)
    assert "no keys" in out
    code, out, _ = cli(capsys, "keys", "list", "--all", "--json", *db)
    assert json.loads(out)[0]["revoked_at"] is not None
    code, _, err = cli(capsys, "keys", "revoke", "ci", *db)
    assert code == 1 and "no active key named 'ci'" in err


def test_tenants_set_and_clear_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db-url", f"sqlite:///{tmp_path / 't.db'}"]
    code, out, _ = cli(capsys, "tenants", "set-limits", "team-a", "--rpm", "60", "--tokens-per-day", "100000", *db)
    assert code == 0 and json.loads(out) == {
        "tenant": "team-a",
        "rpm": 60,
        "concurrent_runs": None,
        "tokens_per_day": 100000,
    }
    code, out, _ = cli(capsys, "tenants", "set-limits", "team-a", "--concurrent-runs", "2", *db)
    assert json.loads(out)["concurrent_runs"] == 2 and json.loads(out)["rpm"] == 60
    assert [t["tenant"] for t in json.loads(cli(capsys, "tenants", "list", *db)[1])] == ["team-a"]
    assert "its own limits removed" in cli(capsys, "tenants", "clear-limits", "team-a", *db)[1]
    assert json.loads(cli(capsys, "tenants", "list", *db)[1]) == []


def test_serve_refuses_to_listen_beyond_loopback_without_authentication(tmp_path: Path) -> None:
    db_path = tmp_path / "o.db"
    base = ["serve", "--port", "1", "--db-url", f"sqlite:///{db_path}", "--base-url", "http://127.0.0.1:9/v1"]
    done = optigraph(*base, "--host", "0.0.0.0", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith("optigraph serve: error: refusing to serve on 0.0.0.0 without client authentication")
    assert "--api-key" in line and "optigraph keys create" in line and "--allow-unauthenticated" in line
    assert not db_path.exists()  # nothing was started, nothing created
    # Each of these passes the check; the bad --approach then stops the start (so nothing listens).
    for extra in (
        ["--host", "0.0.0.0", "--allow-unauthenticated"],
        ["--host", "0.0.0.0", "--api-key", "k"],
        ["--host", "0.0.0.0", "--oauth-issuer", "https://issuer.example", "--oauth-audience", "a"],
        ["--host", "::1"],
    ):
        done = optigraph(*base, *extra, "--approach", "bon&&", cwd=tmp_path)
        assert done.returncode == 2 and "--approach" in done.stderr and "refusing" not in done.stderr, extra
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "ops", "--tenant", "ops", "--db-url", f"sqlite:///{db_path}"])
    done = optigraph(*base, "--host", "0.0.0.0", "--approach", "bon&&", cwd=tmp_path)  # a key in the database
    assert done.returncode == 2 and "refusing" not in done.stderr, done.stderr
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 1
    con.close()
