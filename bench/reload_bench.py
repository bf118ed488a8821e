"""Reload job latency end to end: ``start_job`` -> job ``succeeded``, on each broker.

Run: ``.venv/bin/python -m plugvisor.bench.reload_bench [--reloads N] [--json]``.

For each broker -- the embedded SQLite one, and RabbitMQ on 127.0.0.1:5672 (started
from Debian's rabbitmq-server when installed and not running, stopped again afterwards;
a throw-away vhost of its own: :mod:`plugvisor.tests.support.rabbitmq`) -- a real daemon and a
real ``plugvisor worker`` (prefork, one pool process) serve a fresh state directory.
A plugin with a small ctx.db and N+1 approved versions is made live, then N reload jobs
run one after the other (each to the next version): the full pipeline, dependency
check -> snapshot (data + DB backup, manifest, fsync, retention) -> trial (sandboxed
spawn, setup, health, teardown) -> activate (control-plane command, the daemon's
blue/green swap). Latency is measured from just before ``start_job`` (record + publish)
until the job record reads ``succeeded`` (polled every 2 ms), so it includes the
broker hops between the four tasks. Reported: p50/p90/max and the median time of each
step as the worker recorded it. The first reload (template start in the worker) is a
warm-up and not counted. Goal: p50 <= 0.5 s.
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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.log import configure_logging
from plugvisor.messaging.commands import Activate
from plugvisor.messaging.control import outcome_result, send_command
from plugvisor.messaging.jobs import ReloadJob, start_job, wait_for_job
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobStatus
from plugvisor.testing import store_test_version
from plugvisor.tests.support.rabbitmq import BrokerUnavailable, loopback_rabbitmq

__all__ = ["main", "run_broker"]

REPO = Path(__file__).resolve().parents[1]
PLUGVISOR = REPO / ".venv" / "bin" / "plugvisor"

SOURCE = '''\
"""Bench plugin {name} {version}."""

VERSION = "{version}"


class Plugin:
    def setup(self, ctx):
        self.ctx = ctx
        ctx.db.execute("CREATE TABLE IF NOT EXISTS hits (v TEXT)")

    def handle(self, request):
        self.ctx.db.execute("INSERT INTO hits VALUES (?)", [VERSION])
        return {{"version": VERSION}}
'''


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_ready(proc: subprocess.Popen[bytes], notify: socket.socket, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            if "READY=1" in notify.recv(4096).decode().split("\n"):
                return
        except TimeoutError:
            continue
    raise RuntimeError(f"daemon not READY within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_broker(broker_url: str, reloads: int) -> dict[str, Any]:
    """Reload ``reloads`` times (plus one warm-up) on one broker; the figures."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-reload-bench-"))
    os.chmod(base, 0o755)  # the sandbox user traverses to versions/
    root = base / "state"
    layout = StateLayout(root).ensure()
    queue = f"plugvisor.jobs.bench-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        PLUGVISOR_STATE_DIR=str(root), PLUGVISOR_BROKER_URL=broker_url,
        PLUGVISOR_JOB_QUEUE=queue, PLUGVISOR_BROKER_POLLING_INTERVAL="0.005",
        PLUGVISOR_METRICS_PORT="0", PLUGVISOR_LOG_LEVEL="warning",
        PLUGVISOR_WATCH_WINDOW_S="0", PLUGVISOR_PLUGIN_CONCURRENCY="1",
    )  # fmt: skip
    settings: Settings = load_settings(
        {"state_dir": str(root), "broker_url": broker_url, "job_queue": queue,
         "broker_polling_interval": 0.005}, env={},
    )  # fmt: skip
    name = "benchy"
    versions = [f"1.0.{i}" for i in range(reloads + 2)]
    for v in versions:
        store_test_version(layout, name, v, source=SOURCE)
    notify_path = root / "run" / "bench-notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    logs = (base / "daemon.log").open("wb"), (base / "worker.log").open("wb")
    daemon = subprocess.Popen(
        [str(PLUGVISOR), "--state-dir", str(root), "daemon"],
        env={**env, "NOTIFY_SOCKET": str(notify_path)}, stdout=logs[0],
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [str(PLUGVISOR), "--state-dir", str(root), "worker", "--concurrency", "1",
         "--hostname", f"bench-{uuid.uuid4().hex[:8]}@%h"],
        env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(daemon, notify, 60)
        outcome_result(send_command(settings, Activate(name, versions[0]), timeout=30))  # fmt: skip
        latencies: list[float] = []
        steps: dict[str, list[float]] = {}
        for i, version in enumerate(versions[1:]):
            t0 = time.perf_counter()
            job_id = start_job(settings, ReloadJob(name=name, version=version))
            job = wait_for_job(settings, job_id, timeout=120, interval=0.002)
            took = time.perf_counter() - t0
            if job.status is not JobStatus.succeeded:
                raise RuntimeError(f"reload to {version} failed: {job.error}")
            if i == 0:
                continue  # warm-up: the worker's sandbox template starts on first use
            latencies.append(took)
            for s in job.steps:
                steps.setdefault(s["name"], []).append(float(s["duration"]))
        return {
            "broker": "rabbitmq" if broker_url else "sqlite",
            "reloads": len(latencies),
            "p50_ms": round(_pct(latencies, 0.5) * 1000, 1),
            "p90_ms": round(_pct(latencies, 0.9) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
            "step_median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in steps.items()},
        }
    finally:
        _stop(worker)
        _stop(daemon)
        notify.close()
        for fh in logs:
            fh.close()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on each available broker and print the figures."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reloads", type=int, default=20, help="timed reloads per broker")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-rabbitmq", action="store_true", help="the embedded broker only")
    args = ap.parse_args(argv)
    configure_logging("warning", "console", component="bench")  # figures, not job logs
    results = [run_broker("", args.reloads)]
    if not args.no_rabbitmq:
        try:
            with loopback_rabbitmq("pv-bench") as url:
                if url.endswith("/"):
                    results.append({"broker": "rabbitmq", "skipped": "rabbitmqctl add_vhost "
                                    "failed"})  # fmt: skip
                else:
                    results.append(run_broker(url, args.reloads))
        except BrokerUnavailable as exc:
            results.append({"broker": "rabbitmq", "skipped": str(exc)})
    if args.json:
        print(json.dumps({"reload_latency": results, "goal_p50_ms": 500}))
        return 0
    for r in results:
        if "skipped" in r:
            print(f"{r['broker']:>9}: skipped ({r['skipped']})")
            continue
        verdict = "meets" if r["p50_ms"] <= 500 else "MISSES"
        print(
            f"{r['broker']:>9}: {r['reloads']} reloads  p50 {r['p50_ms']} ms  "
            f"p90 {r['p90_ms']} ms  max {r['max_ms']} ms  ({verdict} the p50 <= 500 ms goal)"
        )
        print(f"{'':>11}median per step (ms): {r['step_median_ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
