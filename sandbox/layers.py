"""Which sandbox layers this kernel offers and which a plugin host has active.

:func:`detect_layers` probes the running system without changing the calling process
(the network-namespace probe runs in a throw-away interpreter, because the caller may be
a multi-threaded daemon that must not fork). A spawned host reports what it actually
applied in its HELLO frame (``PluginHost.layers``); ``plugvisor sandbox-check`` shows both.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys

from plugvisor.sandbox.layer_status import LAYER_NAMES, LayerReport, LayerStatus

__all__ = ["LAYER_NAMES", "LayerReport", "LayerStatus", "detect_layers"]

_NETNS_PROBE = (
    "import ctypes,os,sys\n"
    "l=ctypes.CDLL(None,use_errno=True)\n"
    "r=l.unshare(0x40000000)\n"
    "sys.stdout.write('' if r==0 else os.strerror(ctypes.get_errno()))\n"
)


def _probe(*args: str) -> subprocess.CompletedProcess[str] | str:
    """Run ``python ARGS`` in a throw-away interpreter; why it could not run, as a string."""
    try:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probe failed: {exc}"


@functools.cache  # the kernel's answer does not change while we run
def _probe_netns() -> str:
    proc = _probe("-I", "-S", "-c", _NETNS_PROBE)
    if isinstance(proc, str):
        return proc
    if proc.returncode != 0:
        return f"probe failed: {proc.stderr.strip()[-200:]}"
    return f"unshare(CLONE_NEWNET) refused: {proc.stdout}" if proc.stdout else ""


def _seccomp_reason() -> str:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            if not any(line.startswith("Seccomp:") for line in fh):
                return "kernel without seccomp"
    except OSError as exc:
        return f"cannot read /proc/self/status: {exc}"
    return _probe_libseccomp()


@functools.cache
def _probe_libseccomp() -> str:
    """'' when pyseccomp loads libseccomp here; probed in a throw-away interpreter, so the
    daemon never carries the bindings (the template's helper compiles the filter)."""
    proc = _probe("-I", "-c", "import pyseccomp")
    if isinstance(proc, str):
        return proc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return f"pyseccomp/libseccomp unusable: {last[-200:]}"
    return ""


def detect_layers(sandbox_user: str = "nobody") -> LayerReport:
    """Probe this system: ``available`` (the kernel offers it) and ``active`` (a host started
    from this process will apply it)."""
    from plugvisor.sandbox.lockdown import (  # noqa: PLC0415
        can_change_identity,
        landlock_abi,
        resolve_user,
    )

    can_switch = can_change_identity()
    out: list[LayerStatus] = [
        LayerStatus("process", True, True, "one process per plugin version"),
        LayerStatus("session", True, True, "setsid, parent-death signal"),
        LayerStatus("fds_env", True, True, "fds closed, environment emptied"),
        LayerStatus("rlimits", True, True, "AS, CPU, NOFILE, FSIZE, CORE, MEMLOCK, NPROC"),
    ]
    netns = _probe_netns()
    out.append(LayerStatus("netns", not netns, not netns, netns or "private network namespace"))
    if can_switch:
        try:
            uid, gid = resolve_user(sandbox_user)
            out.append(LayerStatus("privileges", True, True, f"{sandbox_user} uid={uid} gid={gid}"))
        except LookupError as exc:
            out.append(LayerStatus("privileges", True, False, str(exc)))
    else:
        out.append(
            LayerStatus(
                "privileges", False, False, "daemon is neither root nor holds CAP_SETUID+CAP_SETGID"
            )
        )
    out.append(LayerStatus("no_new_privs", True, True, "PR_SET_NO_NEW_PRIVS"))
    abi = landlock_abi()
    out.append(
        LayerStatus(
            "landlock", abi > 0, abi > 0, f"ABI {abi}" if abi else "kernel without Landlock"
        )
    )
    sec = _seccomp_reason()
    out.append(LayerStatus("seccomp", not sec, not sec, sec or "BPF syscall filter"))
    # Found, not imported: the policy runs in the plugin processes, not in this one.
    if importlib.util.find_spec("plugvisor.sandbox.policy") is not None:
        out.append(LayerStatus("policy", True, True, "PEP 578 audit hook + import policy"))
    else:
        out.append(LayerStatus("policy", False, False, "policy module missing"))
    try:
        import psutil  # noqa: F401, PLC0415

        out.append(LayerStatus("monitor", True, True, "psutil RSS watchdog"))
    except ImportError as exc:
        out.append(LayerStatus("monitor", False, False, f"psutil missing: {exc}"))
    return LayerReport(tuple(out))
