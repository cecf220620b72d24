"""Approaches and plugins from outside optigraph, loaded once at start into the server's Registry.

Three sources, in this order, after the built-ins:

- entry points in the groups `optigraph.approaches` and `optigraph.plugins` (installed packages):
  each yields an ApproachSpec or PluginSpec, a sequence of them, or a module (collected as below);
- a directory (`--approaches-dir`, OPTIGRAPH_APPROACHES_DIR): every `*.py` module in it (sorted by
  name) and every declarative spec `*.yaml`, `*.yml` or `*.json`: an approach (see
  optigraph/engine/authoring/) or, when its top-level key is `plugin`, a plugin
  (optigraph/engine/declarative_plugins.py);
- OptILLM plugin files (`--plugins-dir`): modules with `SLUG` and `run`, each an approach
  (optigraph/engine/optillm_plugins.py);
- nothing else: there is no module-global registry.

A module's specs are its `SPECS` (a sequence), else its `SPEC`, else every module-level ApproachSpec
whose build function (or PluginSpec whose stage) the module defines itself (so
`@optigraph.approach(...)` works without naming the result, and imported specs are not registered
twice).

A name already registered (a built-in, or one loaded before) is a start-up error naming both
sources; there is no override. Approaches and plugins share one namespace.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from optigraph.core.spec import ApproachSpec, PluginSpec, Spec
from optigraph.engine.authoring import load_declarative
from optigraph.engine.declarative_plugins import is_plugin_document, load_plugin
from optigraph.engine.expression import is_name
from optigraph.engine.module_files import import_file
from optigraph.engine.optillm_plugins import load_plugins as load_optillm_plugins
from optigraph.engine.registry import Registry, builtin_registry
from optigraph.errors import ApproachLoadError

ENTRY_POINT_GROUP = "optigraph.approaches"
PLUGIN_ENTRY_POINT_GROUP = "optigraph.plugins"
SPEC_TYPES = (ApproachSpec, PluginSpec)


def _defined_in(spec: Spec, module: ModuleType) -> bool:
    functions = (spec.build,) if isinstance(spec, ApproachSpec) else (spec.pre, spec.post)
    return any(getattr(f, "__module__", None) == module.__name__ for f in functions if f is not None)


DECLARATIVE_SUFFIXES = (".yaml", ".yml", ".json")


def specs_of_module(module: ModuleType) -> list[Spec]:
    """The approaches and plugins a module declares (see the module docstring)."""
    specs = getattr(module, "SPECS", None)
    if specs is not None:
        found = list(specs)
    elif isinstance(getattr(module, "SPEC", None), SPEC_TYPES):
        found = [module.SPEC]
    else:
        seen: set[int] = set()
        found = []
        for value in vars(module).values():
            if isinstance(value, SPEC_TYPES) and id(value) not in seen and _defined_in(value, module):
                seen.add(id(value))
                found.append(value)
    for spec in found:
        if not isinstance(spec, SPEC_TYPES):
            raise ApproachLoadError(f"{module.__name__}: SPECS holds {spec!r}, not an ApproachSpec or PluginSpec")
    return found


def specs_of(obj: Any, source: str) -> list[Spec]:
    """ApproachSpecs and PluginSpecs from what an entry point or a module yields."""
    if isinstance(obj, SPEC_TYPES):
        return [obj]
    if isinstance(obj, ModuleType):
        return specs_of_module(obj)
    if isinstance(obj, (list, tuple)) and all(isinstance(s, SPEC_TYPES) for s in obj):
        return list(obj)
    raise ApproachLoadError(
        f"{source}: expected an ApproachSpec or PluginSpec, a sequence of them or a module, got {type(obj).__name__}"
    )


def load_module_file(path: Path) -> ModuleType:
    """Imports one approach module file under a private module name."""
    try:
        return import_file(path, "optigraph_user_approaches")
    except Exception as exc:  # any error in user code is a start-up error
        raise ApproachLoadError(f"{path}: import failed: {type(exc).__name__}: {exc}") from exc


def load_directory(directory: Path | str) -> list[tuple[Spec, str]]:
    """(spec, source) for every approach module and declarative spec in `directory`."""
    root = Path(directory)
    if not root.is_dir():
        raise ApproachLoadError(f"approaches directory {str(root)!r} does not exist or is not a directory")
    out: list[tuple[Spec, str]] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith((".", "_")) or not path.is_file():
            continue
        if path.suffix == ".py":
            specs = specs_of_module(load_module_file(path))
            if not specs:
                raise ApproachLoadError(f"{path}: defines no approach (no SPEC, SPECS or ApproachSpec)")
            out.extend((s, str(path)) for s in specs)
        elif path.suffix in DECLARATIVE_SUFFIXES:
            spec = load_plugin(path) if is_plugin_document(path) else load_declarative(path)
            out.append((spec, str(path)))
    return out


def entry_point_specs(*groups: str) -> list[tuple[Spec, str]]:
    """(spec, source) for every approach and plugin installed packages declare in the entry-point groups."""
    out: list[tuple[Spec, str]] = []
    eps = [
        ep
        for group in (groups or (ENTRY_POINT_GROUP, PLUGIN_ENTRY_POINT_GROUP))
        for ep in importlib.metadata.entry_points(group=group)
    ]
    for ep in sorted(eps, key=lambda e: (e.group, e.name)):
        source = f"entry point {ep.name} = {ep.value}" + (f" (package {ep.dist.name})" if ep.dist else "")
        try:
            obj = ep.load()
        except Exception as exc:
            raise ApproachLoadError(f"{source}: failed to load: {type(exc).__name__}: {exc}") from exc
        out.extend((s, source) for s in specs_of(obj, source))
    return out


def add_all(registry: Registry, specs: Iterable[tuple[Spec, str]], sources: dict[str, str]) -> None:
    """Adds each spec; a bad name or one already registered is an ApproachLoadError."""
    for spec, source in specs:
        if not is_name(spec.name):
            raise ApproachLoadError(f"{source}: {spec.kind} name {spec.name!r} must be letters, digits and _ only")
        if spec.name in registry:
            raise ApproachLoadError(
                f"{source}: {spec.kind} {spec.name!r} is already registered by {sources.get(spec.name, 'optigraph')}; "
                "rename it (built-in approaches and plugins cannot be replaced)"
            )
        registry.add(spec)
        sources[spec.name] = source


def load_registry(
    *,
    approaches_dir: Path | str | None = None,
    entry_points: bool = True,
    registry: Registry | None = None,
    plugins_dir: Path | str | None = None,
) -> Registry:
    """The built-ins (or `registry`) plus the installed entry points, the directory's approaches and
    the OptILLM plugin files of `plugins_dir` (engine/optillm_plugins.py)."""
    registry = registry if registry is not None else builtin_registry()
    sources = {name: "optigraph (built-in)" for name in registry.names()}
    builtins = frozenset(registry.names())
    if entry_points:
        add_all(registry, entry_point_specs(), sources)
    if approaches_dir is not None:
        add_all(registry, load_directory(approaches_dir), sources)
    if plugins_dir is not None:
        add_all(registry, load_optillm_plugins(plugins_dir, taken=builtins.__contains__), sources)
    return registry
