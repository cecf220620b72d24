"""GET /v1/models with --list-approach-models: approach-prefixed ids for front ends that offer only
listed models; every listed id works as a model name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from api_stack import Stack, start_stack

from optigraph.api.app import create_app
from optigraph.api.models import ListedApproachError
from optigraph.config import Settings
from optigraph.engine.loading import load_registry


def test_off_by_default(stack: Stack) -> None:
    ids = [m.id for m in stack.client().models.list()]
    assert ids == ["fake-model"]


def test_listed_ids_route_back_to_their_approach_and_model(tmp_path: Path) -> None:
    with start_stack(
        tmp_path / "o.db",
        upstream={"model_ids": ("fake-model", "re2-lookalike")},
        list_approach_models=True,
        # cot_decoding needs the local model, which an upstream model does not offer: not listed
        model_list_approaches=["moa", "bon&re2", "cot_decoding"],
    ) as stack:
        ids = [m.id for m in stack.client().models.list()]
        assert ids == ["fake-model", "re2-lookalike", "moa-fake-model", "bon&re2-fake-model"]
        # `moa-re2-lookalike` would run moa&re2 on model `lookalike`: such ids are left out
        for model, expression in (("moa-fake-model", "moa"), ("bon&re2-fake-model", "bon&re2")):
            stack.reset()
            reply = stack.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert reply.model_extra["optigraph"]["approach"] == expression and reply.model == "fake-model"
            assert {b["model"] for b in stack.log.bodies} == {"fake-model"}


def test_env_variable_and_a_bad_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIGRAPH_MODEL_LIST_APPROACHES", "bon, re2&moa")
    assert Settings().model_list_approaches == ["bon", "re2&moa"]
    registry = load_registry(approaches_dir=None, entry_points=False)
    for bad in ("nosuch", "bon-re2", "bon&"):
        settings = Settings(db_url=f"sqlite:///{tmp_path}/x.db", list_approach_models=True, model_list_approaches=[bad])
        with pytest.raises(ListedApproachError, match="--model-list-approaches"):
            create_app(settings, registry=registry)


def test_serve_refuses_a_bad_prefix_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optigraph",
            "serve",
            "--list-approach-models",
            "--model-list-approaches",
            "moa,nosuch",
            "--db-url",
            f"sqlite:///{tmp_path}/x.db",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "--model-list-approaches: 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
