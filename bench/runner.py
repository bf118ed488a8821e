"""``python -m bench``: every benchmark of the project in one run, printed as one table.

Each row is one measure, its baseline measured in the same run (so a noisy machine
moves both), their ratio, the goal and ``pass`` / ``short``. Goals are reported, never
asserted: timing on a shared 2-core machine is noisy, so a ``short`` row is information
and only a crash makes the command fail. ``--quick`` (CI) runs every row with fewer
iterations; the full run also writes ``bench/results/<UTC timestamp>.json`` and a PNG of
the latency distributions (when matplotlib, the ``bench`` extra, is installed).

The pieces are the benchmark modules' own ``measure`` functions: ``sandbox_bench``
(host round trip, spawn vs a bare interpreter), ``daemon_bench`` (calls and swaps
through a daemon; growth with plugins and dependents; memory), ``scan_bench``,
``reload_bench`` (a reload job end to end on each broker) and ``api_bench``
(``GET /api/jobs/ID`` under gunicorn).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Goal", "Params", "Row", "Status", "format_table", "main", "run_all"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_MB = 1024 * 1024


class Status(enum.Enum):
    """How a row compares with its goal."""

    PASS = "pass"  #: the goal is met in this run
    SHORT = "short"  #: measured, the goal is not met in this run
    INFO = "-"  #: a figure without a goal (growth, breakdowns)
    NOT_MEASURED = "not measured"  #: the benchmark could not run here (reason in the note)


@dataclass(frozen=True)
class Goal:
    """``<on> <op> <target>``: ``on`` is ``value`` or ``ratio`` (value / baseline)."""

    op: str  # "<=", ">=" or "=="
    target: float
    on: str = "value"

    def met(self, value: float, ratio: float | None) -> bool:
        """Whether ``value`` (or the ratio) meets the goal."""
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return False
        if self.op == "<=":
            return subject <= self.target
        if self.op == ">=":
            return subject >= self.target
        return subject == self.target

    def text(self, unit: str) -> str:
        """The goal as the table shows it."""
        if self.on == "ratio":
            return f"ratio {self.op} {self.target:g}x"
        return f"{self.op} {self.target:g} {unit}".rstrip()


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    measure: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    goal: Goal | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline, when both exist."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def status(self) -> Status:
        """pass / short against the goal; info without one; not measured without a value."""
        if self.value is None:
            return Status.NOT_MEASURED
        if self.goal is None:
            return Status.INFO
        return Status.PASS if self.goal.met(self.value, self.ratio) else Status.SHORT

    def to_dict(self) -> dict[str, Any]:
        """JSON form (with the derived ratio and status)."""
        out = asdict(self)
        out["goal"] = self.goal.text(self.unit) if self.goal else None
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        out["status"] = self.status.value
        return out


@dataclass(frozen=True)
class Params:
    """Iteration counts of one run (``--quick`` shrinks them, every row still runs)."""

    calls: int = 10000
    threads: int = 4
    swaps: int = 100
    spawns: int = 100
    scan_runs: int = 7
    scale_calls: int = 3000
    scale_swaps: int = 20
    reload_runs: int = 10

    @classmethod
    def quick(cls) -> Params:
        """CI size: under two minutes on 2 busy cores."""
        return cls(calls=2000, swaps=20, spawns=20, scan_runs=2, scale_calls=300,
                   scale_swaps=5, reload_runs=3)  # fmt: skip


@dataclass
class Run:
    """What one run collected: rows, raw figures per benchmark, samples for the plot."""

    params: Params
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _ms(seconds: float) -> float:
    return seconds * 1000


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the benchmarks' own prints and log lines out of the table's output."""
    from plugvisor.core.log import configure_logging  # noqa: PLC0415

    configure_logging("error", "console", component="bench")
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ---- the benchmarks ----------------------------------------------------------------------------


