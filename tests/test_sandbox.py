"""The sandbox, attacked. Most attacks run twice: with every layer, and with the audit hook turned
off, which shows that the kernel layers stop them on their own (the hook alone is shown by the
default runs, where it refuses first and says so)."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import sys
import tempfile
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import no_namespaces  # noqa: E402

from optigraph.sandbox import LEVELS, SandboxUnavailable, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox confines with Linux mechanisms")

SOLVES = """from z3 import *
x, y = Ints("x y")
s = Solver()
s.add(x + y == 10, x - y == 2)
assert s.check() == sat
m = s.model()
print(f"x={m[x]} y={m[y]}")"""
KERNEL_LAYERS = ("namespaces", "tmpfs", "rlimits", "no_new_privs", "landlock", "capabilities", "seccomp")
BOTH = pytest.mark.parametrize("audit_guard", [True, False], ids=["all-layers", "kernel-only"])


def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(444, None, 0, 1)


@pytest.fixture
def sandbox_tmp(tmp_path, monkeypatch):
    """Where the sandbox makes its temp dirs during the test, to check they are removed."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


async def test_a_z3_program_solves_and_reports_its_layers(sandbox_tmp):
    result = await run_python(SOLVES)
    assert result.ok, result.stderr
    assert result.stdout == "x=6 y=4\n"
    assert (result.error_kind, result.exit_code, result.violations) == (None, 0, ())
    assert "audit_hook" in result.layers
    # every layer is either in force or explained
    assert set(result.layers) | set(result.unavailable) >= {*KERNEL_LAYERS, "audit_hook"}
    assert list(sandbox_tmp.iterdir()) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or platform.machine() not in ("x86_64", "aarch64"),
    reason="the CI machine runs as root on x86_64 / aarch64",
)
async def test_every_kernel_layer_is_in_force_on_a_machine_like_ci():
    result = await run_python("print(1)")
    expected = [layer for layer in KERNEL_LAYERS if layer != "landlock" or landlock_abi() > 0]
    assert result.ok and not result.unavailable, result.unavailable
    assert all(layer in result.layers for layer in expected)


async def test_sympy_works():
    result = await run_python("import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - 4, x))", timeout_s=30)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "[-2, 2]"


async def test_an_infinite_loop_is_stopped():
    result = await run_python("while True:\n    pass", timeout_s=2)
    assert (result.ok, result.error_kind) == (False, "timeout")
    assert result.exit_code is not None and result.exit_code < 0  # killed by a signal
    assert 2 <= result.seconds < 8
    assert "stopped after 2 s" in result.stderr


async def test_what_a_killed_program_printed_comes_back():
    result = await run_python("print('before', flush=False)\nwhile True:\n    pass", timeout_s=2)
    assert result.error_kind == "timeout" and result.stdout == "before\n"


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(8 * 1024 ** 3)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 ** 2))",
    ],
    ids=["one-block", "growing"],
)
async def test_a_memory_bomb_is_stopped(code):
    result = await run_python(code, memory_mb=256, timeout_s=20)
    assert (result.ok, result.error_kind) == (False, "memory"), result.stderr
    assert result.seconds < 15


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 in the test process, recording every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except OSError:
                continue
            accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@BOTH
async def test_a_network_connection_is_refused(listener, audit_guard):
    port, accepted = listener
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')"
    result = await run_python(code, allow_modules=("socket",), audit_guard=audit_guard)
    assert (result.ok, result.error_kind) == (False, "forbidden"), result.stderr
    assert "connected" not in result.stdout
    assert result.violations
    # the listener really listens: the test process itself can connect
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    for _ in range(50):
        if accepted:
            break
        threading.Event().wait(0.05)
    assert len(accepted) == 1


# kernel-only, resolving localhost is no leak once nothing can connect: that case is not asked for
@pytest.mark.parametrize(
    "audit_guard,name",
    [(True, "localhost"), (True, "example.com"), (False, "example.com")],
    ids=["all-layers-localhost", "all-layers-example.com", "kernel-only-example.com"],
)
async def test_name_resolution_fails(audit_guard, name):
    result = await run_python(
        f"import socket\nprint(socket.getaddrinfo({name!r}, 80))", allow_modules=("socket",), audit_guard=audit_guard
    )
    assert (result.ok, result.error_kind) == (False, "forbidden"), result.stderr
    assert result.stdout == ""


