"""The configuration file: precedence (flag > OPTIGRAPH_* variable > file > default), each kind of bad
file with an error that names the line, secrets only as environment references, `optigraph config
check`, and a file's default approach parameters reaching a real request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optigraph.config_file import ConfigFileError, load_settings, read_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "api"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OPTIGRAPH_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "optigraph.yaml"
    path.write_text(text)
    return path


GOOD = """\
# a team's server
port: 9000
approach: bon
max_n: 8
upstream_api_key: ${TEST_UPSTREAM_KEY}
db_url: postgresql://optigraph:${TEST_PG_PASSWORD}@db:5432/optigraph
upstreams:
  big:
    url: http://big.internal/v1
    api_key_env: BIG_KEY
approach_params:
  bon: {n: 2}
"""


def test_precedence_flag_over_environment_over_file_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-from-env")
    monkeypatch.setenv("TEST_PG_PASSWORD", "pw")
    path = write(tmp_path, GOOD)

    assert load_settings({}, None).settings.port == 8000  # the default
    loaded = load_settings({}, path)
    assert loaded.settings.port == 9000 and loaded.sources["port"] == "file"
    assert loaded.file_lines["port"] == 2
    assert loaded.settings.upstream_api_key == "sk-from-env"  # the reference, expanded
    assert loaded.settings.db_url == "postgresql://optigraph:pw@db:5432/optigraph"
    assert loaded.settings.upstreams["big"].api_key_env == "BIG_KEY"
    assert loaded.settings.approach_params == {"bon": {"n": 2}}
    assert loaded.sources["host"] == "default"

    monkeypatch.setenv("OPTIGRAPH_PORT", "7000")
    monkeypatch.setenv("OPTIGRAPH_MAX_N", "4")
    loaded = load_settings({}, path)
    assert (loaded.settings.port, loaded.sources["port"]) == (7000, "env")
    assert loaded.settings.max_n == 4 and loaded.settings.approach == "bon"  # the file still sets the rest

    loaded = load_settings({"port": "6000"}, path)
    assert (loaded.settings.port, loaded.sources["port"]) == (6000, "flag")
    assert loaded.settings.max_n == 4


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("port: 9000\nmax_n: 8\nmax_nn: 9\n", ["optigraph.yaml:3", "unknown setting 'max_nn'", "did you mean 'max_n'"]),
        ("port: 9000\n\nmax_n: lots\n", ["optigraph.yaml:3", "max_n", "valid integer", "'lots'"]),
        (
            "port: 1\nupstreams:\n  big:\n    url: http://x/v1\n    max_connections: 0\n",
            ["optigraph.yaml:5", "upstreams.big.max_connections", "greater than or equal to 1"],
        ),
        ("port: 1\nupstream_api_key: sk-live-123\n", ["optigraph.yaml:2", "literal secret", "${OPENAI_API_KEY}"]),
        ("api_key: hunter2\n", ["optigraph.yaml:1", "api_key is a literal secret"]),
        (
            "db_url: postgresql://optigraph:hunter2@db/optigraph\n",
            ["optigraph.yaml:1", "literal password", "${PGPASSWORD}"],
        ),
        ("port: 1\napproach: [bon\nmax_n: 2\n", ["optigraph.yaml:", "not valid YAML"]),
        ("port: 1\nport: 2\n", ["optigraph.yaml:2", "set twice", "line 1"]),
        ("- port\n- 1\n", ["optigraph.yaml:1", "must be a mapping"]),
        ("upstream_api_key: ${NOT_SET_ANYWHERE_42}\n", ["optigraph.yaml:1", "NOT_SET_ANYWHERE_42 is not set"]),
    ],
)
def test_a_bad_file_names_the_line(tmp_path: Path, text: str, says: list[str]) -> None:
    with pytest.raises(ConfigFileError) as caught:
        read_file(write(tmp_path, text))
    message = caught.value.message
    assert all(s in message for s in says), message
    assert "hunter2" not in message and "sk-live-123" not in message  # a refused secret is not echoed


def test_yaml_syntax_error_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        read_file(write(tmp_path, "port: 1\nhost: localhost\napproach: 'bon\n"))
    assert "optigraph.yaml:4" in caught.value.message or "optigraph.yaml:3" in caught.value.message


def optigraph(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")}
    return subprocess.run(
        [sys.executable, "-m", "optigraph", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **(env or {})},
    )


def test_config_check_prints_effective_settings_with_secrets_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    done = optigraph(
        "config",
        "check",
        str(path),
        cwd=tmp_path,
        env={"TEST_UPSTREAM_KEY": "sk-very-secret", "TEST_PG_PASSWORD": "pg-secret", "OPTIGRAPH_MAX_N": "4"},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sk-very-secret" not in out and "pg-secret" not in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "9000" in rows["port"] and "[file, line 2]" in rows["port"]
    assert "4" in rows["max_n"] and "[OPTIGRAPH_MAX_N]" in rows["max_n"]
    assert "***" in rows["upstream_api_key"]
    assert "postgresql://optigraph:***@db:5432/optigraph" in rows["db_url"]
    assert "127.0.0.1" in rows["host"] and "[default]" in rows["host"]


def test_config_check_and_serve_refuse_a_bad_file_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9000\nupstream_api_key: sk-live-123\n")
    done = optigraph("config", "check", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "optigraph.yaml:2" in done.stderr and "literal secret" in done.stderr
    db = tmp_path / "o.db"
    done = optigraph("serve", "--config", str(path), "--db-url", f"sqlite:///{db}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optigraph serve: error: --config: "), done.stderr
    assert "optigraph.yaml:2" in lines[0]
    assert not db.exists()  # nothing was started


def test_serve_refuses_default_parameters_of_an_unknown_approach(tmp_path: Path) -> None:
    path = write(tmp_path, "approach_params:\n  no_such_approach: {n: 2}\n")
    done = optigraph("serve", "--config", str(path), "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "approach_params" in done.stderr and "no_such_approach" in done.stderr


def test_default_approach_parameters_from_a_file_apply_to_requests(tmp_path: Path) -> None:
    from api_stack import start_stack

    values, _ = read_file(write(tmp_path, "approach_params:\n  bon: {n: 2}\n"))
    with start_stack(tmp_path / "o.db", default_model="fake-model", **values) as stack:
        r = stack.client().chat.completions.create(model="bon-fake-model", messages=[{"role": "user", "content": "q"}])
        assert r.model_extra["optigraph"]["upstream_calls"] == 3  # 2 candidates + 1 rating, not 3 + 1
        stack.reset()
        r = stack.client().chat.completions.create(
            model="bon-fake-model",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"optillm_params": {"bon": {"n": 4}}},  # the request's own value wins
        )
        assert r.model_extra["optigraph"]["upstream_calls"] == 5