def _sandbox(run: Run) -> None:
    from plugvisor.bench import sandbox_bench  # noqa: PLC0415

    p = run.params
    r = sandbox_bench.measure(min(p.calls, 5000), p.spawns, samples=True)
    samples = r.pop("samples")
    run.raw["sandbox"] = r
    run.samples["spawn from template (first answer)"] = samples["spawn_first_answer"]
    run.samples["python -I -S -c pass"] = samples["interpreter_start"]
    interp = r["python_I_S_c_pass"]
    first = r["spawn_first_answer"]
    run.rows += [
        Row("plugin process start, spawn -> first answer p50", first["p50_ms"], "ms",
            interp["p50_ms"], "python -I -S -c pass p50"),
        Row("plugin process start, spawn -> first answer p99", first["p99_ms"], "ms",
            interp["p99_ms"], "python -I -S -c pass p99", Goal("<=", 10.0)),
        Row("host call_raw in-process (no daemon) p50", r["call_raw_policy_on"]["p50_ms"] * 1000,
            "us", r["raw_socketpair_echo"]["p50_ms"] * 1000, "raw socketpair echo p50"),
    ]  # fmt: skip


def _daemon(run: Run) -> None:
    from plugvisor.bench import daemon_bench  # noqa: PLC0415

    p = run.params
    r = daemon_bench.measure(p.calls, p.swaps, p.threads)
    run.samples["raw socketpair echo"] = r.pop("raw_samples_s")
    run.samples["call through the daemon"] = r.pop("daemon_samples_s")
    swap = r["swap"]
    run.samples["swap: received -> first call on new"] = swap.pop(
        "samples_received_to_first_served_s"
    )
    run.raw["daemon"] = r
    raw = r["baseline"]
    raw_p50 = statistics.fmean(b["p50_us"] for b in raw)
    raw_p99 = statistics.fmean(b["p99_us"] for b in raw)
    raw_cps = statistics.fmean(b["calls_per_s"] for b in raw)
    one, many = r["daemon"]
    run.rows += [
        Row("call round trip via daemon p50", one["p50_us"], "us", raw_p50,
            "raw socketpair echo p50", Goal("<=", 2.5, "ratio")),
        Row("call round trip via daemon p99", one["p99_us"], "us", raw_p99,
            "raw socketpair echo p99", Goal("<=", 2.5, "ratio")),
        Row(f"calls/s to one plugin, {p.threads} client threads", many["calls_per_s"], "calls/s",
            raw_cps, "raw echo calls/s (1 thread)", Goal(">=", 0.5, "ratio")),
        Row("swap latency p50 (received -> first call served)",
            swap["received_to_first_served_ms_p50"], "ms"),
        Row("swap latency p99 (received -> first call served)",
            swap["received_to_first_served_ms_p99"], "ms", goal=Goal("<=", 15.0)),
        Row("swap in daemon p50 (checks, spawn, commit, flip)", swap["in_daemon_ms_p50"], "ms"),
        Row(f"failed calls during {swap['swaps']} swaps under load", swap["failed_calls"],
            "calls", note=f"{swap['calls_during']} calls made during the swaps",
            goal=Goal("==", 0)),
    ]  # fmt: skip


def _scale(run: Run) -> None:
    from plugvisor.bench import daemon_bench  # noqa: PLC0415

    p = run.params
    r = daemon_bench.scale(p.scale_calls, p.scale_swaps)
    for count, figures in r["calls"].items():
        run.samples[f"call, {count} active plugins"] = figures.pop("samples_s")
    run.raw["scale"] = r
    host_rss = r["host_rss_20"]
    host_uss = r["host_uss_20"]
    run.rows += [
        Row("daemon RSS with 20 active plugins", round(r["daemon_rss_20"] / _MB, 1), "MB",
            goal=Goal("<=", 60.0)),
        Row("RSS per plugin process (median of 20)", round(statistics.median(host_rss) / _MB, 1),
            "MB", goal=Goal("<=", 20.0),
            note="RSS counts pages shared with the template (copy-on-write)"),
        Row("USS per plugin process (unique memory, median)",
            round(statistics.median(host_uss) / _MB, 1), "MB"),
    ]  # fmt: skip
    one = r["calls"]["1"]["p50_us"]
    for count in ("1", "10", "50"):
        row = r["calls"][count]
        run.rows.append(Row(f"growth: call p50 with {count} active plugins", row["p50_us"], "us",
                            one, "1 active plugin"))  # fmt: skip
    zero = r["swaps"]["0"]
    for count in ("0", "5", "20"):
        row = r["swaps"][count]
        run.rows.append(Row(f"growth: swap p50 with {count} dependents", row["p50_ms"], "ms",
                            zero["p50_ms"], "0 dependents"))  # fmt: skip
        run.rows.append(Row(f"growth: swap p99 with {count} dependents", row["p99_ms"], "ms",
                            zero["p99_ms"], "0 dependents"))  # fmt: skip