async def test_the_socket_module_is_not_even_importable_by_default():
    result = await run_python("import socket")
    assert result.error_kind == "forbidden"
    assert "import socket" in result.violations


@BOTH
@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import os\nforks = 0\nwhile True:\n    try:\n        os.fork()\n        forks += 1\n    except OSError:\n        break\nprint(forks)",
        "import subprocess\nsubprocess.run(['/bin/true'])",
        "import os\nprint(os.system('true'))",
    ],
    ids=["fork-bomb", "fork-count", "subprocess", "system"],
)
async def test_no_process_can_be_started(code, audit_guard):
    result = await run_python(code, allow_modules=("os", "subprocess"), audit_guard=audit_guard, timeout_s=10)
    if "print(" in code and result.ok:  # the program saw the refusal as a failed call and went on
        assert not audit_guard
        # no fork succeeded; system() reports 127 << 8 when it cannot start the shell
        assert result.stdout.strip() == ("0" if "forks" in code else str(127 << 8)), result.stderr
    else:
        assert (result.ok, result.error_kind) == (False, "forbidden"), result.stderr
    assert result.seconds < 8


@BOTH
async def test_files_outside_the_temp_dir_cannot_be_read(tmp_path, audit_guard):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    for path in (str(secret), "/etc/passwd", os.path.abspath(__file__)):
        result = await run_python(f"print(open({path!r}).read())", audit_guard=audit_guard)
        assert (result.ok, result.error_kind) == (False, "forbidden"), (path, result.stderr)
        assert result.stdout == ""
    result = await run_python(
        f"import os\nprint(os.listdir({str(tmp_path)!r}))", allow_modules=("os",), audit_guard=audit_guard
    )
    assert result.error_kind == "forbidden" and "secret" not in result.stdout


@BOTH
async def test_files_outside_the_temp_dir_cannot_be_written(tmp_path, audit_guard):
    target = tmp_path / "written.txt"
    result = await run_python(f"open({str(target)!r}, 'w').write('x')", audit_guard=audit_guard)
    assert (result.ok, result.error_kind) == (False, "forbidden"), result.stderr
    assert not target.exists()
    site_packages = os.path.dirname(os.path.dirname(socket.__file__))
    result = await run_python(
        f"open({os.path.join(site_packages, 'planted.py')!r}, 'w').write('x')", audit_guard=audit_guard
    )
    assert result.error_kind == "forbidden"
    assert not os.path.exists(os.path.join(site_packages, "planted.py"))


async def test_the_temp_dir_is_usable_then_removed(sandbox_tmp):
    code = "import os\nopen('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read(), os.listdir('.'))"
    result = await run_python(code, allow_modules=("os",))
    assert result.ok, result.stderr
    assert result.stdout.strip() == "kept ['notes.txt']"
    assert list(sandbox_tmp.iterdir()) == []  # removed after the run
    result = await run_python("while True:\n    pass", timeout_s=1)
    assert result.error_kind == "timeout" and list(sandbox_tmp.iterdir()) == []  # after a kill too


