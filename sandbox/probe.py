"""A self-test of the OS layers: spawn a probe plugin and try what a plugin must not do.

The probe runs with the in-process policy disabled, so what it sees is the OS boundary
alone (the policy would refuse these operations earlier, which proves nothing about the
kernel layers). Used by ``plugvisor sandbox-check`` and by the tests.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.sandbox.host import HostSpec, Spawner

__all__ = ["PROBE_SOURCE", "proc_status", "run_probe"]

#: Each attempt reports "allowed" or "denied (<errno name>)".
PROBE_SOURCE = """
import errno, os, socket


class Plugin:
    def handle(self, request):
        out = {}

        def attempt(name, fn):
            try:
                fn()
                out[name] = "allowed"
            except OSError as exc:
                out[name] = "denied (%s)" % errno.errorcode.get(exc.errno, exc.errno)

        def fork():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        attempt("read_etc_passwd", lambda: open("/etc/passwd", "rb").read(1))
        attempt("write_tmp", lambda: open("/tmp/plugvisor-probe-%d" % os.getpid(), "wb").close())
        attempt("inet_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
        attempt("inet6_socket", lambda: socket.socket(socket.AF_INET6).close())
        attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX).close())
        attempt("unix_dgram_pair", lambda: [s.close() for s in socket.socketpair(
            socket.AF_UNIX, socket.SOCK_DGRAM)])
        attempt("unix_stream_pair", lambda: [s.close() for s in socket.socketpair()])
        attempt("fork", fork)
        attempt("exec", lambda: os.execv("/bin/true", ["true"]))
        attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
        here = os.path.dirname(__file__)
        attempt("chmod", lambda: os.chmod(here, 0o777))
        attempt("utime", lambda: os.utime(here))
        attempt("setxattr", lambda: os.setxattr(here, "user.probe", b"1"))
        out["uid"] = os.getuid()
        return out
"""


def proc_status(pid: int) -> dict[str, str]:
    """Selected fields of ``/proc/<pid>/status`` (read from outside the sandbox)."""
    keep = ("Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp", "CapEff", "CapPrm", "CapBnd")
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keep:
                out[key] = " ".join(value.split())
    return out


def run_probe(settings: Settings, profile: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Spawn the probe plugin; layers, ``/proc`` status, attempts from inside, timings."""
    tmp = Path(tempfile.mkdtemp(prefix="plugvisor-probe-"))
    try:
        code = tmp / "probe"
        (code / "sandbox_probe").mkdir(parents=True)
        (code / "plugin.yaml").write_text(
            "name: sandbox-probe\nversion: 0.0.0\napi: 1\nentrypoint: sandbox_probe:Plugin\n",
            encoding="utf-8",
        )
        (code / "sandbox_probe" / "__init__.py").write_text(PROBE_SOURCE, encoding="utf-8")
        # The sandbox user must be able to read the probe's code (mkdtemp made it 0700).
        for path in (code, code / "sandbox_probe"):
            path.chmod(0o755)
        for path in (code / "plugin.yaml", code / "sandbox_probe" / "__init__.py"):
            path.chmod(0o644)
        spec = HostSpec(
            plugin="sandbox-probe",
            version="0.0.0",
            code_dir=code,
            entrypoint="sandbox_probe:Plugin",
            profile=profile,
        )
        spawner = Spawner(settings, in_process_policy=False)
        try:
            spawner.start(timeout)
            host = spawner.spawn(spec, timeout=timeout)
            try:
                status = proc_status(host.pid)
                inside = host.call({}, request_id="sandbox-probe")
            finally:
                host.stop()
            return {
                "layers": host.layers.to_dict(),
                "proc_status": status,
                "attempts": inside,
                "timings_ms": {k: round(v, 2) for k, v in host.timings.items()},
            }
        finally:
            spawner.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
