"""Which local models a client may name: only the server's configuration chooses the files that load.

A client's model name `[local/]base[+adapter...]` resolves to:

- a built-in name (`smollm2`);
- the server's own configured model (`--local-model`, written as configured: it may be a path anywhere,
  since the operator chose it), alone or with adapters;
- a name inside the models directory (`--local-models-dir`): a relative path of plain parts (not
  absolute, no `~`, no `.` or `..` part) that still lies inside the directory once symlinks are
  resolved, and is a model there (a `.gguf` file, or a directory with config.json).

Adapters (`+adapter`) are the configured model's own adapters (as written in `--local-model`) or peft
adapter directories inside the models directory, by the same rule. Anything else is a 404 whose body is
the same whether or not a file exists at that path (the message names neither the path nor the
directory), so a client learns nothing about the server's files outside the models directory.

The operator's names (`--local-model`, the Python API's `LocalBackend(default_model)`) resolve with
`models.parse_spec`, which accepts any path.
"""

from __future__ import annotations

from pathlib import Path

from optigraph.errors import InvalidRequest, NotFound
from optigraph.local.models import BUILTIN, ModelSource, ModelSpec, resolve_base

MODEL_NOT_FOUND = (
    "model not found: a local model is a built-in name ({builtin}), the server's configured model, "
    "or a model inside the server's models directory; nothing is downloaded"
)
ADAPTER_NOT_FOUND = (
    "LoRA adapter not found: an adapter is one named in the server's configured model, or a peft "
    "adapter directory (adapter_config.json) inside the server's models directory"
)


def model_not_found() -> NotFound:
    return NotFound(
        MODEL_NOT_FOUND.format(builtin=", ".join(sorted(set(BUILTIN)))), param="model", code="model_not_found"
    )


def adapter_not_found() -> NotFound:
    return NotFound(ADAPTER_NOT_FOUND, param="model", code="adapter_not_found")


def split_name(model: str) -> tuple[str, list[str]]:
    """`[local/]base[+adapter...]` -> (base, adapters), each stripped; InvalidRequest for an empty part."""
    parts = [p.strip() for p in model.removeprefix("local/").split("+")]
    if any(not p for p in parts):
        raise InvalidRequest("malformed local model name: expected base+adapter+...", param="model")
    return parts[0], parts[1:]


def inside(name: str, models_dir: Path | None) -> Path | None:
    """The real path `name` stands for inside `models_dir`, or None when it is not a plain relative name
    or leads outside the directory (through `..` or a symlink). Touches no file outside the directory."""
    if models_dir is None or not name or name.startswith("~") or "\\" in name:
        return None
    if any(ord(c) < 32 for c in name) or any(part in ("", ".", "..") for part in name.split("/")):
        return None
    try:
        root = models_dir.resolve()
        target = (root / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        return None
    return target if target != root and target.is_relative_to(root) else None


def base_inside(name: str, models_dir: Path | None) -> ModelSource | None:
    """The model `name` stands for inside the models directory, or None."""
    target = inside(name, models_dir)
    if target is None:
        return None
    try:
        if target.suffix.lower() == ".gguf" and target.is_file():
            return ModelSource(id=name, path=target, gguf=True)
        if target.is_dir() and (target / "config.json").is_file():
            return ModelSource(id=name, path=target, gguf=False)
    except OSError:
        pass
    return None


def adapter_inside(name: str, models_dir: Path | None) -> tuple[str, Path] | None:
    """An adapter (its directory's name, its directory) inside the models directory, or None."""
    target = inside(name, models_dir)
    try:
        if target is not None and target.is_dir() and (target / "adapter_config.json").is_file():
            return target.name, target
    except OSError:
        pass
    return None


def is_local_name(model: str, *, configured: str, models_dir: Path | None) -> bool:
    """Whether a client's model name means a local model (so it is not sent to an upstream): `local`,
    `local/...`, a built-in name, a `.gguf` name, the configured model, a path (`/`, `./`, `../`, `~`:
    local, and refused unless configured), or a model inside the models directory."""
    base = model.split("+", 1)[0].strip()
    if model.lower() == "local" or model.startswith("local/") or base.lower() in BUILTIN:
        return True
    if base.lower().endswith(".gguf") or base.startswith(("/", "./", "../", "~")):
        return True
    if base == configured.removeprefix("local/").split("+", 1)[0].strip():
        return True
    return base_inside(base, models_dir) is not None


def client_spec(model: str, *, configured: str, default: ModelSpec, models_dir: Path | None) -> ModelSpec:
    """The ModelSpec of a client's model name (`default` is the configured model's); NotFound (404) for
    anything the server's configuration does not offer, the same whether a file exists there or not."""
    name = model.removeprefix("local/").strip()
    if name.lower() in ("", "local") or name == configured.removeprefix("local/").strip():
        return default
    base_name, adapter_names = split_name(name)
    own_base, own_adapters = split_name(configured)
    if base_name == own_base:
        base = default.base
    elif base_name.lower() in BUILTIN:
        base = resolve_base(base_name)
    else:
        found = base_inside(base_name, models_dir)
        if found is None:
            raise model_not_found()
        base = found
    adapters: list[tuple[str, Path]] = []
    for adapter in adapter_names:
        if adapter in own_adapters:
            adapters.append(default.adapters[own_adapters.index(adapter)])
            continue
        found_adapter = adapter_inside(adapter, models_dir)
        if found_adapter is None:
            raise adapter_not_found()
        adapters.append(found_adapter)
    names = [a[0] for a in adapters]
    if len(set(names)) != len(names):
        raise InvalidRequest("the adapters of a local model name must have different names", param="model")
    return ModelSpec(base=base, adapters=tuple(adapters))
