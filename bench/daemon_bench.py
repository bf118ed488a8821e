"""Daemon benchmark: call round trip and swaps, each against a baseline of the same run.

Run: ``.venv/bin/python -m plugvisor.bench.daemon_bench [--calls N] [--swaps N]``.

1. Baseline: a raw Unix-socketpair echo between two Python processes (~100-byte
   messages, ping-pong): p50/p99 round trip and calls/s.
2. The same plugin in a sandboxed host called in-process (no daemon): what the sandbox
   costs per call (JSON in the child, policy hooks, the host channel).
3. Through the daemon: ``Client.call_raw`` to that plugin with a ~100-byte JSON request
   (socket -> daemon thread -> sandboxed host -> back): p50/p99, calls/s on one thread
   and on several, the ratio to the baseline and the daemon's own overhead (3 - 2).
4. Swaps under load: client threads call continuously while the control plane swaps
   between two versions ``--swaps`` times. Swap latency: command received by the daemon
   (the outcome's ``received_at``) -> first call answered by the new version (wall
   clocks of one host); also the swap alone (``took_ms``: checks, verify, spawn + health,
   registry commit, flip, with its phases) and end to end from the sender (adds the
   broker hop). Failed calls during the swaps are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from plugvisor.client import Client
from plugvisor.core.config import load_settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.messaging.commands import Activate, Status
from plugvisor.messaging.control import send_command
from plugvisor.state.layout import StateLayout
from plugvisor.testing import store_test_version

__all__ = ["DaemonProc", "main", "measure", "scale"]

REPO = Path(__file__).resolve().parents[1]
REQUEST = json.dumps({"payload": "x" * 70, "n": 12345}).encode()  # ~100 bytes


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, lat: list[float], wall: float) -> dict[str, Any]:
    return {
        "name": name,
        "n": len(lat),
        "p50_us": round(_pct(lat, 0.50) * 1e6, 1),
        "p99_us": round(_pct(lat, 0.99) * 1e6, 1),
        "mean_us": round(statistics.fmean(lat) * 1e6, 1),
        "calls_per_s": round(len(lat) / wall),
    }


def raw_echo(n: int) -> tuple[dict[str, Any], list[float]]:
    """Ping-pong over a socketpair with a forked Python child."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # child: echo until EOF
        a.close()
        while True:
            data = b.recv(65536)
            if not data:
                os._exit(0)
            b.sendall(data)
    b.close()
    msg = b"\x00\x00\x00\x64" + REQUEST[:96].ljust(96, b" ")
    lat: list[float] = []
    for _ in range(200):  # warm-up
        a.sendall(msg)
        a.recv(65536)
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        a.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(a.recv(65536))
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_all
    a.close()
    os.waitpid(pid, 0)
    return _summary("raw socketpair echo", lat, wall), lat


def direct_host(layout: StateLayout, settings: Any, n: int) -> dict[str, Any]:
    """The same plugin in a sandboxed host called in-process (no daemon, no client hop)."""
    from plugvisor.core.profile import load_profile  # noqa: PLC0415
    from plugvisor.sandbox import HostSpec, Spawner  # noqa: PLC0415
    from plugvisor.state.registry import Registry  # noqa: PLC0415

    with Registry(layout) as reg:
        digest = reg.get_version("bench", "1.0.0").digest
    spawner = Spawner(settings)
    spawner.start()
    spec = HostSpec(
        plugin="bench", version="1.0.0", code_dir=layout.version_dir(digest),
        entrypoint="bench:Plugin", profile=load_profile("default", settings),
    )  # fmt: skip
    host = spawner.spawn(spec)
    try:
        for _ in range(200):
            host.call_raw(REQUEST, "warm")
        lat: list[float] = []
        t_all = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            host.call_raw(REQUEST, "r")
            lat.append(time.perf_counter() - t0)
        wall = time.perf_counter() - t_all
    finally:
        host.stop()
        spawner.close()
    return _summary("sandboxed host called directly (no daemon)", lat, wall)


