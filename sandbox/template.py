"""The sandbox template (zygote): a pre-imported, single-threaded process that forks hosts.

Why exec a fresh interpreter (``python -I -m plugvisor.sandbox.template``) rather
than fork the caller: the caller is typically the daemon, multi-threaded (call socket,
monitor, kombu consumer), and a fork of a threaded process inherits locks held by other
threads (logging, import lock, allocator) and every open fd and secret in memory
(registry connections, keys). An exec'd template starts from nothing, imports exactly the
runtime and the default profile's standard library once, opens the read-only O_PATH handles
while root, has the seccomp BPF compiled by a throw-away child (libseccomp stays out), and
stays single-threaded -- so a fork of *it* is safe and cheap (the children share its warm
pages). ``-I`` keeps the venv (``pyvenv.cfg``) but
ignores ``PYTHON*`` variables and the user site; the ~60 ms interpreter start is paid once.

Control channel: a ``SOCK_SEQPACKET`` socketpair (message boundaries keep each request
and its passed fd together). Parent -> template: a pickled :class:`SpawnOrder` plus the
child's end of a fresh channel via ``SCM_RIGHTS`` (the parent is the trusted side; the
template never reads anything a plugin wrote). Template -> parent: JSON
``{"op": "spawned", "seq", "pid"}`` with a pidfd for race-free signalling, ``{"op":
"spawn_failed", "seq", "error"}``, and ``{"op": "exited", "pid", "code"}`` once the template
has reaped a child. The template multiplexes the control socket and every child's pidfd in
one ``selectors`` loop, so concurrent spawns never wait on each other and every child is
reaped as soon as it exits (no zombies). The template exits when the parent closes the
control channel; its children get SIGKILL then (parent-death signal).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import pickle
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any

from plugvisor.sandbox.protocol import (
    FrameType,
    SpawnOrder,
    encode_frame,
    error_envelope,
)

__all__ = ["RUNTIME_PRELOAD", "import_modules", "main"]

#: Imported once in the template besides the modules of the default profile (which the
#: parent names on the command line): what the runtime needs after the lock-down (lazy
#: imports of the stdlib, codecs looked up by name, C extensions whose shared libraries sit
#: outside the Landlock rules). A profile's other modules are imported by its child before
#: the lock-down (:func:`import_modules` in the child), so every plugin process carries only
#: what its own profile allows, not the union of all profiles (trusted's network stack is
#: large; tests/sandbox/test_host_footprint.py measures a host).
RUNTIME_PRELOAD = (
    "json", "decimal", "zoneinfo", "hashlib", "_strptime", "locale", "encodings.idna",
    "encodings.utf_16", "encodings.utf_32", "encodings.latin_1", "encodings.ascii",
    "encodings.cp1252", "encodings.utf_8_sig", "encodings.punycode", "encodings.unicode_escape",
    "encodings.raw_unicode_escape", "encodings.base64_codec", "encodings.hex_codec",
    "importlib.resources", "importlib.resources.abc", "importlib.util", "importlib.machinery",
    "zipfile", "ctypes",
)  # fmt: skip


def import_modules(names: Iterable[str]) -> None:
    """Import ``names`` that are modules (``os.path``); skip class paths and missing ones."""
    for name in sorted(set(names)):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            continue  # optional on this Python build, or not a module (a class path)


def _preload(profile_modules: Iterable[str]) -> None:
    import_modules({*RUNTIME_PRELOAD, *profile_modules})
    # The runtime itself, so the child never imports plugvisor code after the lock-down.
    import plugvisor.sandbox._fallback_policy  # noqa: PLC0415
    import plugvisor.sandbox.child  # noqa: PLC0415
    import plugvisor.sandbox.lockdown  # noqa: PLC0415

    # A missing policy module is reported as the "policy" layer missing.
    with contextlib.suppress(ImportError):
        import plugvisor.sandbox.policy  # noqa: F401, PLC0415


def _trim_heap() -> None:
    """Hand the heap the imports freed back to the kernel: a child's RSS starts as the
    template's resident pages, so every page not kept is one no plugin process carries."""
    import ctypes  # noqa: PLC0415 -- already imported by the preload

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


