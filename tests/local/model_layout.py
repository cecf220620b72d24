"""A models directory beside files clients must not reach, for the tests of which local models a client may name."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tiny_model import TinyModel, copy_model

from optigraph.local.models import ModelSpec, parse_spec


@dataclass(frozen=True)
class Layout:
    """A models directory and, beside it, an `outside` directory holding a real model, a .gguf file and an
    adapter that clients must not reach (directly, through `..`, or through symlinks in the models dir)."""

    models: Path
    outside: Path
    configured: str  # the operator's --local-model: the tiny model, outside the models directory
    default: ModelSpec


def make_layout(tiny: TinyModel, root: Path) -> Layout:
    models, outside = root / "models", root / "outside"
    models.mkdir()
    outside.mkdir()
    copy_model(tiny.path, models / "inside")
    shutil.copytree(tiny.adapters["lora-a"], models / "lora-a")
    (models / "weights.gguf").write_bytes(b"GGUF")
    (models / "nested").mkdir()
    (models / "nested" / "deeper").symlink_to(models / "inside")  # a link that stays inside
    copy_model(tiny.path, outside / "model")
    (outside / "model.gguf").write_bytes(b"GGUF")
    shutil.copytree(tiny.adapters["lora-b"], outside / "lora-b")
    (models / "escape").symlink_to(outside / "model")
    (models / "escape.gguf").symlink_to(outside / "model.gguf")
    (models / "escape-lora").symlink_to(outside / "lora-b")
    (models / "escape-dir").symlink_to(outside)
    (models / "loop").symlink_to(models / "loop")
    return Layout(models=models, outside=outside, configured=str(tiny.path), default=parse_spec(str(tiny.path)))


def refused_models(layout: Layout) -> list[str]:
    """Names of models outside the models directory, existing or not, in every spelling."""
    out = layout.outside
    return [
        str(out / "model"),
        str(out / "nothing"),
        "../outside/model",
        "../outside/nothing",
        "escape",
        "nothing",
        "escape-dir/model",
        str(out / "model.gguf"),
        "escape.gguf",
        "../outside/model.gguf",
        "missing.gguf",
        "local/../outside/model",
        f"local/{out / 'model'}",
        "~/model",
        "./inside",
        "inside/",
        "inside/../inside",
        "nested/../../outside/model",
        "loop",
        "a\x00b",
        "x" * 5000,
        "..",
        ".",
        "local/..",
    ]


def refused_adapters(layout: Layout) -> list[str]:
    return [
        str(layout.outside / "lora-b"),
        "../outside/lora-b",
        "escape-lora",
        "escape-dir/lora-b",
        "lora-z",
        "../outside/nothing",
        "/etc",
    ]
