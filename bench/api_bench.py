"""API throughput: ``GET /api/jobs/ID`` under gunicorn on loopback, req/s and latency.

Run: ``.venv/bin/python -m plugvisor.bench.api_bench [--requests N] [--clients C] [--json]``.

A fresh state directory holds one finished reload job (steps, result) and a viewer
token. gunicorn serves ``plugvisor.api:create_app()`` as in production (the gthread
worker; 2 workers x 4 threads by default, as systemd/plugvisor-api.service) on
127.0.0.1, and C client threads, each with its own keep-alive HTTP/1.1 connection,
send N requests in all (bounded by a time budget too). Every answer must be 200 with
the job's id. The same-run baseline is the same gunicorn configuration serving a
trivial WSGI app that returns a fixed JSON body: the floor that HTTP parsing, gunicorn
and the Python client cost on this machine. The full request path (bearer-token check
against the token file, registry read from SQLite, JSON rendering, metrics) is the
difference. The clients share the machine's 2 cores with the server, so absolute
figures are low; the ratio is the figure to watch.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from plugvisor.core.config import load_settings
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobStatus, Registry
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore

__all__ = ["baseline_app", "main", "measure"]

GUNICORN = Path(sys.executable).with_name("gunicorn")
_BASELINE_BODY = json.dumps({"id": "0" * 36, "kind": "reload", "status": "succeeded"}).encode()


def baseline_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app answering every request with a fixed small JSON body (the baseline)."""
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(_BASELINE_BODY)))],
    )
    return [_BASELINE_BODY]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _prepare(root: Path) -> tuple[str, str]:
    """A state dir with one finished reload job and a viewer token: (job id, token)."""
    layout = StateLayout(root).ensure()
    with Registry(layout) as registry:
        job = registry.create_job("reload", {"name": "greeter", "version": "1.1.0"})
        steps = [
            {"name": name, "status": "succeeded", "duration": 0.01}
            for name in ("check", "snapshot", "trial", "activate")
        ]
        registry.update_job(
            job.id, status=JobStatus.succeeded, step=None, steps=steps,
            result={"name": "greeter", "version": "1.1.0", "from": "1.0.0",
                    "outcome": "swapped"},
        )  # fmt: skip
    token = TokenStore(root / TOKENS_FILE).create(Role.VIEWER, "bench")
    return job.id, token


class _Server:
    """gunicorn on 127.0.0.1 with ``workers`` x ``threads`` (gthread), started and stopped."""

    def __init__(self, app: str, state_dir: Path, workers: int, threads: int) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
        env.update(PLUGVISOR_STATE_DIR=str(state_dir), PLUGVISOR_LOG_LEVEL="warning")
        self.log = state_dir / f"gunicorn-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(GUNICORN), "--workers", str(workers), "--threads", str(threads),
                 "--worker-class", "gthread", "--bind", f"127.0.0.1:{self.port}",
                 "--no-control-socket", "--log-level", "warning", app],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, path: str, headers: dict[str, str], timeout: float = 30.0) -> None:
        """Until ``path`` answers 200 from every worker's point of view (a few answers)."""
        deadline = time.monotonic() + timeout
        answered = 0
        while answered < 8:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready in {timeout} s: {self.log.read_text()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", path, headers=headers)
                if conn.getresponse().status == 200:
                    answered += 1
                conn.close()
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _load(
    port: int, path: str, headers: dict[str, str], expect: bytes, requests: int, clients: int,
    budget_s: float,
) -> dict[str, Any]:  # fmt: skip
    """``requests`` GETs of ``path`` from ``clients`` keep-alive connections; the figures."""
    lock = threading.Lock()
    remaining = [requests]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    deadline = time.monotonic() + budget_s

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = latencies[i]
        try:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                mine.append(time.perf_counter() - t0)
                if resp.status != 200 or expect not in body:
                    with lock:
                        errors.append(f"{resp.status}: {body[:200]!r}")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        except OSError as exc:
            with lock:
                errors.append(f"client {i}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(budget_s + 30)
    wall = time.perf_counter() - t0
    lat = [x for per in latencies for x in per]
    if not lat:
        raise RuntimeError(f"no request answered: {errors[:3]}")
    return {
        "requests": len(lat), "errors": len(errors), "first_errors": errors[:3],
        "seconds": round(wall, 3), "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(_pct(lat, 0.50) * 1000, 3), "p90_ms": round(_pct(lat, 0.90) * 1000, 3),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 3), "max_ms": round(max(lat) * 1000, 3),
        "samples_s": lat,
    }  # fmt: skip


def measure(
    requests: int = 5000, clients: int = 8, workers: int = 2, threads: int = 4,
    budget_s: float = 60.0, *, samples: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run the API benchmark and its baseline; figures (raw samples with ``samples``).

    Keys: ``config``, ``job_get`` and ``baseline`` (each ``requests, errors, req_per_s,
    p50_ms, p90_ms, p99_ms, max_ms``, plus ``samples_s`` with ``samples``), and
    ``ratio_req_per_s`` / ``ratio_p99`` (job_get over baseline).
    """
    root = Path(tempfile.mkdtemp(prefix="pv-api-bench-"))
    out: dict[str, Any] = {
        "config": {"gunicorn_workers": workers, "gunicorn_threads": threads,
                   "client_threads": clients, "requests": requests, "cpus": os.cpu_count()},
    }  # fmt: skip
    try:
        settings = load_settings({"state_dir": str(root)}, env={})
        job_id, token = _prepare(settings.state_dir)
        auth = {"Authorization": f"Bearer {token}"}
        runs: tuple[tuple[str, str, str, dict[str, str], bytes], ...] = (
            ("job_get", "plugvisor.api:create_app()", f"/api/jobs/{job_id}", auth,
             job_id.encode()),
            ("baseline", "plugvisor.bench.api_bench:baseline_app", "/", {}, b'"succeeded"'),
        )  # fmt: skip
        for name, app, path, headers, expect in runs:
            server = _Server(app, root, workers, threads)
            try:
                server.wait_ready(path, headers)
                figures = _load(server.port, path, headers, expect, requests, clients, budget_s)
            finally:
                server.stop()
            if not samples:
                figures.pop("samples_s")
            out[name] = figures
        out["ratio_req_per_s"] = round(
            out["job_get"]["req_per_s"] / out["baseline"]["req_per_s"], 3
        )
        out["ratio_p99"] = round(out["job_get"]["p99_ms"] / out["baseline"]["p99_ms"], 3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000, help="requests in all (per server)")
    ap.add_argument("--clients", type=int, default=8, help="client threads (keep-alive each)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    ap.add_argument("--budget", type=float, default=60.0, help="time bound per server, seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    r = measure(args.requests, args.clients, args.workers, args.threads, args.budget)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0 if r["job_get"]["errors"] == 0 else 1
    c = r["config"]
    print(f"gunicorn {c['gunicorn_workers']} workers x {c['gunicorn_threads']} threads, "
          f"{c['client_threads']} client threads, {c['cpus']} CPUs, loopback")  # fmt: skip
    for name, label in (("job_get", "GET /api/jobs/ID"), ("baseline", "baseline WSGI app")):
        f = r[name]
        print(f"{label:20} {f['req_per_s']:8.0f} req/s  p50 {f['p50_ms']:.2f} ms  "
              f"p99 {f['p99_ms']:.2f} ms  max {f['max_ms']:.1f} ms  "
              f"({f['requests']} requests, {f['errors']} errors)")  # fmt: skip
    print(f"ratio to baseline: req/s {r['ratio_req_per_s']}x, p99 {r['ratio_p99']}x")
    return 0 if r["job_get"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
