"""Sandbox runtime benchmark: call round trip vs a raw socketpair echo, and spawn latency.

Run: ``.venv/bin/python -m plugvisor.bench.sandbox_bench [--calls 10000] [--spawns 50]``
(as root, so the privilege drop is part of what is measured). Everything is measured in
the same run: the baseline is a raw ``socketpair`` echo of the same 100-byte message
between this process and a second Python process; the host is an echo plugin, called
through ``PluginHost.call_raw`` (the daemon's fast path), with the in-process policy on
(production) and off (OS layers only). Spawn latency is spawn order -> READY (child
locked down, plugin imported, setup() run), and spawn -> first request answered.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plugvisor.core.config import load_settings
from plugvisor.core.profile import load_profile
from plugvisor.sandbox import HostSpec, Spawner

__all__ = ["interpreter_start", "main", "measure", "raw_echo"]

_ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(fileno=int(sys.argv[1]))\n"
    "while True:\n"
    "    d=s.recv(65536)\n"
    "    if not d: break\n"
    "    s.sendall(d)\n"
)

_PLUGIN = "class Plugin:\n    def handle(self, request):\n        return request\n"

MESSAGE = json.dumps({"op": "echo", "payload": "x" * 70}, separators=(",", ":")).encode()  # ~100 B


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in samples_s)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 4),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 4),
        "max_ms": round(ms[-1], 4),
    }


def raw_echo(n: int) -> list[float]:
    """Round trips of MESSAGE over a socketpair to an echo process (the baseline)."""
    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _ECHO_SERVER, str(b.fileno())], pass_fds=(b.fileno(),)
    )
    b.close()
    out = []
    try:
        for _ in range(200):  # warm-up
            a.sendall(MESSAGE)
            a.recv(65536)
        for _ in range(n):
            t0 = time.perf_counter()
            a.sendall(MESSAGE)
            got = a.recv(65536)
            out.append(time.perf_counter() - t0)
            assert got == MESSAGE
    finally:
        a.close()
        proc.wait(10)
    return out


def _plugin_dir(root: Path) -> Path:
    code = root / "echo"
    (code / "echo").mkdir(parents=True)
    (code / "plugin.yaml").write_text(
        "name: echo\nversion: 1.0.0\napi: 1\nentrypoint: echo:Plugin\n"
    )
    (code / "echo" / "__init__.py").write_text(_PLUGIN)
    for p in (root, code, code / "echo"):
        p.chmod(0o755)
    for p in (code / "plugin.yaml", code / "echo" / "__init__.py"):
        p.chmod(0o644)
    return code


def host_calls(spawner: Spawner, spec: HostSpec, n: int) -> list[float]:
    host = spawner.spawn(spec)
    out = []
    expect = b'{"ok":true,"result":' + MESSAGE + b"}"
    try:
        for _ in range(200):
            host.call_raw(MESSAGE, "warm")
        for _ in range(n):
            t0 = time.perf_counter()
            env = host.call_raw(MESSAGE, "bench")
            out.append(time.perf_counter() - t0)
            assert env == expect, env[:200]
    finally:
        host.stop()
    return out


def _spawns(spawner: Spawner, spec: HostSpec, n: int) -> dict[str, list[float]]:
    ready, first, lockdown, setup, forked = [], [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        host = spawner.spawn(spec)
        t1 = time.perf_counter()
        host.call_raw(MESSAGE, "first")
        t2 = time.perf_counter()
        ready.append(t1 - t0)
        first.append(t2 - t0)
        lockdown.append(host.timings.get("lockdown_ms", 0.0) / 1000)
        setup.append(host.timings.get("setup_ms", 0.0) / 1000)
        forked.append(host.timings.get("forked_ms", 0.0) / 1000)
        host.stop()
    return {"spawn_ready": ready, "spawn_first_answer": first, "order_to_forked": forked,
            "lockdown": lockdown, "import_setup": setup}  # fmt: skip


def interpreter_start(n: int) -> list[float]:
    """Wall time of ``python -I -S -c pass`` (the spawn baseline: a bare interpreter start)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True, timeout=30)
        out.append(time.perf_counter() - t0)
    return out


def measure(calls: int, spawns: int, *, samples: bool = False) -> dict[str, Any]:
    """Run the whole sandbox benchmark; statistics per measure (raw samples with ``samples``).

    Raw samples (seconds) are under ``"samples"``: ``raw_echo``, ``call_raw``,
    ``spawn_first_answer``, ``interpreter_start``.
    """
    root = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    try:
        settings = load_settings({"state_dir": str(root / "state")}, env={})
        spec = HostSpec(
            plugin="echo",
            version="1.0.0",
            code_dir=_plugin_dir(root),
            entrypoint="echo:Plugin",
            profile=load_profile("default", settings),
        )
        results: dict[str, Any] = {"euid": os.geteuid(), "cpus": os.cpu_count()}
        echo = raw_echo(calls)
        results["raw_socketpair_echo"] = _stats(echo)
        with Spawner(settings) as sp:
            call_samples = host_calls(sp, spec, calls)
            results["call_raw_policy_on"] = _stats(call_samples)
            spawn_samples = _spawns(sp, spec, spawns)
        with Spawner(settings, in_process_policy=False) as sp:
            results["call_raw_os_layers_only"] = _stats(host_calls(sp, spec, calls))
        for key, series in spawn_samples.items():
            results[key] = _stats(series)
        interp = interpreter_start(spawns)
        results["python_I_S_c_pass"] = _stats(interp)
        base = results["raw_socketpair_echo"]["p50_ms"]
        results["ratio_call_vs_raw_p50"] = {
            "policy_on": round(results["call_raw_policy_on"]["p50_ms"] / base, 2),
            "os_layers_only": round(results["call_raw_os_layers_only"]["p50_ms"] / base, 2),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if samples:
        results["samples"] = {
            "raw_echo": echo, "call_raw": call_samples,
            "spawn_first_answer": spawn_samples["spawn_first_answer"], "interpreter_start": interp,
        }  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--spawns", type=int, default=50)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    results = measure(args.calls, args.spawns)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:28} {value}")
    return results


if __name__ == "__main__":
    main()
