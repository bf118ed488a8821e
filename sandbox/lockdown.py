"""The OS layers of the sandbox, applied in the freshly forked child, in a fixed order.

Order (see PLATFORM-NOTES "A lock-down that worked"; each step needs the one before):
setsid -> close every fd but the channel and the O_PATH handles -> scrub the environment
-> rlimits (all but NPROC) -> private network namespace (needs root, so before the drop)
-> drop to the sandbox user + drop every capability -> RLIMIT_NPROC (only meaningful for
a non-root uid) -> PR_SET_NO_NEW_PRIVS -> Landlock -> seccomp. The in-process policy and
the plugin import come after, in ``child.py``.

Everything that is expensive or needs files the child will no longer reach is prepared
once in the template (:func:`prepare`): the seccomp BPF program, the O_PATH handles of the
read-only trees, the libc handle, the sandbox user's ids. A layer the kernel lacks is
reported (available=False, with the reason) and logged by the parent as a warning; a layer
that is available but fails to apply aborts the spawn (``sandbox.lockdown_failed``): a host
is never started with a silent gap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import resource
import sys
import sysconfig
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

from plugvisor.sandbox.layer_status import LayerStatus

__all__ = [
    "LockdownPlan",
    "LockdownResources",
    "can_change_identity",
    "landlock_abi",
    "lock_down",
    "prepare",
    "resolve_user",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.unshare.restype = ctypes.c_int
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.capset.restype = ctypes.c_int

# ---- constants (linux/prctl.h, linux/landlock.h, linux/sched.h) ------------------------
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_GET_NO_NEW_PRIVS = 39
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CLONE_NEWNET = 0x40000000
_CLONE_THREAD = 0x00010000

# Landlock syscalls have the same numbers on every architecture (generic table).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

_FS_READ_ONLY = _FS_READ_FILE | _FS_READ_DIR
_FS_READ_WRITE = (
    _FS_READ_ONLY | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG
)


def _fs_handled(abi: int) -> int:
    """Every file-system right the given ABI knows: all of them are denied unless granted."""
    if abi >= 5:
        return (1 << 16) - 1  # + IOCTL_DEV
    if abi >= 3:
        return (1 << 15) - 1  # + TRUNCATE
    if abi >= 2:
        return (1 << 14) - 1  # + REFER
    return (1 << 13) - 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return int(abi) if abi > 0 else 0


# ---- seccomp ------------------------------------------------------------------------------
#: Denied with EPERM in every sandbox: process creation and program execution, kernel
#: attack surface a plugin never needs, privilege and identity changes, other processes'
#: memory. Unknown names (older libseccomp/kernel) are skipped.
_SECCOMP_DENY = [
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "personality",
    "unshare",
    "setns",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "fanotify_init",
    "kcmp",
    "pidfd_getfd",
    "memfd_secret",
    "vhangup",
    "uselib",
    # Metadata changes: Landlock (ABI <= 7) does not cover them, and a file owned by the
    # sandbox user elsewhere (another plugin's data under trusted) would be fair game.
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr",
    "setxattrat", "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
]  # fmt: skip


def build_seccomp_bpf(network_allowed: bool) -> bytes:
    """Compile the filter into raw BPF the child loads with prctl (see _build_bpf_aside)."""
    import tempfile  # noqa: PLC0415 -- only in the template's throw-away helper

    import pyseccomp  # noqa: PLC0415

    eperm = pyseccomp.ERRNO(errno.EPERM)
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in _SECCOMP_DENY:
        try:
            filt.add_rule(eperm, name)
        except (OSError, ValueError, RuntimeError):
            continue  # syscall unknown to this libseccomp / architecture
    # Threads are fine (clone with CLONE_THREAD); new processes are not.
    filt.add_rule(eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_THREAD, 0))
    # seccomp cannot read clone3's flags (they sit behind a pointer): ENOSYS makes glibc
    # fall back to clone(), which the rule above inspects. EPERM would break threads.
    filt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    if not network_allowed:
        # No new sockets of any family: IP, packet, netlink, vsock, AF_ALG, and AF_UNIX
        # too (Landlock does not cover connect() to a pathname socket, and a 0o777 socket
        # file of another service would be reachable). The channel is inherited, so the
        # runtime never calls socket(). What remains is socketpair(AF_UNIX, SOCK_STREAM):
        # connected streams that can only talk to each other (sendto ignores addresses).
        filt.add_rule(eperm, "socket")
        for name in ("connect", "bind", "listen", "accept", "accept4"):
            filt.add_rule(eperm, name)
        filt.add_rule(eperm, "socketpair", pyseccomp.Arg(0, pyseccomp.NE, 1))
        for sock_type in (0, *range(2, 16)):  # any type but SOCK_STREAM (flags masked off)
            filt.add_rule(
                eperm, "socketpair", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xF, sock_type)
            )
    with tempfile.TemporaryFile() as fh:
        filt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def _build_bpf_aside() -> dict[bool, bytes | None]:
    """Both filters (network denied / allowed), compiled in a throw-away child.

    pyseccomp, ctypes.util and libseccomp then never enter the template, so no plugin
    process carries them -- the template only keeps the raw BPF.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper child
        os.close(rfd)
        code = 0
        try:
            out = [build_seccomp_bpf(net) for net in (False, True)]
            data = b"".join(len(b).to_bytes(4, "big") + b for b in out)
        except Exception as exc:  # reported to the template as the seccomp layer missing
            data, code = f"{type(exc).__name__}: {exc}".encode(), 1
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view) :]
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    with open(rfd, "rb") as fh:
        while chunk := fh.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(data.decode(errors="replace") or f"helper exited with {status}")
    filters: list[bytes] = []
    while data:
        size = int.from_bytes(data[:4], "big")
        filters.append(data[4 : 4 + size])
        data = data[4 + size :]
    if len(filters) != 2 or any(len(f) % 8 for f in filters):
        raise RuntimeError("malformed BPF from the helper")
    return {False: filters[0], True: filters[1]}


