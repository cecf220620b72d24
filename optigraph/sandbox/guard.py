"""The in-process layer: an audit hook, and an import allowlist for the program's own imports.

Stdlib only: loaded by `child.py` in the sandbox interpreter. Audit hooks cannot be removed once
added; the hook built here holds its policy in immutable default values, is referenced only by the
interpreter, and refuses `gc` introspection and further hooks. CPython's own
documentation says hooks are not a sandbox against code that corrupts memory (through ctypes, which
z3 needs); that is why the kernel layers in `confine.py` sit underneath and hold without it.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

try:  # the C implementation: a program cannot replace it through `os.path`
    from posix import _path_normpath as _NORMPATH
except ImportError:  # pragma: no cover - older interpreters
    _NORMPATH = os.path.normpath

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Every event whose name starts with one of these is refused outright.
_DENIED_PREFIXES = ("socket.",)
_DENIED_EVENTS = frozenset(
    {
        # new processes and programs
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "subprocess.Popen",
        "os.startfile",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.spawn",
        # reaching into the interpreter (to find or disable this hook)
        "sys.addaudithook",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",
        "sys.settrace",
        "sys.setprofile",  # audited from Python 3.12; tracers can rewrite a frame's locals
        "cpython.remote_debugger_script",
        # raw memory through ctypes
        "ctypes.dlsym/handle",
        "ctypes.cdata",
        "ctypes.string_at",
        "ctypes.wstring_at",
        "ctypes.PyObj_FromPtr",
        "ctypes.call_function",
        # limits and links
        "resource.setrlimit",
        "resource.prlimit",
        "os.link",
        "os.symlink",
        "os.chflags",
        "os.lchflags",
        "os.mknod",
        "os.chown",
        "shutil.chown",
        "os.setxattr",
        "os.removexattr",
        "urllib.Request",
        "ftplib.connect",
        "http.client.connect",
        "smtplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "poplib.connect",
        "telnetlib.Telnet.open",
        "webbrowser.open",
    }
)
# Modules whose mere import hands out a way around the hook: a second interpreter without it, raw
# C APIs. (`_posixsubprocess` spawns without an event of its own, but sympy imports `subprocess`;
# the seccomp filter refuses its fork and exec.)
DENIED_IMPORTS = frozenset(
    {
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_interpreters",
        "_interpchannels",
        "_testcapi",
        "_testinternalcapi",
        "_testmultiphase",
        "_testbuffer",
        "_testimportmultiple",
        "cffi",
        "_cffi_backend",
        "_ctypes_test",
    }
)
# Events that name paths to be written (all arguments that are paths must lie in the work dir).
_WRITE_EVENTS = frozenset(
    {
        "os.mkdir",
        "os.rmdir",
        "os.remove",
        "os.rename",
        "os.truncate",
        "os.chmod",
        "os.utime",
        "os.mkfifo",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.move",
        "shutil.make_archive",
        "shutil.unpack_archive",
    }
)
_COPY_EVENTS = frozenset({"shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree"})  # src, dst
_READ_EVENTS = frozenset({"os.listdir", "os.scandir", "os.getxattr", "os.listxattr", "os.chdir"})


class SandboxViolation(PermissionError):
    """Raised in the sandboxed program for an operation the sandbox forbids."""

    __module__ = "sandbox"


class Policy(NamedTuple):
    """What the hook allows; a tuple, so nothing can change it once the hook holds it."""

    readable: tuple[str, ...]  # read-only trees (the interpreter's installation) and the work dir
    writable: tuple[str, ...]  # the work dir
    libraries: tuple[str, ...]  # where ctypes may load libraries from (site-packages: z3's)
    devices: frozenset[str]  # device files open for reading and writing
    report_fd: int


def install(
    *, workdir: str, read_roots: Iterable[str], library_roots: Iterable[str], devices: Iterable[str], report_fd: int
) -> None:
    """Adds the audit hook. Reads are allowed under `read_roots` and the work dir, writes only in
    the work dir; ctypes may load and look up symbols only in libraries under `library_roots`.
    Every refusal raises `SandboxViolation` and is written as a JSON line to `report_fd`."""
    workdir = os.path.realpath(workdir)
    policy = Policy(
        readable=tuple(sorted({os.path.realpath(r) for r in read_roots} | {workdir})),
        writable=(workdir,),
        libraries=tuple(sorted({os.path.realpath(r) for r in library_roots})),
        devices=frozenset(devices),
        report_fd=report_fd,
    )
    sys.addaudithook(_hook_for(policy))


def _hook_for(policy: Policy) -> Callable[[str, tuple[Any, ...]], None]:
    """The hook. Its policy, its rule sets and every function it calls are bound as defaults when
    it is made (C builtins, no closures, no comprehensions): a program that replaces module or
    `builtins` attributes changes nothing the hook sees. It fails closed: any error raised in it
    aborts the audited operation."""

    def hook(
        event: str,
        args: tuple[Any, ...],
        *,
        _p: Policy = policy,
        _reads=_READ_EVENTS,
        _writes=_WRITE_EVENTS,
        _copies=_COPY_EVENTS,
        _denied=_DENIED_EVENTS,
        _prefixes=_DENIED_PREFIXES,
        _imports=DENIED_IMPORTS,
        _write_flags=_WRITE_FLAGS,
        _getcwd=os.getcwd,
        _fspath=os.fspath,
        _fsdecode=os.fsdecode,
        _normpath=_NORMPATH,
        _write=os.write,
        _isinstance=isinstance,
        _getattr=getattr,
        _str=str,
        _int=int,
        _describe=_describe,
        _quote=json.dumps,
        _violation=SandboxViolation,
        _sep=os.sep,
        _reported=[0],  # noqa: B006 (a counter of reports, on purpose)
    ) -> None:
        paths: list[tuple[Any, bool]] = []  # (path, for writing)
        refusal: str | None = None  # why the operation is refused
        if event == "open":
            path, mode, flags = args
            write = (flags or 0) & _write_flags
            if mode:
                for c in "wax+":
                    if c in mode:
                        write = True
            paths.append((path, bool(write)))
        elif event in _reads:
            if args and args[0] is not None:
                paths.append((args[0], event == "os.chdir"))
        elif event in _writes:
            # both arguments are written, except a copy's source, which is only read
            if args and args[0] is not None:
                paths.append((args[0], event not in _copies))
            if len(args) > 1 and args[1] is not None:
                paths.append((args[1], True))
        elif event == "import":
            if (args[0] or "").partition(".")[0] in _imports:
                refusal = _str(args[0])
        elif event in _denied or event.startswith(_prefixes):
            refusal = _describe(args)
        elif event == "ctypes.dlopen" or event == "ctypes.dlsym":
            library = args[0] if event == "ctypes.dlopen" else _getattr(args[0], "_name", None)
            allowed = False
            if _isinstance(library, _str) and library.startswith(_sep):
                library = _normpath(library)
                for root in _p.libraries:
                    if library.startswith(root + _sep):
                        allowed = True
            if not allowed:
                refusal = f"{library!r}" if event == "ctypes.dlopen" else f"{args[1]!r} in {library!r}"
        for path, write in paths:
            if _isinstance(path, _int):
                continue  # an open descriptor: opening it was checked
            raw = _fsdecode(_fspath(path))
            where = _normpath(raw if raw.startswith(_sep) else _getcwd() + _sep + raw)
            if where in _p.devices:
                continue
            inside = False
            for root in _p.writable if write else _p.readable:
                if where == root or where.startswith(root + _sep):
                    inside = True
            if not inside:
                refusal = f"{'writing' if write else 'reading'} {where}"
        if refusal is None:
            return
        if _reported[0] < 20:
            _reported[0] += 1
            line = '{"violation": ' + _quote(f"{event}: {refusal}"[:300]) + "}\n"
            try:
                _write(_p.report_fd, line.encode())
            except OSError:
                pass
        raise _violation(f"sandbox: {event} is not allowed ({refusal})"[:300])

    return hook


def _describe(args: tuple[Any, ...]) -> str:
    try:
        return ", ".join(repr(a)[:80] for a in args[:3]) or "no arguments"
    except Exception:  # a hostile __repr__ must not get through
        return "..."


def import_allowlist(allowed: Iterable[str], report: Callable[[str], None]) -> Callable[..., Any]:
    """An `__import__` for the program's own imports: only top-level modules in `allowed` (the
    modules they import themselves are theirs to choose). It keeps honest programs to the declared
    set; it is not the security boundary (the hook and the kernel layers are)."""
    allowed_set = frozenset(allowed)
    real_import = builtins.__import__

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        top = name.partition(".")[0]
        if level == 0 and top not in allowed_set:
            report(f"import {name}")
            raise ImportError(
                f"sandbox: module {top!r} is not allowed here (allowed: {', '.join(sorted(allowed_set))})", name=name
            )
        return real_import(name, globals, locals, fromlist, level)

    return guarded_import