def _scan(run: Run) -> None:
    from plugvisor.bench import scan_bench  # noqa: PLC0415

    r = scan_bench.measure(run.params.scan_runs)
    run.raw["scan"] = r
    run.rows.append(
        Row(f"scan of a {r['files']}-file plugin, warm worker (median)", r["warm_scan_ms"], "ms",
            r["bandit_subprocess_ms"], "bandit -r (subprocess)", Goal("<=", 0.5, "ratio"))
    )  # fmt: skip


def _reload(run: Run) -> None:
    """Reload jobs end to end per broker: ``bench/reload_bench.py`` (its ``--json`` output)."""
    goal = Goal("<=", 0.5)
    try:
        module = importlib.import_module("plugvisor.bench.reload_bench")
    except ModuleNotFoundError:
        for broker in ("sqlite", "rabbitmq"):
            run.rows.append(Row(f"reload job end to end p50, {broker} broker", None, "s",
                                goal=goal, note="bench/reload_bench.py missing"))  # fmt: skip
        return
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(["--json", "--reloads", str(run.params.reload_runs)])
    r = json.loads(out.getvalue().strip().splitlines()[-1])
    run.raw["reload"] = r
    for figures in r["reload_latency"]:
        broker = figures["broker"]
        measure = f"reload job end to end p50, {broker} broker"
        if "skipped" in figures:
            run.rows.append(Row(measure, None, "s", goal=goal, note=str(figures["skipped"])))
            continue
        run.rows.append(Row(measure, round(figures["p50_ms"] / 1000, 3), "s", goal=goal,
                            note=f"{figures['reloads']} reloads, max "
                            f"{figures['max_ms'] / 1000:.3g} s; check -> snapshot -> trial "
                            "-> activate"))  # fmt: skip


def _api(run: Run) -> None:
    """``GET /api/jobs/ID`` under gunicorn (2 workers x 4 threads): ``bench/api_bench.py``."""
    from plugvisor.bench import api_bench  # noqa: PLC0415

    clients = 8
    r = api_bench.measure(min(run.params.calls, 5000), clients, samples=True)
    run.samples["GET /api/jobs/ID under gunicorn"] = r["job_get"].pop("samples_s")
    r["baseline"].pop("samples_s")
    run.raw["api"] = r
    job, base = r["job_get"], r["baseline"]
    where = f"gunicorn 2x4 gthread, {clients} keep-alive client threads, loopback"
    run.rows += [
        Row("API GET /api/jobs/ID throughput", job["req_per_s"], "req/s", base["req_per_s"],
            "trivial WSGI app, same gunicorn", note=f"{where}; {job['errors']} errors"),
        Row("API GET /api/jobs/ID p50", job["p50_ms"], "ms", base["p50_ms"],
            "trivial WSGI app p50"),
        Row("API GET /api/jobs/ID p99", job["p99_ms"], "ms", base["p99_ms"],
            "trivial WSGI app p99"),
    ]  # fmt: skip


BENCHMARKS: dict[str, Callable[[Run], None]] = {
    "sandbox": _sandbox,
    "daemon": _daemon,
    "scale": _scale,
    "scan": _scan,
    "reload": _reload,
    "api": _api,
}


def run_all(params: Params, only: list[str] | None = None) -> Run:
    """Run the benchmarks (all, or ``only`` those named) and collect the rows."""
    run = Run(params)
    for name, bench in BENCHMARKS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        with _quiet():
            bench(run)
        run.seconds[name] = round(time.perf_counter() - t0, 1)
    return run