async def test_a_cancelled_run_leaves_nothing_behind(sandbox_tmp, monkeypatch):
    import asyncio

    from optigraph.sandbox import runner

    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recording_spawn(*args, **kwargs):
        started.append(await spawn(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(runner.asyncio, "create_subprocess_exec", recording_spawn)
    task = asyncio.create_task(run_python("while True:\n    pass", timeout_s=60))
    while not started and not task.done():  # cancel once the child exists, however long spawning takes
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [proc] = started
    assert await asyncio.wait_for(proc.wait(), 60) == -9  # killed, not left running (60 s: a hang guard)
    assert list(sandbox_tmp.iterdir()) == []


async def test_a_planted_library_cannot_be_loaded():
    lib = next(p for p in sys.path if p.endswith("site-packages"))
    code = (
        f"import shutil, ctypes\nshutil.copy({os.path.join(lib, 'z3', 'lib', 'libz3.so')!r}, 'planted.so')\n"
        "ctypes.CDLL('./planted.so')\nprint('loaded')"
    )
    for audit_guard in (True, False):  # the hook refuses; without it, the noexec work dir does
        result = await run_python(code, allow_modules=("shutil", "ctypes"), audit_guard=audit_guard)
        assert not result.ok and "loaded" not in result.stdout, result.stderr


@BOTH
async def test_the_server_process_is_unaffected(tmp_path, audit_guard):
    cwd, env, pid = os.getcwd(), dict(os.environ), os.getpid()
    code = f"import os, signal\nos.environ['LEAK'] = '1'\nos.chdir('/')\nos.kill({pid}, signal.SIGKILL)"
    result = await run_python(code, allow_modules=("os", "signal"), audit_guard=audit_guard)
    assert result.error_kind == "forbidden", result.stderr
    assert (os.getcwd(), dict(os.environ), os.getpid()) == (cwd, env, pid)  # and we are still alive


async def test_output_is_capped():
    result = await run_python("print('x' * 1_000_000)", max_output=1000)
    assert result.ok and result.truncated
    assert result.stdout.startswith("x" * 1000) and "output cut at 1000 bytes" in result.stdout


async def test_a_failing_program_reports_its_own_traceback():
    result = await run_python("def f():\n    return 1 / 0\nf()")
    assert (result.ok, result.error_kind, result.exit_code) == (False, "error", 1)
    assert 'File "program.py", line 2, in f' in result.stderr and "ZeroDivisionError" in result.stderr
    assert "guard" not in result.stderr and "child.py" not in result.stderr  # none of the sandbox's frames


async def test_the_environment_is_clean(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    result = await run_python("import os\nprint(sorted(os.environ))", allow_modules=("os",))
    assert result.ok and "OPENAI_API_KEY" not in result.stdout


# ---- failing closed: no program runs without every layer its level requires --------------------

# Writes a file next to the test: what a program could do where neither Landlock nor the audit hook
# holds it, so the file is proof that the program ran.
SENTINEL_PROGRAM = "open({path!r}, 'w').write('ran')\nprint('ran')"


@pytest.mark.parametrize(("level", "layer"), [(level, layer) for level, layers in LEVELS.items() for layer in layers])
async def test_a_missing_required_layer_means_the_program_never_runs(tmp_path, sandbox_tmp, level, layer):
    sentinel = tmp_path / "ran.txt"
    # Landlock and the hook withheld too (not required at every level): only the check stops the write.
    withheld = {layer, "landlock", "audit_hook"}
    with pytest.raises(SandboxUnavailable) as refused:
        await run_python(SENTINEL_PROGRAM.format(path=str(sentinel)), level=level, withhold_layers=withheld)
    assert not sentinel.exists()
    assert refused.value.level == level
    assert layer in refused.value.missing and refused.value.missing[layer] == "withheld (testing)"
    assert set(refused.value.missing) <= set(LEVELS[level])  # only required layers are named
    assert layer not in refused.value.layers
    assert f"sandbox level {level!r}" in str(refused.value) and layer in str(refused.value)
    assert list(sandbox_tmp.iterdir()) == []  # cleaned up as after any run


async def test_an_explicit_lower_level_runs_the_program_without_the_layers_it_does_not_require(tmp_path):
    sentinel = tmp_path / "ran.txt"
    program = SENTINEL_PROGRAM.format(path=str(sentinel))
    for level in ("strict", "reduced"):
        with pytest.raises(SandboxUnavailable) as refused:
            await run_python(program, level=level, withhold_layers=("namespaces", "landlock"), audit_guard=False)
        assert "landlock" in refused.value.missing and not sentinel.exists()
    # minimal requires neither namespaces nor Landlock; the test also turned the hook off, so the
    # write that nothing else stops now happens: the program really ran
    result = await run_python(program, level="minimal", withhold_layers=("namespaces", "landlock"), audit_guard=False)
    assert result.ok and result.stdout == "ran\n", result.stderr
    assert sentinel.read_text() == "ran"
    assert {"namespaces", "landlock"} <= set(result.unavailable)
    assert set(result.layers) == set(LEVELS["minimal"]) - {"audit_hook"}


async def test_reduced_runs_without_namespaces_and_still_refuses_the_network_and_files(listener):
    port, accepted = listener
    result = await run_python("print('ran')", level="reduced", withhold_layers=("namespaces",))
    assert result.ok and result.stdout == "ran\n"
    assert set(result.layers) == set(LEVELS["reduced"]) and "namespaces" in result.unavailable
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')"
    # without the hook, and with neither namespaces nor Landlock at minimal, seccomp refuses every new socket
    for level, withheld in (("reduced", ("namespaces",)), ("minimal", ("namespaces", "landlock"))):
        result = await run_python(
            code, level=level, withhold_layers=withheld, audit_guard=False, allow_modules=("socket",)
        )
        assert (result.error_kind, result.stdout) == ("forbidden", ""), result.stderr
    assert accepted == []
    result = await run_python(
        "print(open('/etc/passwd').read())", level="reduced", withhold_layers=("namespaces",), audit_guard=False
    )
    assert result.error_kind == "forbidden" and result.stdout == ""


def test_an_unknown_level_is_refused_before_anything_starts():
    import asyncio

    with pytest.raises(ValueError, match="unknown sandbox level 'loose'"):
        asyncio.run(run_python("print(1)", level="loose"))


def test_the_server_setting_offers_exactly_the_sandbox_levels():
    from typing import get_args

    from optigraph.config import Settings

    assert get_args(Settings.model_fields["sandbox_level"].annotation) == tuple(LEVELS)
    assert Settings().sandbox_level == "strict"
    assert Settings(sandbox_level="reduced").sandbox_level == "reduced"
    with pytest.raises(ValueError, match="sandbox_level"):
        Settings(sandbox_level="loose")
    assert LEVELS["strict"] == (*KERNEL_LAYERS, "audit_hook")  # the default requires every layer


NO_NAMESPACES = """
import asyncio, json
from optigraph.sandbox import SandboxUnavailable, run_python

async def main():
    try:
        await run_python("print('ran')")
        strict = None
    except SandboxUnavailable as exc:
        strict = exc.missing
    reduced = await run_python("print('ran')", level="reduced")
    print(json.dumps({"strict": strict, "reduced": reduced.stdout, "layers": sorted(reduced.layers)}))

asyncio.run(main())
"""


@pytest.mark.skipif(not no_namespaces.supported(), reason="the sandbox confines with Linux mechanisms")
def test_in_a_container_that_forbids_namespaces_strict_refuses_and_reduced_runs():
    """Not a test switch: the kernel itself refuses unshare(2) here, as Docker's default profile does."""
    import json
    import subprocess

    import optigraph

    tree = os.path.dirname(os.path.dirname(os.path.abspath(optigraph.__file__)))  # this tree, not an installed one
    done = subprocess.run(
        no_namespaces.command("-c", NO_NAMESPACES),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": tree},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["strict"] == {"namespaces": "unshare: Operation not permitted", "tmpfs": "needs the namespaces layer"}
    assert seen["reduced"] == "ran\n"
    assert seen["layers"] == sorted(LEVELS["reduced"])


UNPRIVILEGED = """
import asyncio, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("runner", sys.argv[1])
runner = importlib.util.module_from_spec(spec)
sys.modules["runner"] = runner
spec.loader.exec_module(runner)

async def main():
    ran = await runner.run_python("print(6 * 7)")
    net = await runner.run_python("import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=3)",
                                  allow_modules=("socket",), audit_guard=False)
    fork = await runner.run_python("import os\\nos.fork()", allow_modules=("os",), audit_guard=False)
    print(json.dumps({"stdout": ran.stdout, "layers": sorted(ran.layers), "unavailable": ran.unavailable,
                      "net": net.error_kind, "fork": fork.error_kind}))

asyncio.run(main())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/sbin/runuser") or not os.path.exists("/usr/bin/python3"),
    reason="needs root, runuser and a system python",
)
def test_an_unprivileged_server_gets_the_same_layers():
    """The runner is stdlib only, so a system interpreter can run it as `nobody`: the namespaces
    then come from an unprivileged user namespace."""
    import json
    import subprocess

    from optigraph.sandbox import runner

    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.version_info >= (3, 11))"], capture_output=True, text=True
    )
    if version.stdout.strip() != "True":
        pytest.skip("the system python is older than 3.11")
    done = subprocess.run(
        ["/usr/sbin/runuser", "-u", "nobody", "--", "/usr/bin/python3", "-I", "-c", UNPRIVILEGED, runner.__file__],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip("nobody cannot read the sandbox's source here")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["stdout"] == "42\n"
    assert seen["net"] == "forbidden" and seen["fork"] == "forbidden"
    if "namespaces" in seen["layers"]:  # where unprivileged user namespaces are allowed
        assert not seen["unavailable"], seen["unavailable"]
