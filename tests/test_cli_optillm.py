"""`optigraph serve` with OptILLM's command line and OPTILLM_* variables (docs/optillm.md): each flag
lands in the setting or approach parameter the table names, flags beat variables, optigraph's own
names beat OptILLM's; OPENAI_BASE_URL/OPENAI_API_KEY are read as the openai SDK reads them when no
base URL is given. End to end: a server started with OptILLM's flags applies its approach defaults and
its key, and one started with only OPENAI_* variables reaches that upstream with that key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import openai
import pytest
from upstream import ServerThread, UpstreamLog, free_port, make_app, serve_process

from optigraph.cli import _settings, parser
from optigraph.config import Settings
from optigraph.optillm_compat import serve_settings

ROOT = Path(__file__).resolve().parents[1]


def settings_for(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    """What `optigraph serve ARGV` would run with, under exactly the variables `env`."""
    args = parser().parse_args(["serve", *argv])
    explicit = {dest: getattr(args, dest) for dest in vars(args) if dest in Settings.model_fields}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    with mock.patch.dict(os.environ, env or {}):  # Settings reads the OPTIGRAPH_* ones itself
        reading = serve_settings(args, os.environ, explicit)
        return _settings(reading.settings)


@pytest.fixture(autouse=True)
def no_inherited_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OPTIGRAPH_", "OPTILLM_", "OPENAI_")):
            monkeypatch.delenv(key)


def test_optillms_flags_land_in_settings_and_approach_parameters(tmp_path: Path) -> None:
    cepo = tmp_path / "cepo_config.yaml"
    cepo.write_text("bestofn_n: 2\nplanning_n: 2\nuse_plan_diversity: false\nrating_model: null\nprint_output: true\n")
    s = settings_for(
        [
            "--optillm-api-key", "secret", "--model", "gpt-4o-mini", "--n", "2", "--best_of_n", "5",
            "--mcts-simulations", "4", "--mcts-exploration", "0.3", "--mcts-depth", "2",
            "--rstar-max-depth", "4", "--rstar-num-rollouts", "6", "--rstar-c", "1.2", "--return-full-response",
            "--cepo_config_file", str(cepo), "--cepo_planning_n", "3", "--log", "notset", "--port", "8123",
            "--base_url", "http://up.example/v1", "--approach", "auto", "--plugins-dir", str(tmp_path),
            "--log-conversations", "--conversation-log-dir", str(tmp_path / "logs"),
            "--no-ssl-verify", "--ssl-cert-path", str(cepo), "--launch-gui",
        ]
    )  # fmt: skip
    assert (s.api_key, s.default_model, s.default_n, s.port) == ("secret", "gpt-4o-mini", 2, 8123)
    assert (s.base_url, s.approach, s.log_level, s.plugins_dir) == ("http://up.example/v1", "none", "debug", tmp_path)
    assert s.log_conversations and s.conversation_log_dir == tmp_path / "logs"
    assert s.upstream_ssl_verify is False and s.upstream_ssl_cert_path == cepo
    assert s.approach_params == {
        "bon": {"n": 5},
        "mcts": {"simulations": 4, "exploration": 0.3, "depth": 2},
        "rstar": {"max_depth": 4, "num_rollouts": 6, "c": 1.2},
        "cot_reflection": {"return_full_response": True},
        "cepo": {"bestofn_n": 2, "planning_n": "3"},  # the flag wins; validated by the server at start
    }


def test_variables_flags_and_optigraph_names_take_precedence_in_order() -> None:
    env = {
        "OPTILLM_SIMULATIONS": "3",
        "OPTILLM_DEPTH": "5",
        "OPTILLM_APPROACH": "moa",
        "OPTILLM_PORT": "9001",
        "OPTILLM_LOG_CONVERSATIONS": "true",
        "OPTILLM_SSL_VERIFY": "false",
        "OPTILLM_API_KEY": "from-optillm",
        "OPTIGRAPH_API_KEY": "from-optigraph",
        "OPTIGRAPH_APPROACH_PARAMS": '{"mcts": {"depth": 1}}',
    }
    s = settings_for(["--mcts-simulations", "7"], env)
    assert s.approach_params["mcts"] == {"simulations": 7, "depth": 1}  # flag > variable; optigraph's > OptILLM's
    assert (s.approach, s.port, s.log_conversations, s.upstream_ssl_verify) == ("moa", 9001, True, False)
    assert s.api_key == "from-optigraph"
    s = settings_for(["--api-key", "native", "--optillm-api-key", "optillm", "--approach", "bon"], env)
    assert (s.api_key, s.approach) == ("native", "bon")
    assert settings_for(["--ssl-verify"], env).upstream_ssl_verify is True


def test_openai_variables_are_read_as_the_sdk_reads_them_when_no_base_url_is_given() -> None:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://openai.example/v1"}
    s = settings_for([], env)
    assert (s.base_url, s.upstream_api_key) == ("http://openai.example/v1", "sk-test")
    s = settings_for([], {"OPENAI_API_KEY": "sk-test"})
    assert (s.base_url, s.upstream_api_key) == ("https://api.openai.com/v1", "sk-test")
    s = settings_for(["--base-url", "http://mine/v1"], env)  # a base URL given: neither is read
    assert (s.base_url, s.upstream_api_key) == ("http://mine/v1", None)
    s = settings_for([], {**env, "OPTILLM_BASE_URL": "http://optillm/v1"})
    assert (s.base_url, s.upstream_api_key) == ("http://optillm/v1", None)
    assert settings_for([], {}).base_url is None  # nothing set: the local model, as before
    empty = settings_for([], {"OPTILLM_BASE_URL": "", "OPTILLM_PLUGINS_DIR": "", "OPTILLM_API_KEY": ""})
    assert (empty.base_url, empty.plugins_dir, empty.api_key) == (None, None, None)  # OptILLM's "" defaults


def serve(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPTIGRAPH_", "OPTILLM_", "OPENAI_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "optigraph",
            "serve",
            "--port",
            "1",
            "--db-url",
            f"sqlite:///{tmp_path / 'o.db'}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--mcts-simulations", "many"], {}, ["--mcts-simulations", "'many'", "int"]),
        ([], {"OPTILLM_RSTAR_C": "wide"}, ["OPTILLM_RSTAR_C", "'wide'", "float"]),
        (["--best-of-n", "0"], {}, ["approach parameters", "'bon'", "greater than or equal to 1"]),
        (["--cepo_rating_model", "gpt-4o"], {}, ["--cepo_rating_model", "not supported"]),
        (["--log", "loud"], {}, ["--log", "'loud'"]),
        (["--n", "20"], {}, ["default_n (20, OptILLM's --n) is more than max_n (16)"]),
    ],
)
def test_a_bad_optillm_setting_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], env: dict[str, str], says: list[str]
) -> None:
    done = serve(tmp_path, "--base-url", "http://127.0.0.1:1/v1", *argv, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optigraph serve: error: "), done.stderr
    assert all(s in lines[0] for s in says), lines[0]


@pytest.fixture
def upstream() -> Iterator[tuple[ServerThread, UpstreamLog]]:
    log = UpstreamLog()
    with ServerThread(make_app(log=log)) as up:
        yield up, log


def test_a_server_started_with_optillms_flags_applies_them(
    tmp_path: Path, upstream: tuple[ServerThread, UpstreamLog]
) -> None:
    up, log = upstream
    flags = ("--optillm-api-key", "secret", "--model", "fake-model", "--approach", "bon", "--best-of-n", "2")
    proc, url = serve_process(tmp_path / "o.db", up.url, *flags, "--launch-gui", log_level="info")
    try:
        refused = httpx.post(url + "/v1/chat/completions", json={"model": "x", "messages": []}, timeout=30)
        assert refused.status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().optigraph["approach"] == "bon"  # type: ignore[attr-defined]
        run = httpx.get(
            f"{url}/v1/runs/{raw.headers['x-optigraph-run-id']}", headers={"authorization": "Bearer secret"}
        ).json()
        assert [c["node"] for c in run["upstream_calls"]].count("rate") == 2  # --best-of-n 2
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0].decode()
    assert "web UI at /ui" in output


def wait_healthy(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 90  # a hang guard, not a timing check
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not answer /health: {proc.communicate()[0].decode()}")
        time.sleep(0.05)


def test_a_server_reaches_the_upstream_named_by_openai_variables(
    tmp_path: Path, upstream: tuple[ServerThread, UpstreamLog]
) -> None:
    up, log = upstream
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTIGRAPH_", "OPTILLM_", "OPENAI_"))}
    env.update(PYTHONPATH=str(ROOT), OPENAI_BASE_URL=up.url + "/v1", OPENAI_API_KEY="sk-from-env")
    argv = [
        sys.executable,
        "-m",
        "optigraph",
        "serve",
        "--port",
        str(port),
        "--db-url",
        f"sqlite:///{tmp_path / 'o.db'}",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="client-key", max_retries=0)
        answer = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "echo: hi"
        assert log.headers[-1]["authorization"] == "Bearer sk-from-env"
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