def _load_seccomp(bpf: bytes) -> None:
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    if (
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0
    ):  # pragma: no cover - only on a kernel without seccomp filters
        raise _oserror("prctl(PR_SET_SECCOMP)")


# ---- preparation in the template ------------------------------------------------------
@dataclass(frozen=True)
class LockdownResources:
    """What the template prepares once and every child inherits across fork."""

    #: O_PATH handles of the read-only trees the runtime needs (stdlib, zoneinfo).
    ro_fds: tuple[int, ...]
    ro_paths: tuple[str, ...]
    #: Raw BPF, keyed by "network allowed"; None when seccomp is unavailable.
    seccomp_bpf: dict[bool, bytes | None]
    seccomp_reason: str
    landlock_abi: int
    cap_last_cap: int
    netns_reason: str


def _runtime_read_only_paths() -> list[str]:
    """The interpreter's standard library and the time-zone database."""
    paths: list[str] = []
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.append(p)
    for entry in sys.path:
        # lib-dynload and friends, but never site-packages (third-party code is not
        # part of the plugin runtime contract).
        if entry and os.path.isdir(entry) and "-packages" not in entry:
            paths.append(entry)
    paths.extend(p for p in zoneinfo.TZPATH if os.path.isdir(p))
    out: list[str] = []
    for p in paths:
        real = os.path.realpath(p)
        if real not in out:
            out.append(real)
    return out


def prepare() -> LockdownResources:
    """Template-side preparation: O_PATH handles while root, BPF built once, probes."""
    ro_paths = _runtime_read_only_paths()
    ro_fds = tuple(os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p in ro_paths)
    bpf: dict[bool, bytes | None] = {True: None, False: None}
    reason = ""
    try:
        bpf = _build_bpf_aside()
    except (ImportError, OSError, RuntimeError) as exc:
        reason = f"libseccomp unusable: {exc}"
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            last_cap = int(fh.read())
    except OSError:
        last_cap = 40
    return LockdownResources(
        ro_fds=ro_fds,
        ro_paths=tuple(ro_paths),
        seccomp_bpf=bpf,
        seccomp_reason=reason,
        landlock_abi=landlock_abi(),
        cap_last_cap=last_cap,
        netns_reason=_probe_netns(),
    )


def _probe_netns() -> str:
    """'' when unshare(CLONE_NEWNET) works here, else why not (probed in a throw-away child)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        rc = _libc.unshare(_CLONE_NEWNET)
        os._exit(0 if rc == 0 else min(ctypes.get_errno(), 255) or 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return ""
    return f"unshare(CLONE_NEWNET) refused: {os.strerror(code) if code > 0 else code}"


def resolve_user(name: str) -> tuple[int, int]:
    """(uid, gid) of the sandbox user; resolved in the template (NSS needs files)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LookupError(f"sandbox_user {name!r} does not exist") from None
    if pw.pw_uid == 0:
        raise LookupError(f"sandbox_user {name!r} is root; choose an unprivileged user")
    return pw.pw_uid, pw.pw_gid


