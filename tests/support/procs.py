"""Process accounting for the benchmarks, the soak and the fault tests (``/proc`` via psutil).

What a leak looks like from outside: the daemon's resident memory and open descriptors,
and processes of the sandbox user (plugin hosts) left behind. Every helper tolerates a
process exiting while it is being looked at.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess

import psutil

__all__ = [
    "alive",
    "descendants",
    "fd_count",
    "orphan_sandbox_processes",
    "rss_bytes",
    "sandbox_processes",
    "terminate",
    "uss_bytes",
]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def uss_bytes(pid: int) -> int:
    """Memory unique to ``pid`` (not shared with the template it was forked from; 0 if gone)."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid`` (entries of ``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def sandbox_processes(user: str = "nobody") -> list[psutil.Process]:
    """Every live process running as the sandbox user (plugin hosts, of any daemon)."""
    uid = _uid(user)
    out = []
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            uids = proc.info["uids"]
            if uids and uids.real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def orphan_sandbox_processes(user: str = "nobody", pids: set[int] | None = None) -> list[int]:
    """Sandbox-user processes whose parent is gone (re-parented to init or a subreaper).

    A plugin host is forked by the daemon's template; when the daemon dies the host must
    exit too. One still running with a parent that is not a live plugvisor process is an
    orphan. ``pids`` restricts the check to those processes (a test's own hosts: other
    test sessions may run hosts of their own on the same machine).
    """
    orphans = []
    for proc in sandbox_processes(user):
        if pids is not None and proc.pid not in pids:
            continue
        try:
            parent = proc.parent()
            if parent is None or parent.pid == 1 or parent.uids().real == _uid(user):
                orphans.append(proc.pid)
                continue
            # Re-parented to a subreaper (a shell, systemd --user): not a plugvisor process.
            cmd = " ".join(parent.cmdline())
            if "plugvisor" not in cmd:
                orphans.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return orphans


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (a daemon's template and plugin hosts)."""
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pids: set[int]) -> set[int]:
    """The subset of ``pids`` still running (zombies count as gone: they hold no resources)."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL its process group if it outstays ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