# ---- output ------------------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == int(x) and abs(x) >= 10:
        return f"{int(x)}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def format_table(rows: list[Row]) -> str:
    """The table: measure | value | baseline | ratio | goal | status (+ notes below)."""
    header = ("measure", "value", "baseline (same run)", "ratio", "goal", "status")
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    for row in rows:
        value = f"{_num(row.value)} {row.unit}".strip() if row.value is not None else "-"
        base = f"{_num(row.baseline)} {row.unit} ({row.baseline_name})" if row.baseline else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        goal = row.goal.text(row.unit) if row.goal else "-"
        status = row.status.value
        if row.note:
            notes.append(f"  [{len(notes) + 1}] {row.measure}: {row.note}")
            status += f" [{len(notes)}]"
        lines.append((row.measure, value, base, ratio, goal, status))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(out + (["", *notes] if notes else []))


def format_markdown(rows: list[Row]) -> str:
    """The same table in Markdown (for the README)."""
    out = ["| measure | value | baseline (same run) | ratio | goal | status |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        value = f"{_num(row.value)} {row.unit}".strip() if row.value is not None else "-"
        base = f"{_num(row.baseline)} {row.unit} ({row.baseline_name})" if row.baseline else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        goal = row.goal.text(row.unit) if row.goal else "-"
        status = row.status.value + (f" ({row.note})" if row.note else "")
        out.append(f"| {row.measure} | {value} | {base} | {ratio} | {goal} | {status} |")
    return "\n".join(out)


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "loadavg_at_end": [round(x, 2) for x in load],
    }  # fmt: skip


def write_results(run: Run, stamp: str) -> tuple[Path, Path | None]:
    """Write the JSON result file and (with matplotlib) the PNG; their paths."""
    RESULTS_DIR.mkdir(exist_ok=True)
    doc = {
        "timestamp": stamp, "machine": _machine(), "params": asdict(run.params),
        "seconds": run.seconds, "rows": [r.to_dict() for r in run.rows], "raw": run.raw,
    }  # fmt: skip
    path = RESULTS_DIR / f"{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)
    return path, _plot(run, RESULTS_DIR / f"{stamp}.png")


def _plot(run: Run, path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("bench: matplotlib not installed (pip install 'plugvisor[bench]'): no plot")
        return None
    groups = {
        "call round trip": ["raw socketpair echo", "call through the daemon",
                            "call, 1 active plugins", "call, 10 active plugins",
                            "call, 50 active plugins"],
        "process start and swap": ["python -I -S -c pass", "spawn from template (first answer)",
                                   "swap: received -> first call on new"],
    }  # fmt: skip
    fig, axes = plt.subplots(1, len(groups), figsize=(13, 4.5))
    for ax, (title, names) in zip(axes, groups.items(), strict=True):
        for name in names:
            data = run.samples.get(name)
            if not data:
                continue
            ms = sorted(_ms(x) for x in data)
            ax.plot(ms, [i / len(ms) for i in range(len(ms))], label=f"{name} (n={len(ms)})")
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log)")
        ax.set_ylabel("fraction of samples <= x")
        ax.set_title(f"{title}: cumulative distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench``; 0 unless a benchmark crashed."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI, < 2 minutes)")
    ap.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                    help="run only these benchmarks (repeatable)")  # fmt: skip
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--no-write", action="store_true", help="full run without the result files")
    args = ap.parse_args(argv)
    params = Params.quick() if args.quick else Params()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    t0 = time.perf_counter()
    run = run_all(params, args.only)
    m = _machine()
    print(f"plugvisor bench {'--quick ' if args.quick else ''}{stamp}: {m['cpus']} cpus, "
          f"load {m['loadavg_at_end']}, {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(format_table(run.rows))
    if args.markdown:
        print()
        print(format_markdown(run.rows))
    short = sum(r.status is Status.SHORT for r in run.rows)
    print(f"\n{short} row(s) short of their goal (reported, not asserted: timing is noisy)")
    if not args.quick and not args.no_write:
        path, png = write_results(run, stamp)
        print(f"results: {path}" + (f", plot: {png}" if png else ""))
    return 0
