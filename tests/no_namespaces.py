"""Runs a Python command as a container that forbids namespaces would (Docker's default seccomp
profile does): a seccomp filter makes unshare(2) fail with EPERM for the process and everything it
starts. A test helper:

    python tests/no_namespaces.py -m optigraph serve ...   (the rest is the interpreter's arguments)
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# (audit architecture, unshare's number)
UNSHARE = {"x86_64": (0xC000003E, 272), "aarch64": (0xC00000B7, 97)}
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
_LD, _JEQ, _RET = 0x20, 0x15, 0x06
_ALLOW, _ERRNO_EPERM = 0x7FFF0000, 0x00050001


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in UNSHARE


def deny_unshare() -> None:
    """From now on unshare(2) fails with EPERM in this process and its descendants."""
    arch, unshare = UNSHARE[platform.machine()]
    prog = [
        (_LD, 0, 0, 4),
        (_JEQ, 0, 3, arch),
        (_LD, 0, 0, 0),
        (_JEQ, 0, 1, unshare),
        (_RET, 0, 0, _ERRNO_EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    filters = (_Filter * len(prog))(*(_Filter(*ins) for ins in prog))
    program = _Program(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")


def command(*args: str) -> list[str]:
    """The argv that runs `python *args` without namespaces."""
    return [sys.executable, os.path.abspath(__file__), *args]


if __name__ == "__main__":
    deny_unshare()
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
