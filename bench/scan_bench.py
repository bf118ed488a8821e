"""Scan speed: plugvisor's warm in-process scan vs plain ``bandit -r`` on the same files.

Builds a 50-file plugin (the archive limit) of ordinary code with a sprinkling of
findings, then in the same run measures:

* ``warm scan``: :func:`plugvisor.scan.scanner.scan_tree` in this process after one
  warm-up scan (what a worker pays per upload: Bandit + the compliance walk);
* ``warm bandit only``: the Bandit part of that scan alone;
* ``bandit -r``: the ``bandit`` command as a subprocess (what shelling out per upload
  would cost: interpreter start + plugin loading + the scan).

Prints medians and the ratio. Run: ``.venv/bin/python -m plugvisor.bench.scan_bench``
(``--runs N``, ``--json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plugvisor.core.config import load_settings
from plugvisor.core.log import configure_logging
from plugvisor.core.profile import load_profile
from plugvisor.scan import scanner

__all__ = ["main", "make_plugin", "measure"]

_MODULE = '''"""Module {i} of the benchmark plugin."""
import json
import re
from collections import defaultdict
from dataclasses import dataclass

PATTERN = re.compile(r"^[a-z]+_{i}$")


@dataclass(frozen=True)
class Record{i}:
    name: str
    value: int


def parse_{i}(text):
    data = json.loads(text)
    out = defaultdict(list)
    for key, value in sorted(data.items()):
        if PATTERN.match(key):
            out[key].append(Record{i}(key, int(value)))
    return dict(out)


def summarise_{i}(records):
    total = sum(r.value for r in records)
    return {{"count": len(records), "total": total, "mean": total / max(1, len(records))}}


class Handler{i}:
    def __init__(self):
        self.seen = {{}}

    def handle(self, request):
        text = json.dumps(request)
        parsed = parse_{i}(text)
        for key, records in parsed.items():
            self.seen[key] = summarise_{i}(records)
        return {{"keys": sorted(self.seen), "n": len(self.seen)}}
{extra}'''

_EXTRAS = {
    7: "\n\ndef risky(expr):\n    return eval(expr)\n",
    19: "\nimport subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n",
    33: "\n\ndef escape():\n    return ().__class__.__base__.__subclasses__()\n",
}


def make_plugin(root: Path, files: int = 50) -> Path:
    """Write a plugin package of ``files`` Python files under ``root``; return ``root``."""
    pkg = root / "benchplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Benchmark plugin."""\nfrom .mod1 import Handler1\n')
    for i in range(1, files):
        (pkg / f"mod{i}.py").write_text(_MODULE.format(i=i, extra=_EXTRAS.get(i, "")))
    return root


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure(runs: int) -> dict[str, Any]:
    """Scan a fresh 50-file plugin warm and with ``bandit -r``; medians of ``runs`` each."""
    bandit = shutil.which("bandit") or str(Path(sys.executable).with_name("bandit"))
    with tempfile.TemporaryDirectory(prefix="plugvisor-scan-bench-") as tmp:
        root = make_plugin(Path(tmp) / "plugin")
        settings = load_settings({"state_dir": str(Path(tmp) / "state")}, env={})
        profile = load_profile("default", settings)
        sources = sorted(root.rglob("*.py"))

        cold_start = time.perf_counter()
        first = scanner.scan_tree(root, profile)  # pays Bandit's start-up once
        cold = time.perf_counter() - cold_start

        warm: list[float] = []
        bandit_only: list[float] = []
        for _ in range(runs):
            t = time.perf_counter()
            report = scanner.scan_tree(root, profile)
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            scanner._run_bandit(root, sources)  # the Bandit share alone (private on purpose)
            bandit_only.append(time.perf_counter() - t)
        assert report.findings == first.findings

        shell: list[float] = []
        shell_findings = 0
        for _ in range(runs):
            t = time.perf_counter()
            proc = subprocess.run(
                [bandit, "-r", str(root), "-f", "json", "-q"],
                capture_output=True, timeout=300, check=False,
            )  # fmt: skip
            shell.append(time.perf_counter() - t)
            if proc.returncode not in (0, 1):  # 1 = issues found
                raise SystemExit(f"bandit exited {proc.returncode}: {proc.stderr[-500:]!r}")
            shell_findings = len(json.loads(proc.stdout)["results"])

    return {
        "files": len(sources),
        "runs": runs,
        "cold_first_scan_ms": round(cold * 1000, 2),
        "warm_scan_ms": _median_ms(warm),
        "warm_bandit_only_ms": _median_ms(bandit_only),
        "bandit_subprocess_ms": _median_ms(shell),
        "ratio_subprocess_over_warm": round(statistics.median(shell) / statistics.median(warm), 2),
        "findings_plugvisor": len(report.findings),
        "findings_bandit_cli": shell_findings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    configure_logging("warning", "console", component="bench")  # keep per-scan records out
    result = measure(args.runs)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"scan bench: {result['files']} files, median of {args.runs} runs")
        print(f"  first scan in a fresh process    {result['cold_first_scan_ms']:>9} ms")
        print(f"  warm scan (Bandit + compliance)  {result['warm_scan_ms']:>9} ms "
              f"({result['findings_plugvisor']} findings)")  # fmt: skip
        print(f"  warm Bandit share                {result['warm_bandit_only_ms']:>9} ms")
        print(f"  bandit -r (subprocess)           {result['bandit_subprocess_ms']:>9} ms "
              f"({result['findings_bandit_cli']} findings)")  # fmt: skip
        print(f"  ratio bandit -r / warm scan      {result['ratio_subprocess_over_warm']:>9}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
