"""`optigraph doctor` against a fake upstream on loopback that ignores `n` and refuses tools: the probes
find that out, the database's migration version is reported, and the approaches that sample several
choices are said to fall back to separate calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from upstream import HTTPFailure, ServerThread, UpstreamLog, echo_responder, free_port, make_app

from optigraph.memory.migrate import upgrade_schema


def no_tools(body: dict[str, Any], index: int) -> Any:
    if body.get("tools"):
        return HTTPFailure(400, "tools are not supported by this server")
    return echo_responder(body, index)


def doctor(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-m", "optigraph", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The approach table: name -> (verdict, why)."""
    table = out.split("APPROACH", 1)[1].splitlines()[1:]
    found = {}
    for line in table:
        name, verdict, *why = line.split(None, 2)
        found[name] = (verdict, why[0] if why else "")
    return found


def test_doctor_finds_an_upstream_without_n(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    upgrade_schema(f"sqlite:///{db}")
    log = UpstreamLog()
    with ServerThread(make_app(no_tools, n_support=False, log=log, model_ids=("small-model", "other"))) as up:
        config = tmp_path / "optigraph.yaml"
        config.write_text(f"base_url: {up.url}/v1\ndb_url: sqlite:///{db}\n")
        done = doctor(config, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr
    assert "database       ok" in out and "schema at the latest migration" in out
    assert "models small-model, other" in out
    assert "probed small-model: n no, streaming yes, tools no, logprobs no" in out
    assert {b.get("n") for b in log.bodies} >= {2}  # the probes were real requests, one asking for n=2
    assert all(b.get("max_tokens") == 1 for b in log.bodies)  # and tiny ones

    table = rows(out)
    assert table["none"] == ("yes", "")
    for sampler in ("bon", "self_consistency", "majority_voting"):
        verdict, why = table[sampler]
        assert verdict == "limited" and "n>1 falls back to separate calls" in why, (sampler, why)
    assert table["re2"][0] == "yes"  # one call, no n
    assert table["cot_decoding"][0] == "no" and "local model" in table["cot_decoding"][1]
    assert table["mcp"][0] == "no" and "--mcp-config" in table["mcp"][1]
    holds = "level 'strict' holds here" in out  # this host's sandbox, whichever it is
    assert table["executecode"][0] == ("yes" if holds else "no")


def test_doctor_fails_for_an_unreachable_upstream_and_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "optigraph.yaml"
    config.write_text(f"base_url: http://127.0.0.1:{free_port()}/v1\ndb_url: sqlite:///{tmp_path / 'o.db'}\n")
    done = doctor(config, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "upstream       FAIL" in done.stdout and "unreachable" in done.stdout
    assert not (tmp_path / "o.db").exists()  # the doctor creates nothing

    config.write_text("port: 1\nmax_nn: 2\n")
    done = doctor(config, tmp_path)
    assert done.returncode == 2
    assert "configuration  FAIL" in done.stdout and "optigraph.yaml:2" in done.stdout