# ---- the child-side sequence ----------------------------------------------------------------
@dataclass(frozen=True)
class LockdownPlan:
    """What one child must apply; built by the template from the spawn order."""

    channel_fd: int
    code_fd: int
    data_fd: int | None  # writable data_dir handle, or None
    memory_limit: int
    max_files: int
    cpu_seconds: float
    network_allowed: bool
    uid: int | None  # None: do not change identity (not root)
    gid: int | None
    keep_fds: tuple[int, ...] = field(default=())


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _close_fds_except(keep: Iterable[int]) -> None:
    last = 3
    for fd in sorted(k for k in set(keep) if k >= 3):
        if fd > last:
            os.closerange(last, fd)
        last = fd + 1
    os.closerange(last, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def arm_cpu_limit(seconds: float) -> None:
    """Re-arm the RLIMIT_CPU backstop to ``seconds`` of CPU from now (per request)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    now = used.ru_utime + used.ru_stime
    soft = int(now + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _set_rlimits(plan: LockdownPlan) -> str:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = max(64, plan.max_files + 32)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if plan.data_fd is None:
        # Python ignores SIGXFSZ, so a write to a regular file fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    # The interpreter and the pre-imported runtime are already mapped: the plugin gets
    # memory_limit on top of what the process maps now. A limit below the interpreter's
    # start-up needs would hang it retrying mmap (PLATFORM-NOTES), hence "on top".
    vm = _vm_size()
    limit = vm + plan.memory_limit
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # CPU: soft limit re-armed per request by the child runtime; SIGXCPU kills when a
    # request spins past it even if the parent's wall-clock deadline were not to fire.
    arm_cpu_limit(plan.cpu_seconds)
    return f"AS={limit // 1024**2}MiB (vm {vm // 1024**2}MiB + {plan.memory_limit // 1024**2}MiB)"


_CAP_SETGID = 6
_CAP_SETUID = 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _capabilities() -> dict[str, int]:
    """The capability sets of this process (``CapEff``, ``CapPrm``, ... of /proc/self/status)."""
    caps: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                caps[key] = int(value.strip(), 16)
    return caps


def can_change_identity() -> bool:
    """Whether plugin processes can be moved to the sandbox user from this process.

    True for root, and for an unprivileged service user holding CAP_SETUID and
    CAP_SETGID (what the systemd units grant the daemon and workers as ambient
    capabilities), so that production does not depend on running as root.
    """
    if os.geteuid() == 0:
        return True
    need = (1 << _CAP_SETUID) | (1 << _CAP_SETGID)
    return _capabilities().get("CapEff", 0) & need == need


def _clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (always allowed: it only lowers)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _oserror("capset")


def _drop_privileges(plan: LockdownPlan, last_cap: int) -> None:
    assert plan.uid is not None and plan.gid is not None
    # The bounding set can only be dropped while holding CAP_SETPCAP (root has it). A
    # service user with a few ambient capabilities does not: its bounding set is the
    # unit's CapabilityBoundingSet, and the capset below empties every set it holds.
    for cap in range(last_cap + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                continue
            if err == errno.EPERM and os.geteuid() != 0:
                break
            raise _oserror(f"PR_CAPBSET_DROP {cap}")
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(plan.gid, plan.gid, plan.gid)
    os.setresuid(plan.uid, plan.uid, plan.uid)
    # Leaving uid 0 clears the capability sets by itself, but a process that never was
    # root keeps them across setresuid: clear them explicitly in every case.
    _clear_capabilities()
    caps = _capabilities()
    held = {k: v for k, v in caps.items() if k in ("CapEff", "CapPrm", "CapInh", "CapAmb") and v}
    if os.getresuid() != (plan.uid, plan.uid, plan.uid) or os.getgroups() or held:
        raise PermissionError(f"privilege drop did not stick (still holding {held or 'ids'})")


def _landlock(plan: LockdownPlan, abi: int, ro_fds: Iterable[int]) -> str:
    attr = _RulesetAttr(_fs_handled(abi), 0, 0)
    size = 8
    net = "network allowed"
    if abi >= 4:
        size = 16
        if not plan.network_allowed:
            attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
            net = "TCP bind/connect denied"
    scoped = ""
    if abi >= 6:
        size = 24
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        scoped = ", signals and abstract sockets scoped"
    rs = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if rs < 0:
        raise _oserror("landlock_create_ruleset")
    try:
        handled = _fs_handled(abi)
        rules = [(fd, _FS_READ_ONLY) for fd in ro_fds]
        rules.append((plan.code_fd, _FS_READ_ONLY))
        if plan.data_fd is not None:
            rw = _FS_READ_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
            rules.append((plan.data_fd, rw & handled))
        for fd, access in rules:
            rule = _PathBeneathAttr(access, fd)
            if (
                _libc.syscall(
                    _SYS_LANDLOCK_ADD_RULE,
                    int(rs),
                    _LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                )
                != 0
            ):
                raise _oserror(f"landlock_add_rule fd {fd}")
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, int(rs), 0) != 0:
            raise _oserror("landlock_restrict_self")
    finally:
        os.close(int(rs))
    writable = "data_dir read-write" if plan.data_fd is not None else "no writable path"
    return f"ABI {abi}: read-only code+stdlib+zoneinfo, {writable}, {net}{scoped}"


def lock_down(
    plan: LockdownPlan, res: LockdownResources, can_switch: bool
) -> tuple[list[LayerStatus], float, dict[str, float]]:
    """Apply every OS layer in order: one status per layer, total ms, ms per step.

    ``can_switch``: this process may move to the sandbox user (:func:`can_change_identity`).

    Raises ``OSError``/``PermissionError`` when an available layer fails to apply; the
    caller turns that into ``sandbox.lockdown_failed`` and the child exits.
    """
    t0 = mark = time.perf_counter()
    out: list[LayerStatus] = []
    steps: dict[str, float] = {}

    def timed(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round((now - mark) * 1000, 3)
        mark = now

    def ok(name: str, detail: str = "") -> None:
        out.append(LayerStatus(name, True, True, detail))
        timed(name)

    def missing(name: str, available: bool, reason: str) -> None:
        out.append(LayerStatus(name, available, False, reason))
        timed(name)

    template_pid = os.getppid()
    os.setsid()
    ok("session", "own session and process group; SIGKILL on template death")

    keep = {plan.channel_fd, plan.code_fd, *res.ro_fds, *plan.keep_fds}
    if plan.data_fd is not None:
        keep.add(plan.data_fd)
    devnull = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    if devnull > 2:
        os.close(devnull)
    _close_fds_except(keep)
    os.environ.clear()
    ok("fds_env", "only the channel and sandbox handles open; empty environment")

    ok("rlimits", _set_rlimits(plan))

    if plan.network_allowed:
        missing("netns", not res.netns_reason, "profile allows network")
    elif res.netns_reason:
        missing("netns", False, res.netns_reason)
    else:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            raise _oserror("unshare(CLONE_NEWNET)")
        ok("netns", "private network namespace (loopback only, down)")

    if can_switch and plan.uid is not None:
        _drop_privileges(plan, res.cap_last_cap)
        # Counts every process of the sandbox user system-wide (all plugin hosts), so
        # it is a loose backstop; seccomp is what refuses fork.
        resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))
        ok("privileges", f"uid={plan.uid} gid={plan.gid}, no groups, no capabilities")
    else:
        missing(
            "privileges", False,
            "neither root nor CAP_SETUID+CAP_SETGID: stays the daemon's own user",
        )  # fmt: skip

    # Die with the template (which dies with the daemon): no orphaned plugins. Set after
    # the identity change, which resets the parent-death signal.
    _libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != template_pid:  # it died before the signal was armed
        raise OSError(errno.ESRCH, "the sandbox template exited during the lock-down")
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _oserror("PR_SET_NO_NEW_PRIVS")
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    ok("no_new_privs", "PR_SET_NO_NEW_PRIVS=1, not dumpable")

    if res.landlock_abi:
        ok("landlock", _landlock(plan, res.landlock_abi, res.ro_fds))
    else:
        missing("landlock", False, "kernel without Landlock (or disabled at boot)")
    for fd in res.ro_fds:
        os.close(fd)  # the rules hold the inodes; the handles are no longer needed

    bpf = res.seccomp_bpf.get(plan.network_allowed)
    if bpf:
        _load_seccomp(bpf)
        ok(
            "seccomp",
            "exec/fork/ptrace/mount/bpf/keyctl/chmod/chown/utime/xattr/... EPERM, "
            "clone3 ENOSYS" + ("" if plan.network_allowed else ", socket/connect/bind EPERM"),
        )
    else:
        missing("seccomp", False, res.seccomp_reason or "seccomp unavailable")
    return out, (time.perf_counter() - t0) * 1000, steps
