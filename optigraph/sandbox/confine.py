"""Kernel confinement the sandbox child applies to itself before any model-written code runs.

Stdlib only: this module is loaded by `child.py` in a fresh interpreter, not through the package.
Each function applies one layer and returns a short description of what is now in force, or raises
`LayerUnavailable` saying why it is not; the child records both and carries on with the others, so
a kernel that lacks one mechanism still gets every other.

Order matters (see `child.py`): namespaces and the private mount need capabilities, so they come
first; then limits, Landlock and the capability drop; the seccomp filter is last because it forbids
the calls the earlier steps make.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class LayerUnavailable(Exception):
    """This kernel or this process cannot apply the layer (the message says why)."""


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise LayerUnavailable(f"{what}: {os.strerror(errno)}")
    return result


# ---- namespaces --------------------------------------------------------------------------------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
_ISOLATED = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET


def enter_namespaces() -> str:
    """New network (no interfaces but a down loopback), mount, IPC and UTS namespaces.

    As root the process can create them directly. Otherwise it first creates a user namespace in
    which it maps only its own uid and gid, which unprivileged users may do where the kernel allows
    it; root falls back to that too where it lacks CAP_SYS_ADMIN (some containers)."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and _libc.unshare(_ISOLATED) == 0:
        return "net, mount, ipc, uts"
    _check(_libc.unshare(_ISOLATED | CLONE_NEWUSER), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return "user, net, mount, ipc, uts"


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise LayerUnavailable(f"{path}: {exc.strerror}") from None


MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000


def private_workdir(path: str, size_mb: int, inodes: int = 4096) -> str:
    """Mounts a fresh, size-bounded tmpfs over the work directory, inside the child's own mount
    namespace: nothing written there reaches the host's disk, it vanishes with the process, and
    `noexec` stops a written file from being mapped as code."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    options = f"size={size_mb}m,nr_inodes={inodes},mode=0700".encode()
    _check(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options), "mount tmpfs")
    os.chdir(path)  # the old cwd is the directory underneath the new mount
    return f"tmpfs {size_mb} MiB, noexec"


# ---- resource limits ---------------------------------------------------------------------------


def set_limits(*, memory_mb: int, cpu_s: int, nproc: int, fsize_mb: int, nofile: int) -> str:
    """Hard limits (soft == hard, so the program cannot raise them again). CPU time gets one second
    of grace: SIGXCPU at the soft limit, SIGKILL at the hard one."""
    mib = 1024 * 1024
    limits = {
        resource.RLIMIT_AS: (memory_mb * mib, memory_mb * mib),
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
        resource.RLIMIT_NPROC: (nproc, nproc),
        resource.RLIMIT_FSIZE: (fsize_mb * mib, fsize_mb * mib),
        resource.RLIMIT_NOFILE: (nofile, nofile),
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, value in limits.items():
        resource.setrlimit(which, value)
    # The kernel exempts uid 0 from RLIMIT_NPROC; the seccomp filter is what stops forks there.
    nproc_note = " (not enforced for uid 0)" if os.getuid() == 0 else ""
    return (
        f"address space {memory_mb} MiB, cpu {cpu_s} s, processes {nproc}{nproc_note}, "
        f"file size {fsize_mb} MiB, open files {nofile}, no core dumps"
    )


# ---- no_new_privs and capabilities -------------------------------------------------------------

PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def no_new_privs() -> str:
    """Nothing this process runs may gain privileges (set-uid files, file capabilities); also what
    lets an unprivileged process install Landlock and seccomp filters."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    return "set"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> str:
    """Empties the bounding, ambient, effective, permitted and inheritable capability sets (root in
    the host, or root of the child's user namespace, becomes an ordinary process)."""
    last = 40
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: nothing to drop then
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    return "all dropped"


# ---- Landlock ----------------------------------------------------------------------------------

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # one number on every arch
_FS = {
    name: 1 << bit
    for bit, name in enumerate(
        (
            "execute",
            "write_file",
            "read_file",
            "read_dir",
            "remove_dir",
            "remove_file",
            "make_char",
            "make_dir",
            "make_reg",
            "make_sock",
            "make_fifo",
            "make_block",
            "make_sym",
            "refer",
            "truncate",
            "ioctl_dev",
        )
    )
}
_FS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # how many of the rights above each ABI knows


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock(*, read: list[str], write: list[str], devices: list[str]) -> str:
    """Confines the filesystem to reading under `read`, full access under `write` and reading and
    writing the device files `devices`; with ABI 4+ also denies every TCP bind and connect, and with
    ABI 6+ signals and abstract unix sockets outside this process. Nothing can lift it later."""
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        raise LayerUnavailable("Landlock is not enabled in this kernel")
    handled = (1 << _FS_BY_ABI.get(abi, 16)) - 1
    file_rights = _FS["read_file"] | _FS["write_file"] | _FS["truncate"]
    read_rights = _FS["read_file"] | _FS["read_dir"]
    write_rights = handled & ~(
        _FS["execute"] | _FS["make_char"] | _FS["make_block"] | _FS["make_sock"] | _FS["ioctl_dev"]
    )
    attr = _RulesetAttr(handled, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(_libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock_create_ruleset")
    try:
        for paths, rights in ((read, read_rights), (write, write_rights), (devices, file_rights & handled)):
            for path in paths:
                _allow(ruleset, path, rights if os.path.isdir(path) else rights & file_rights)
        _check(_libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    extras = (", no TCP" if abi >= 4 else "") + (", no signals or abstract sockets outside" if abi >= 6 else "")
    return f"ABI {abi}: filesystem{extras}"


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this system lacks needs no rule
    try:
        rule = _PathBeneath(rights, fd)
        _check(_libc.syscall(_SYS_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), f"landlock rule for {path}")
    finally:
        os.close(fd)


# ---- seccomp -----------------------------------------------------------------------------------

# Denied system calls: new processes and programs, new sockets (the network, and the host's unix
# sockets where there is no network namespace), namespaces and mounts, tracing other processes,
# kernel keyrings, BPF, io_uring (which performs calls seccomp never sees) and the like.
_DENIED = {
    "x86_64": (
        0xC000003E,
        56,
        435,
        [
            57,
            58,
            59,
            322,  # fork, vfork, execve, execveat
            41,  # socket (socketpair stays: an unconnected pair reaches nothing)
            101,
            310,
            311,  # ptrace, process_vm_readv, process_vm_writev
            272,
            308,
            165,
            166,
            155,
            161,  # unshare, setns, mount, umount2, pivot_root, chroot
            321,
            323,
            298,
            250,
            248,
            249,  # bpf, userfaultfd, perf_event_open, keyctl, add_key, request_key
            303,
            304,
            246,
            175,
            313,
            176,  # name/open_by_handle_at, kexec_load, init/finit/delete_module
            425,
            428,
            429,
            430,
            431,
            432,
            433,
            442,  # io_uring_setup, the new mount API
        ],
    ),
    "aarch64": (
        0xC00000B7,
        220,
        435,
        [
            221,
            281,  # execve, execveat (no fork or vfork on this architecture: clone covers them)
            198,  # socket
            117,
            270,
            271,
            97,
            268,
            40,
            39,
            41,
            51,
            280,
            282,
            241,
            219,
            217,
            218,
            264,
            265,
            104,
            105,
            273,
            106,
            425,
            428,
            429,
            430,
            431,
            432,
            433,
            442,
        ],
    ),
}


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x00010000


def seccomp_filter() -> str:
    """A filter that makes every new process or program, and every new socket, fail with EPERM
    (threads stay allowed: clone with CLONE_THREAD), along with the calls in `_DENIED`. clone3
    answers ENOSYS so the C library falls back to clone, whose flags a filter can read."""
    machine = platform.machine()
    if machine not in _DENIED:
        raise LayerUnavailable(f"no filter for {machine}")
    arch, clone, clone3, denied = _DENIED[machine]
    prog = [(_LD, 0, 0, 4), (_JEQ, 1, 0, arch), (_RET, 0, 0, _KILL), (_LD, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would bypass the list
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _ERRNO | _EPERM)]
    for nr in denied:
        prog += [(_JEQ, 0, 1, nr), (_RET, 0, 0, _ERRNO | _EPERM)]
    prog += [(_JEQ, 0, 1, clone3), (_RET, 0, 0, _ERRNO | _ENOSYS)]
    prog += [(_JEQ, 0, 3, clone), (_LD, 0, 0, 16), (_JSET, 1, 0, _CLONE_THREAD), (_RET, 0, 0, _ERRNO | _EPERM)]
    prog += [(_RET, 0, 0, _ALLOW)]
    filters = (_Filter * len(prog))(*(_Filter(*ins) for ins in prog))
    program = _Program(len(prog), filters)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0), "seccomp")
    return "no new processes, programs or sockets, namespaces, mounts, tracing, bpf, io_uring"