def _send(ctl: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


class _Template:
    def __init__(self, ctl: socket.socket) -> None:
        from plugvisor.sandbox.lockdown import prepare  # noqa: PLC0415

        self.ctl = ctl
        self.res = prepare()
        self.sel = selectors.DefaultSelector()
        self.sel.register(ctl, selectors.EVENT_READ, None)
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.users: dict[str, tuple[int, int]] = {}

    def loop(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    if not self._on_control():
                        self._kill_all()
                        return
                else:
                    self._reap(key.fd)

    def _kill_all(self) -> None:
        """The parent is gone: kill and reap every child ourselves rather than leave them
        to the parent-death signal and a PID 1 that may not reap (containers)."""
        for pidfd, pid in list(self.children.items()):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            os.close(pidfd)
        self.children.clear()

    def _on_control(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, 1 << 22, 4)
        except (ConnectionError, OSError):
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False  # the parent closed the channel: we are done
        try:
            order = pickle.loads(data)  # noqa: S301 -- from the trusted parent only
            if not isinstance(order, SpawnOrder) or len(fds) != 1:
                raise ValueError("malformed spawn order")
        except (pickle.UnpicklingError, ValueError, AttributeError, ImportError) as exc:
            for fd in fds:
                os.close(fd)
            _send(self.ctl, {"op": "spawn_failed", "seq": -1, "error": str(exc)})
            return True
        self._spawn(order, fds[0])
        return True

    def _user(self, name: str) -> tuple[int, int] | None:
        from plugvisor.sandbox.lockdown import (  # noqa: PLC0415
            can_change_identity,
            resolve_user,
        )

        if not can_change_identity():
            return None
        if name not in self.users:
            self.users[name] = resolve_user(name)
        return self.users[name]

    def _spawn(self, order: SpawnOrder, chan_fd: int) -> None:
        try:
            ids = self._user(order.sandbox_user)
            pid = os.fork()
        except (OSError, LookupError) as exc:
            os.close(chan_fd)
            _send(self.ctl, {"op": "spawn_failed", "seq": order.seq, "error": str(exc)})
            return
        if pid == 0:  # pragma: no cover - runs in the child, reported over its channel
            code = 70
            try:
                code = _child_main(order, chan_fd, self.res, ids)
            except BaseException:  # never fall back into the template's loop
                _report_failure(chan_fd, "runtime_error", "plugin runtime failed")
            finally:
                os._exit(code)
        os.close(chan_fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        _send(self.ctl, {"op": "spawned", "seq": order.seq, "pid": pid}, [pidfd])

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)  # readable pidfd: it has exited, no blocking
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -1
        with contextlib.suppress(OSError):  # parent gone: we exit on the next control read
            _send(self.ctl, {"op": "exited", "pid": pid, "code": code})


def _report_failure(chan_fd: int, rule: str, message: str, hello: bool = False) -> None:
    """Best effort: tell the parent why the child is dying (it logs the trace, callers do
    not see it). ``hello`` first when the child has not said HELLO yet."""
    from plugvisor.sandbox.protocol import PROTOCOL_VERSION  # noqa: PLC0415

    env = error_envelope(f"sandbox.{rule}", message, trace=traceback.format_exc(limit=8)[-3000:])
    data = encode_frame(FrameType.FAILED, 0, env)
    if hello:
        hello_payload = json.dumps({"protocol": PROTOCOL_VERSION}).encode()
        data = encode_frame(FrameType.HELLO, 0, hello_payload) + data
    with contextlib.suppress(OSError):  # the parent is gone: nothing left to tell
        os.write(chan_fd, data)


def _child_main(order: SpawnOrder, chan_fd: int, res: Any, ids: tuple[int, int] | None) -> int:
    """In the forked child: open handles as root, lock down, then serve the plugin."""
    from plugvisor.sandbox.child import ChildConfig, serve  # noqa: PLC0415
    from plugvisor.sandbox.lockdown import (  # noqa: PLC0415
        LockdownPlan,
        can_change_identity,
        lock_down,
    )

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock = socket.socket(fileno=chan_fd)
    can_switch = can_change_identity()
    try:
        # What this profile allows beyond the template's preload, imported while the
        # files (and shared libraries outside the Landlock rules) are still reachable.
        import_modules(order.profile.allowed_modules())
        # Opened while still root: the state dir may sit under a directory the sandbox
        # user cannot traverse (pytest's /tmp/pytest-of-root is 0700, a clone under
        # /root). The child reaches the code through /proc/self/fd/N -- the magic link
        # skips the ancestors' permission checks -- and Landlock's rule attaches to the
        # inode via the same handle. The code dir itself must be readable by the user
        # (the version store makes it 0o555).
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        code_fd = os.open(order.code_dir, flags)
        data_fd = None
        if order.data_dir is not None:
            if ids is not None:
                os.chown(order.data_dir, ids[0], ids[1], follow_symlinks=False)
            data_fd = os.open(order.data_dir, flags | os.O_NOFOLLOW)
        plan = LockdownPlan(
            channel_fd=chan_fd,
            code_fd=code_fd,
            data_fd=data_fd,
            memory_limit=int(order.profile.memory_limit),
            max_files=int(order.profile.max_files),
            cpu_seconds=float(order.profile.max_execution_time) * 2 + 5,
            network_allowed=bool(order.profile.network_allowed),
            uid=ids[0] if ids else None,
            gid=ids[1] if ids else None,
        )
        layers, lock_ms, steps = lock_down(plan, res, can_switch)
    except Exception as exc:  # any failure here must reach the parent, not vanish
        _report_failure(
            chan_fd, "lockdown_failed", f"lock-down failed: {type(exc).__name__}: {exc}", True
        )
        return 3
    install = _policy_installer(order.in_process_policy)
    cfg = ChildConfig(
        plugin=order.plugin,
        version=order.version,
        entrypoint=order.entrypoint,
        profile=order.profile,
        plugin_root=f"/proc/self/fd/{code_fd}",
        data_dir=f"/proc/self/fd/{data_fd}" if data_fd is not None else None,
        config=order.config,
        max_response_bytes=order.max_response_bytes,
    )
    hello = {
        "layers": {layer.name: layer.to_dict() for layer in layers} | {"policy": install[1]},
        "lockdown_ms": round(lock_ms, 3),
        "lockdown_steps_ms": steps,
    }
    try:
        return serve(sock, cfg, hello, install[0])
    except Exception as exc:  # a runtime bug: tell the parent, which logs it
        _report_failure(
            chan_fd, "runtime_error", f"plugin runtime failed: {type(exc).__name__}: {exc}"
        )
        return 6


def _policy_installer(wanted: bool) -> tuple[Any, dict[str, Any]]:
    from plugvisor.sandbox._fallback_policy import (  # noqa: PLC0415
        install_fallback_policy,
    )

    try:
        from plugvisor.sandbox.policy import install_policy  # noqa: PLC0415
    except ImportError as exc:
        return install_fallback_policy, {
            "available": False,
            "active": False,
            "reason": f"in-process policy module missing ({exc}); OS layers only",
        }
    if not wanted:
        return install_fallback_policy, {
            "available": True,
            "active": False,
            "reason": "disabled by the spawner (OS layers only)",
        }
    return install_policy, {
        "available": True,
        "active": True,
        "reason": "PEP 578 audit hook, import policy, restricted builtins",
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -I -m plugvisor.sandbox.template CONTROL_FD [MODULES]``.

    ``MODULES``: comma-separated modules to pre-import (the default profile's).
    """
    args = sys.argv[1:] if argv is None else argv
    ctl = socket.socket(fileno=int(args[0]))
    # Ctrl-C in a terminal reaches the whole foreground group: the daemon decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    t0 = time.perf_counter()
    _preload(filter(None, args[1].split(",")) if len(args) > 1 else ())
    from plugvisor.sandbox.protocol import PROTOCOL_VERSION  # noqa: PLC0415

    try:
        tpl = _Template(ctl)
        # Move everything imported so far out of the collector's reach: a collection in a
        # child would otherwise touch (and so copy) every inherited object's page.
        gc.collect()
        gc.freeze()
        _trim_heap()
    except Exception as exc:  # report, then die: the parent raises sandbox.template_failed
        _send(ctl, {"op": "ready", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(
        ctl,
        {
            "op": "ready",
            "ok": True,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "start_ms": round((time.perf_counter() - t0) * 1000, 1),
            "landlock_abi": tpl.res.landlock_abi,
            "seccomp": tpl.res.seccomp_reason or "ok",
            "netns": tpl.res.netns_reason or "ok",
        },
    )
    tpl.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
