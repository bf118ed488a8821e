"""``plugvisor dev run`` and ``plugvisor dev check``: an author's local sandbox and upload check."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.errors import ApiError

__all__ = ["check", "describe_violation", "dev", "read_requests", "run"]

#: The audit layer's detail: ``"<class>: <what>, <file>:<line>"``.
_DETAIL = re.compile(r"^(?P<cls>[a-z_]+): (?P<what>.*), (?P<file>[^\s,][^,]*):(?P<line>\d+)$", re.S)


def describe_violation(kind: str, detail: str) -> str:
    """A violation in plain words, naming the operation and where the audit layer saw it."""
    m = _DETAIL.match(detail)
    if m is None:
        return f"{kind}: {detail}"
    where = f"{m['file']}, line {m['line']}"
    if kind == "policy.forbidden":
        return f"forbidden operation {m['cls']}: {m['what']} (at {where})"
    return f"{kind}: {m['what']} (at {where})"


def read_requests(request: tuple[str, ...], requests_file: Path | None) -> list[Any]:
    """The requests to run: each ``--request`` JSON, then each line of ``--requests FILE``.

    FILE holds one JSON request per line; blank lines and lines starting with ``#`` are
    skipped. With neither option, one empty request ``{}``.
    """
    texts = [(f"--request #{i + 1}", t) for i, t in enumerate(request)]
    if requests_file is not None:
        lines = requests_file.read_text(encoding="utf-8").splitlines()
        texts += [
            (f"{requests_file}:{n}", line)
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    out = []
    for where, text in texts:
        try:
            out.append(json.loads(text))
        except ValueError as exc:
            raise ApiError("invalid_json", f"{where} is not JSON: {exc}", where=where) from None
    return out or [{}]


@click.group()
def dev() -> None:
    """Run and check an unsigned plugin directory locally, before packing it."""


@dev.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--profile", default=None, help="Run under this profile instead of plugin.yaml's.")
@click.option("--request", multiple=True, help="A request as JSON; repeatable.")
@click.option(
    "--requests",
    "requests_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A file of requests, one JSON value per line.",
)
@click.option("--timeout", type=float, default=None, help="Per-request deadline below the budget.")
@pass_cli
def run(  # noqa: PLR0917 -- click passes every option as an argument
    ctx: CliContext,
    directory: Path,
    profile: str | None,
    request: tuple[str, ...],
    requests_file: Path | None,
    timeout: float | None,
) -> None:
    """Run DIRECTORY's plugin in the real sandbox and print each answer and its budgets.

    No daemon, broker or signature: the files 'pack' would take are copied to a
    throw-away state directory under /tmp and served by one sandboxed host under the
    plugin's profile (or --profile). Per request: the answer or the error code, the
    wall time, peak memory (RSS), files opened and ctx.db queries against the profile's
    budgets, and each violation with the file and line where the sandbox saw it. A host
    killed by a breach is replaced before the next request. Exit 1 if any request failed.
    The plugin's ctx.log records go to stderr (PLUGVISOR_LOG_LEVEL=warning hides them).
    """
    from plugvisor.core.log import configure_logging  # noqa: PLC0415
    from plugvisor.devkit import DevSandbox, budget_figure  # noqa: PLC0415 -- sandbox imports

    # The plugin's ctx.log records (info) are what an author wants to see while trying it:
    # readable, on stderr, unless PLUGVISOR_LOG_LEVEL / PLUGVISOR_LOG_FORMAT say otherwise.
    configure_logging(
        level=os.environ.get("PLUGVISOR_LOG_LEVEL", "info"),
        fmt=os.environ.get("PLUGVISOR_LOG_FORMAT", "console"),
        component="dev",
        stream=sys.stderr,
    )
    reqs = read_requests(request, requests_file)
    failed = 0
    out: list[dict[str, Any]] = []
    with DevSandbox(directory, profile, settings=ctx.settings) as sandbox:
        p = sandbox.profile
        if not ctx.as_json:
            click.echo(f"{sandbox.meta.name} {sandbox.meta.version} under profile {p.name}")
        for i, req in enumerate(reqs, 1):
            rep = sandbox.run(req, timeout)
            failed += not rep.ok
            out.append(rep.to_dict())
            if ctx.as_json:
                continue
            lines = [f"request {i}: {json.dumps(req, sort_keys=True)}"]
            if rep.error is None:
                lines.append(f"  ok: {json.dumps(rep.result, sort_keys=True)}")
            else:
                lines.append(f"  error {rep.error.code}: {rep.error.message}")
                if rep.error.code.startswith("budget."):
                    lines.append(f"  broke {rep.error.code}: {budget_figure(rep.error.code, p)}")
            above = max(0, rep.peak_rss - rep.baseline_rss)
            files = "?" if rep.files_opened is None else str(rep.files_opened)
            lines.append(
                f"  budgets: time {rep.elapsed * 1000:.1f} ms of {p.max_execution_time:g} s"
                f" | memory peak RSS {rep.peak_rss / 1024**2:.1f} MiB"
                f" ({above / 1024**2:.1f} MiB above the runtime's; limit "
                f"{p.memory_limit / 1024**2:.0f} MiB)"
                f" | files {files} of {p.max_files}"
                f" | db queries {rep.db_queries} of {p.max_db_queries}"
            )
            lines += [
                f"  violation: {describe_violation(v.kind, v.detail)}" for v in rep.violations
            ]
            click.echo("\n".join(lines))
    if ctx.as_json:
        emit(ctx, {"ok": failed == 0, "requests": out})
    if failed:
        # Not ctx.exit(1): main() runs click with standalone_mode=False, which swallows it.
        sys.exit(1)


@dev.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@pass_cli
def check(ctx: CliContext, directory: Path) -> None:
    """The upload's package rules and scan on DIRECTORY; exit 1 unless it would be approved.

    Packs with a throw-away key and runs every archive check 'plugvisor verify' runs
    (file count, size, names, plugin.yaml, manifest agreement), then the scan the upload
    pipeline runs (Bandit + the profile's compliance rules) on the extracted tree.
    Verdict: approved, review (findings at or above scan_review_severity) or refused.
    """
    from plugvisor.devkit import check_directory  # noqa: PLC0415 -- Bandit is slow to import

    report = check_directory(directory, ctx.settings)
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in report.checks]
    if report.profile:
        lines.append(
            f"scan under profile {report.profile}: {len(report.findings)} finding(s), "
            f"{report.blocking} at or above {report.threshold}"
        )
    for f in report.findings:
        lines.append(f"  {f['severity']:<6} {f['rule']} {f['file']}:{f['line']}: {f['message']}")
    why = {
        "approved": "an upload would be approved",
        "review": f"an upload would be held for review ({report.blocking} finding(s) at or "
        f"above {report.threshold})",
        "refused": "an upload would be refused (and quarantined)",
    }[report.verdict]
    lines.append(f"{directory}: {report.verdict}: {why}")
    emit(ctx, report.to_dict(), "\n".join(lines))
    if not report.ok:
        sys.exit(1)
