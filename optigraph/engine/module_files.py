"""Importing one Python file as a module of its own (user approach modules, OptILLM plugin files)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_file(path: Path, package: str) -> ModuleType:
    """Imports `path` as `<package>.<its stem>`; whatever the file raises propagates, and a file that
    fails leaves no half-imported module behind."""
    name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
