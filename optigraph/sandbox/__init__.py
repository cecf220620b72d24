"""A sandbox for model-written Python: `await run_python(code)` -> `SandboxResult`.

The program runs in a separate, confined process, under layered defences (docs/sandbox.md):
kernel namespaces (no network), a private size-bounded tmpfs as its work dir, resource limits,
Landlock (files, TCP, signals), a seccomp filter (no new processes or programs), no capabilities,
and inside the interpreter an audit hook and an import allowlist. The result says which were active.
It fails closed: a program runs only when every layer its `SandboxLevel` requires is in force;
otherwise `run_python` raises `SandboxUnavailable` and none of the program runs.
"""

from optigraph.sandbox.runner import (
    DEFAULT_ALLOWED_MODULES,
    DEFAULT_LEVEL,
    LEVELS,
    ErrorKind,
    SandboxLevel,
    SandboxResult,
    SandboxUnavailable,
    run_python,
)

__all__ = [
    "DEFAULT_ALLOWED_MODULES",
    "DEFAULT_LEVEL",
    "LEVELS",
    "ErrorKind",
    "SandboxLevel",
    "SandboxResult",
    "SandboxUnavailable",
    "run_python",
]
