"""The sandbox child: runs as `python -I -B child.py CONFIG` in a fresh process, reads the program
from stdin, confines itself, reports the layers in force, then runs the program, but only when every
layer in the config's `require` list is in force: otherwise it exits with `REFUSED` without running
any of it (fail closed).

Stdlib only, so the package (and its dependencies) is never imported in the sandbox. The report
channel is a pipe inherited as `report_fd`: its first line, written before the program starts, lists
the layers (and, on a refusal, the required ones that are missing); the lines after it are refusals
and a memory failure. The program could write to the pipe too, but only after the first line, and
only about itself.
"""

from __future__ import annotations

import builtins
import json
import linecache
import os
import site
import sys
import sysconfig
import traceback

PROGRAM = "program.py"
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
REFUSED = 97  # exit status when a required layer is missing and the program was not run


def interpreter_roots() -> tuple[list[str], list[str]]:
    """What the program may read (the interpreter's installation trees) and where ctypes may load
    libraries from (its site-packages: z3's native library lives there)."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    prefixes |= {os.path.realpath(p) for p in prefixes}
    libraries = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    return sorted(prefixes), sorted(os.path.realpath(p) for p in libraries)


def confine_self(config: dict, confine, read_roots: list[str]) -> tuple[dict[str, str], dict[str, str]]:  # noqa: ANN001
    """Applies every kernel layer it can; returns (active layer -> what it enforces, missing -> why)."""
    active: dict[str, str] = {}
    missing: dict[str, str] = {}
    withheld = set(config.get("withhold") or ())

    def layer(name: str, apply, *args, **kwargs) -> None:  # noqa: ANN001
        if name in withheld:  # a test's stand-in for a kernel that lacks the layer
            missing[name] = "withheld (testing)"
            return
        try:
            active[name] = apply(*args, **kwargs)
        except (confine.LayerUnavailable, OSError, ValueError) as exc:
            missing[name] = str(exc)

    workdir = config["workdir"]
    layer("namespaces", confine.enter_namespaces)
    if "namespaces" in active:
        layer("tmpfs", confine.private_workdir, workdir, config["disk_mb"])
    else:
        missing["tmpfs"] = "needs the namespaces layer"
    layer(
        "rlimits",
        confine.set_limits,
        memory_mb=config["memory_mb"],
        cpu_s=config["cpu_s"],
        nproc=config["nproc"],
        fsize_mb=config["disk_mb"],
        nofile=config["nofile"],
    )
    layer("no_new_privs", confine.no_new_privs)
    layer("landlock", confine.landlock, read=[*read_roots, *SYSTEM_LIBRARIES], write=[workdir], devices=list(DEVICES))
    layer("capabilities", confine.drop_capabilities)
    layer("seccomp", confine.seccomp_filter)
    return active, missing


def report_line(fd: int, record: dict) -> None:
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass


def run_program(code: str, allowed_modules: list[str], guard, report) -> int:  # noqa: ANN001
    """Runs the program as `__main__` with the import allowlist; returns the exit status."""
    linecache.cache[PROGRAM] = (len(code), None, code.splitlines(True), PROGRAM)
    user_builtins = dict(builtins.__dict__)
    user_builtins["__import__"] = guard.import_allowlist(allowed_modules, lambda what: report({"violation": what}))
    namespace = {"__name__": "__main__", "__file__": PROGRAM, "__builtins__": user_builtins}
    sys.argv = [PROGRAM]
    try:
        exec(compile(code, PROGRAM, "exec"), namespace)  # noqa: S102 (this is the sandbox)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except MemoryError:
        namespace.clear()
        report({"memory": True})
        print("MemoryError: the program ran out of memory", file=sys.stderr)
        return 1
    except BaseException as exc:  # the program's own failure
        print_traceback(exc)
        return 1


def print_traceback(exc: BaseException) -> None:
    """The program's traceback without the sandbox's own frames (this runner, the audit hook), whose
    source files the program may not read."""
    ours = {os.path.abspath(__file__), os.path.join(os.path.dirname(os.path.abspath(__file__)), "guard.py")}
    frames = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__), lookup_lines=False)
    kept = traceback.StackSummary.from_list([f for f in frames if os.path.abspath(f.filename) not in ours])
    lines = ["Traceback (most recent call last):\n", *kept.format()] if kept else []
    lines += traceback.format_exception_only(type(exc), exc)
    sys.stderr.write("".join(lines))


def main() -> int:
    config = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    report_fd = config["report_fd"]
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)  # this directory's two helpers, without importing the package
    import confine  # noqa: PLC0415
    import guard  # noqa: PLC0415

    sys.path.remove(here)

    read_roots, library_roots = interpreter_roots()
    active, missing = confine_self(config, confine, read_roots)
    workdir = config["workdir"]
    os.chdir(workdir)
    if "audit_hook" in (config.get("withhold") or ()):
        missing["audit_hook"] = "withheld (testing)"
    elif config["audit_guard"]:
        guard.install(
            workdir=workdir, read_roots=read_roots, library_roots=library_roots, devices=DEVICES, report_fd=report_fd
        )
        active["audit_hook"] = (
            "network, processes, files outside the work dir, ctypes loading, interpreter introspection"
        )
    else:
        missing["audit_hook"] = "turned off"
    refused = [name for name in config["require"] if name not in active]
    if refused:  # fail closed: not one line of the program runs without every required layer
        missing.update({name: "not applied" for name in refused if name not in missing})
        report_line(report_fd, {"layers": active, "unavailable": missing, "refused": refused})
        return REFUSED
    report_line(report_fd, {"layers": active, "unavailable": missing})
    sys.stdout.reconfigure(line_buffering=True)  # what a killed program printed still comes back
    status = run_program(code, config["allow_modules"], guard, lambda record: report_line(report_fd, record))
    sys.stdout.flush()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