class DaemonProc:
    """A daemon subprocess over a throw-away state directory."""

    def __init__(self, polling: float, concurrency: int = 4) -> None:
        self.root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-bench-"))
        os.chmod(self.root, 0o755)
        self.layout = StateLayout(self.root)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
        self.env.update(
            PLUGVISOR_STATE_DIR=str(self.root), PLUGVISOR_METRICS_PORT="0",
            PLUGVISOR_LOG_LEVEL="warning", PLUGVISOR_BROKER_POLLING_INTERVAL=str(polling),
            PLUGVISOR_WATCH_WINDOW_S="0", PLUGVISOR_PLUGIN_CONCURRENCY=str(concurrency),
        )  # fmt: skip
        self.settings = load_settings({"state_dir": str(self.root)}, env=self.env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = os.environ.get("PLUGVISOR_BENCH_DAEMON_CMD")
        argv = [sys.executable, cmd] if cmd else [str(REPO / ".venv" / "bin" / "plugvisor")]
        self.proc = subprocess.Popen(
            [*argv, "--state-dir", str(self.root), "daemon"], env=self.env,
            stdout=subprocess.DEVNULL, stderr=open(self.root / "daemon.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.layout.daemon_socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("daemon did not start:\n" + (self.root / "daemon.log").read_text())
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def daemon_calls(d: DaemonProc, n: int, threads: int) -> tuple[list[dict[str, Any]], list[float]]:
    client = Client(d.layout.daemon_socket, timeout=30)
    for _ in range(200):
        client.call_raw("bench", REQUEST)
    lat: list[float] = []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        client.call_raw("bench", REQUEST)
        lat.append(time.perf_counter() - t0)
    out = [_summary("daemon call, 1 thread", lat, time.perf_counter() - t_all)]

    per = max(1, n // threads)
    lats: list[list[float]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            client.call_raw("bench", REQUEST)
            lats[i].append(time.perf_counter() - t0)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t_all = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.append(
        _summary(f"daemon call, {threads} threads", [x for part in lats for x in part],
                 time.perf_counter() - t_all)
    )  # fmt: skip
    client.close()
    return out, lat


def swaps_under_load(d: DaemonProc, swaps: int, threads: int) -> dict[str, Any]:
    client = Client(d.layout.daemon_socket, timeout=30)
    stop = threading.Event()
    seen: list[tuple[float, str, float]] = []
    failures: list[str] = []
    lock = threading.Lock()
    calls = [0]

    def load() -> None:
        while not stop.is_set():
            try:
                env = json.loads(client.call_raw("flip", REQUEST))
            except PlugvisorError as exc:
                with lock:
                    failures.append(str(exc))
                continue
            now = time.perf_counter()
            with lock:
                calls[0] += 1
                if env.get("ok"):
                    seen.append((now, env["result"]["version"], time.time()))
                else:
                    failures.append(json.dumps(env["error"]))

    ts = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    inside: list[float] = []
    phases: list[dict[str, float]] = []
    received_to_served: list[float] = []
    end_to_end: list[float] = []
    for i in range(swaps):
        target = "2.0.0" if i % 2 == 0 else "1.0.0"
        t0 = time.perf_counter()
        outcome = send_command(d.settings, Activate("flip", target), 30)
        if not outcome.get("ok"):
            raise SystemExit(f"swap failed: {outcome}")
        inside.append(outcome["result"]["took_ms"] / 1000)
        phases.append(outcome["result"].get("phases_ms", {}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:  # the earliest answer of the new version after the command was sent
                new = [(ts_, wall) for ts_, v, wall in seen[-2000:] if v == target and ts_ > t0]
            if new:
                first, first_wall = min(new)
                end_to_end.append(first - t0)
                received_to_served.append(first_wall - outcome["received_at"])
                break
            time.sleep(0.001)
    stop.set()
    for t in ts:
        t.join(timeout=30)
    client.close()
    return {
        "swaps": swaps,
        "calls_during": calls[0],
        "failed_calls": len(failures),
        "failures_sample": failures[:3],
        "in_daemon_ms_p50": round(_pct(inside, 0.5) * 1000, 2),
        "in_daemon_ms_p99": round(_pct(inside, 0.99) * 1000, 2),
        "received_to_first_served_ms_p50": round(_pct(received_to_served, 0.5) * 1000, 2),
        "received_to_first_served_ms_p99": round(_pct(received_to_served, 0.99) * 1000, 2),
        "end_to_end_ms_p50": round(_pct(end_to_end, 0.5) * 1000, 2),
        "end_to_end_ms_p99": round(_pct(end_to_end, 0.99) * 1000, 2),
        "samples_received_to_first_served_s": received_to_served,
        "phases_ms_p50_cumulative": {
            k: round(statistics.median(p[k] for p in phases if k in p), 2)
            for k in (phases[0] if phases else {})
        },
    }


def measure(calls: int, swaps: int, threads: int, broker_polling: float = 0.05) -> dict[str, Any]:
    """Calls and swaps through a fresh daemon, with the raw-echo baseline measured around them.

    ``daemon[0]`` is one thread, ``daemon[1]`` ``threads`` threads; ``daemon_samples_s`` holds
    the one-thread round trips (seconds) for plots; ``swap`` is :func:`swaps_under_load`.
    """
    raw, raw_samples = raw_echo(calls)
    d = DaemonProc(broker_polling)
    try:
        store_test_version(d.layout, "bench", "1.0.0", activate=True)
        store_test_version(d.layout, "flip", "1.0.0", activate=True)
        store_test_version(d.layout, "flip", "2.0.0")
        direct = direct_host(d.layout, d.settings, calls)
        d.start()
        through, daemon_samples = daemon_calls(d, calls, threads)
        raw_after, _ = raw_echo(calls)  # the baseline is noisy: measure it on both sides
        swap = swaps_under_load(d, swaps, threads)
    finally:
        d.stop()
    base_p50 = (raw["p50_us"] + raw_after["p50_us"]) / 2
    report = {
        "baseline": [raw, raw_after],
        "daemon": through,
        "direct_host": direct,
        "ratio_p50": round(through[0]["p50_us"] / base_p50, 2),
        # What the daemon itself adds per call: client hop, routing, pool, metrics.
        "daemon_overhead_p50_us": round(through[0]["p50_us"] - direct["p50_us"], 1),
        "ratio_calls_per_s": round(
            (raw["calls_per_s"] + raw_after["calls_per_s"]) / 2 / through[0]["calls_per_s"], 2
        ),
        "swap": swap,
        "raw_samples_s": raw_samples,
        "daemon_samples_s": daemon_samples,
    }
    return report


def _activate(d: DaemonProc, name: str, version: str) -> dict[str, Any]:
    outcome = send_command(d.settings, Activate(name, version), 30)
    if not outcome.get("ok"):
        raise SystemExit(f"activate {name} {version} failed: {outcome}")
    return dict(outcome["result"])


def _host_pids(d: DaemonProc) -> dict[str, list[int]]:
    status = send_command(d.settings, Status(), 30)
    plugins = status["result"]["plugins"]
    return {name: list((p.get("pool") or {}).get("pids", [])) for name, p in plugins.items()}


def _round_robin(client: Client, names: list[str], n: int) -> list[float]:
    for name in names:  # every host warm before timing
        client.call_raw(name, REQUEST)
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        client.call_raw(names[i % len(names)], REQUEST)
        lat.append(time.perf_counter() - t0)
    return lat


def scale(calls: int, swaps: int, broker_polling: float = 0.05) -> dict[str, Any]:
    """How the daemon grows: call latency at 1/10/50 active plugins, RSS at 20, swaps vs dependents.

    One daemon (one host per plugin: ``plugin_concurrency`` 1): plugins are activated
    through the control plane step by step; calls go round robin over the active ones.
    Swap latency is the in-daemon ``took_ms`` of swapping ``base`` between two versions
    while 0, 5 and 20 active plugins require it (each swap re-checks their ranges).
    """
    from plugvisor.tests.support.procs import rss_bytes, uss_bytes  # noqa: PLC0415

    d = DaemonProc(broker_polling, concurrency=1)
    out: dict[str, Any] = {"calls": {}, "swaps": {}}
    try:
        names = [f"g{i:02d}" for i in range(50)]
        for i, name in enumerate(names):
            store_test_version(d.layout, name, "1.0.0", activate=i == 0)
        store_test_version(d.layout, "base", "1.0.0", activate=True)
        store_test_version(d.layout, "base", "1.1.0")
        deps = [f"dep{i:02d}" for i in range(20)]
        for name in deps:
            store_test_version(d.layout, name, "1.0.0", requires={"base": ">=1.0,<2"})
        d.start()
        assert d.proc is not None
        client = Client(d.layout.daemon_socket, timeout=30)
        active = 1
        for target in (1, 10, 20, 50):
            for name in names[active:target]:
                _activate(d, name, "1.0.0")
            active = target
            if target == 20:  # 20 active plugins (+ base): the memory figures
                pids = [pid for n_, ps in _host_pids(d).items() if n_ in names for pid in ps]
                out["daemon_rss_20"] = rss_bytes(d.proc.pid)
                out["host_rss_20"] = sorted(rss_bytes(pid) for pid in pids)
                out["host_uss_20"] = sorted(uss_bytes(pid) for pid in pids)
                continue
            lat = _round_robin(client, names[:target], calls)
            out["calls"][str(target)] = {**_summary(f"{target} plugins", lat, sum(lat)),
                                         "samples_s": lat}  # fmt: skip
        client.close()
        active_deps = 0
        version = "1.0.0"
        for count in (0, 5, 20):
            for name in deps[active_deps:count]:
                _activate(d, name, "1.0.0")
            active_deps = count
            took = []
            for _ in range(swaps):
                version = "1.1.0" if version == "1.0.0" else "1.0.0"
                took.append(_activate(d, "base", version)["took_ms"] / 1000)
            out["swaps"][str(count)] = {
                "p50_ms": round(_pct(took, 0.5) * 1000, 2),
                "p99_ms": round(_pct(took, 0.99) * 1000, 2),
                "n": len(took),
            }
    finally:
        d.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--swaps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument(
        "--broker-polling", type=float, default=0.05,
        help="embedded broker polling interval (s; the default setting): shorter polls cut "
        "the broker hop of a swap command but cost the daemon GIL time on every call",
    )  # fmt: skip
    args = ap.parse_args(argv)
    report = measure(args.calls, args.swaps, args.threads, args.broker_polling)
    for key in ("raw_samples_s", "daemon_samples_s"):
        report.pop(key)
    report["swap"].pop("samples_received_to_first_served_s")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
