"""The CLI over the HTTP API: upload, reload, rollback, audit, review, jobs, remote-status.

Talks to ``settings.api_url`` (``PLUGVISOR_API_URL``; empty means
``http://api_host:api_port``) with ``settings.api_token`` (``PLUGVISOR_API_TOKEN``) as
the bearer token, using only the standard library so these commands stay light.
Job-starting commands follow the job until it finishes: on a terminal the step list is
redrawn in place, otherwise one line is printed per step change. A failed job exits
non-zero with its error code (``error: <code>: <message>``); ``--json`` prints the
final job record instead, for scripts.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.cli.hosts import plugin_host_lines
from plugvisor.core.config import Settings
from plugvisor.core.errors import ApiError, AuthError, JobError, PlugvisorError, error_from_dict

__all__ = [
    "ApiClient",
    "JobProgress",
    "audit",
    "jobs",
    "reload",
    "remote_status",
    "review",
    "rollback",
    "upload",
]

_TERMINAL = frozenset({"succeeded", "failed"})
_POLL_S = 0.2


def api_base_url(settings: Settings) -> str:
    """``settings.api_url`` or ``http://api_host:api_port``, without a trailing slash."""
    return (settings.api_url or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")


class ApiClient:
    """A small JSON client of the plugvisor API (urllib; one request per call)."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 30.0) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ApiError(
                "invalid_url", f"api_url {base_url!r} must be an http:// or https:// URL",
                field="api_url",
            )  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        return cls(api_base_url(settings), settings.api_token, timeout=30.0)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        ok_statuses: tuple[int, ...] = (),
    ) -> Any:
        """Send one request; return the decoded JSON, or raise the API's typed error."""
        hdrs = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if auth:
            if not self.token:
                raise AuthError(
                    "missing", "no API token: set PLUGVISOR_API_TOKEN (or api_token in the "
                    "config file); create one with 'plugvisor tokens create --role ROLE'",
                )  # fmt: skip
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(  # noqa: S310 -- scheme checked in __init__
            self.base_url + path, data=data, headers=hdrs, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return _decode(resp.read())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read())
            if exc.code in ok_statuses:
                return payload
            err = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(err, dict) and "code" in err:
                raise error_from_dict(err) from None
            raise ApiError(
                "http_error", f"{method} {path}: HTTP {exc.code} {exc.reason}", status=exc.code
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                "unreachable",
                f"API not reachable at {self.base_url}: {reason} (is 'plugvisor api' running? "
                "PLUGVISOR_API_URL?)",
                url=self.base_url,
            ) from None

    def start(
        self, path: str, body: Any = None, *, data: bytes | None = None,
        headers: Mapping[str, str] | None = None, idempotency_key: str | None = None,
    ) -> str:  # fmt: skip
        """POST a job-starting request; the job id from the 202 answer."""
        hdrs = dict(headers or {})
        if idempotency_key:
            hdrs["Idempotency-Key"] = idempotency_key
        answer = self.request("POST", path, body, data=data, headers=hdrs)
        return str(answer["job_id"])

    def upload(self, archive: Path, idempotency_key: str | None = None) -> str:
        """Upload an archive as multipart/form-data field ``archive``; the job id."""
        boundary = f"plugvisor-{uuid.uuid4().hex}"
        name = archive.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        body = b"".join(
            [
                f"--{boundary}\r\n".encode(),
                f'Content-Disposition: form-data; name="archive"; filename="{name}"\r\n'.encode(),
                b"Content-Type: application/gzip\r\n\r\n",
                archive.read_bytes(),
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        return self.start(
            "/api/plugins",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            idempotency_key=idempotency_key,
        )

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.request("GET", f"/api/jobs/{urllib.parse.quote(job_id)}")
        return job

    def follow(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None],
        timeout: float,
        interval: float = _POLL_S,
    ) -> dict[str, Any]:
        """Poll the job until it finishes, calling ``on_update`` on every change."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            job = self.job(job_id)
            seen = (
                job.get("status"),
                job.get("step"),
                json.dumps(job.get("steps"), sort_keys=True),
            )
            if seen != last:
                on_update(job)
                last = seen
            if job.get("status") in _TERMINAL:
                return job
            if time.monotonic() >= deadline:
                raise JobError(
                    "timeout",
                    f"job {job_id} still {job.get('display_status', job.get('status'))} after "
                    f"{timeout:.0f} s (it goes on; see 'plugvisor jobs {job_id}')",
                    job_id=job_id,
                )
            time.sleep(interval)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw.decode("utf-8", "replace")}


# ---- progress display ----------------------------------------------------------------------
def _step_line(step: Mapping[str, Any]) -> str:
    line = f"  {step.get('name', '?')}: {step.get('status', '?')}"
    if step.get("duration") is not None:
        line += f" ({float(step['duration']) * 1000:.0f} ms)"
    err = step.get("error")
    if isinstance(err, Mapping):
        line += f" - {err.get('code')}: {err.get('message')}"
    return line


class JobProgress:
    """Shows a job's steps: redrawn in place on a TTY, one line per change otherwise."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._drawn = 0
        self._printed: dict[str, str] = {}

    def __call__(self, job: Mapping[str, Any]) -> None:
        steps = [s for s in job.get("steps") or [] if isinstance(s, Mapping)]
        status = job.get("display_status") or job.get("status")
        header = f"job {job.get('id')} ({job.get('kind')}): {status}"
        if self.tty:
            lines = [header, *(_step_line(s) for s in steps)]
            if self._drawn:
                # Move to the start of the block drawn last time and clear to the end.
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self.stream.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            if not self._printed:
                self.stream.write(f"job {job.get('id')} ({job.get('kind')}) queued\n")
                self._printed["__job__"] = "queued"
            for s in steps:
                name, status = str(s.get("name")), str(s.get("status"))
                if self._printed.get(name) != status:
                    self.stream.write(_step_line(s).strip() + "\n")
                    self._printed[name] = status
            status = str(job.get("status"))
            if status in _TERMINAL and self._printed.get("__job__") != status:
                self.stream.write(f"job {job.get('id')} {status}\n")
                self._printed["__job__"] = status
        self.stream.flush()


# ---- shared command plumbing -------------------------------------------------------------
_wait_option = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Follow the job until it finishes."
)
_timeout_option = click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds to follow the job."
)
_key_option = click.option(
    "--idempotency-key", default=None, help="Retry-safe key: the same key returns the same job."
)


def _client(ctx: CliContext) -> ApiClient:
    return ApiClient.from_settings(ctx.settings)


def _run_job(
    ctx: CliContext, client: ApiClient, job_id: str, wait: bool, timeout: float
) -> dict[str, Any]:
    """Follow (or just report) a started job; a failed job raises its typed error."""
    if not wait:
        job = client.job(job_id)
        emit(ctx, job, f"job {job_id} started ({job.get('kind')}): {job.get('status')}")
        return job
    progress = (lambda _job: None) if ctx.as_json else JobProgress(sys.stdout)
    job = client.follow(job_id, progress, timeout)
    if ctx.as_json:
        emit(ctx, job)
        if job.get("status") == "failed":
            sys.exit(1)  # click returns, not raises, Exit with standalone_mode=False
        return job
    if job.get("status") == "failed":
        err = job.get("error") if isinstance(job.get("error"), dict) else None
        raise error_from_dict(err or {"code": "job.failed", "message": f"job {job_id} failed"})
    result = job.get("result")
    if result not in (None, {}):
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    return job


# ---- commands ------------------------------------------------------------------------------
@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_wait_option
@_timeout_option
@_key_option
@pass_cli
def upload(
    ctx: CliContext, archive: Path, wait: bool, timeout: float, idempotency_key: str | None
) -> None:
    """Upload a signed plugin ARCHIVE through the API (admin token) and follow the job."""
    client = _client(ctx)
    _run_job(ctx, client, client.upload(archive, idempotency_key), wait, timeout)


def _target_command(kind: str, doc: str) -> click.Command:
    @click.command(name=kind, help=doc)
    @click.argument("name")
    @click.option("--version", "version", default=None, help="Target version.")
    @_wait_option
    @_timeout_option
    @_key_option
    @pass_cli
    def command(
        ctx: CliContext, *, name: str, version: str | None, wait: bool, timeout: float,
        idempotency_key: str | None,
    ) -> None:  # fmt: skip
        client = _client(ctx)
        body: dict[str, Any] = {"name": name}
        if version is not None:
            body["version"] = version
        job_id = client.start(f"/api/plugins/{kind}", body, idempotency_key=idempotency_key)
        _run_job(ctx, client, job_id, wait, timeout)

    return command


reload = _target_command(
    "reload",
    "Reload plugin NAME to --version (default: its newest approved version) and follow the job.",
)
rollback = _target_command(
    "rollback",
    "Roll plugin NAME back to --version (default: the previous one) and follow the job.",
)


@click.command()
@click.argument("name")
@click.option("--rescan", is_flag=True, help="Re-run the scan as a job first (operator token).")
@click.option("--version", "version", default=None, help="Version to re-scan (with --rescan).")
@_timeout_option
@pass_cli
def audit(ctx: CliContext, name: str, rescan: bool, version: str | None, timeout: float) -> None:
    """Show the security report of plugin NAME (signature, integrity, findings, violations)."""
    client = _client(ctx)
    if rescan:
        body: dict[str, Any] = {"name": name}
        if version is not None:
            body["version"] = version
        job_id = client.start("/api/plugins/audit", body)
        progress = (lambda _job: None) if ctx.as_json else JobProgress(sys.stderr)
        job = client.follow(job_id, progress, timeout)
        if job.get("status") == "failed":
            err = job.get("error") if isinstance(job.get("error"), dict) else None
            raise error_from_dict(err or {"code": "job.failed", "message": "re-scan failed"})
    report = client.request("GET", f"/api/plugins/audit?{urllib.parse.urlencode({'name': name})}")
    emit(ctx, report, _audit_text(report))


def _audit_text(r: Mapping[str, Any]) -> str:
    lines = [f"{r.get('name')} {r.get('version') or '-'} ({r.get('status') or 'no version'})"]
    sig = r.get("signature") or {}
    if sig:
        trusted = "trusted" if sig.get("key_trusted_now") else "NO LONGER TRUSTED"
        lines.append(f"signature: {sig.get('status')} by key {sig.get('keyid')} ({trusted})")
    integ = r.get("integrity") or {}
    if integ:
        state = "intact" if integ.get("ok") else "PROBLEMS: " + "; ".join(integ.get("problems", []))
        lines.append(f"integrity: {state}")
    profile = r.get("profile") or {}
    if profile:
        lines.append(f"profile: {profile.get('name')}")
    findings = r.get("findings") or []
    lines.append(f"findings: {len(findings)}")
    lines.extend(
        f"  [{f.get('severity')}] {f.get('rule')} {f.get('file')}:{f.get('line')} "
        f"{f.get('cwe') or ''} {f.get('message') or ''}".rstrip()
        for f in findings
    )
    violations = r.get("violations") or []
    lines.append(f"runtime violations: {len(violations)}")
    lines.extend(
        f"  {v.get('time')} {v.get('version')} {v.get('kind')} {v.get('action')}"
        for v in violations[-20:]
    )
    hosts = list(r.get("hosts") or [])
    if len(hosts) > 1:
        lines.append("hosts:")
        lines.extend(plugin_host_lines(hosts))
    chain = r.get("security_log") or {}
    lines.append(
        f"security log chain: {'ok' if chain.get('ok') else 'BROKEN'} ({chain.get('lines')} lines"
        + (
            f", first bad line {chain.get('first_bad_line')}: {chain.get('reason')})"
            if not chain.get("ok")
            else ")"
        )
    )
    return "\n".join(lines)


@click.command()
@click.argument("name")
@click.argument("version")
@click.argument("decision", type=click.Choice(["approve", "reject"]))
@click.option("--reason", required=True, help="Why (recorded with who decided).")
@_wait_option
@_timeout_option
@_key_option
@pass_cli
def review(
    ctx: CliContext, *, name: str, version: str, decision: str, reason: str, wait: bool,
    timeout: float, idempotency_key: str | None,
) -> None:  # fmt: skip
    """Approve or reject VERSION of plugin NAME held for review (admin token)."""
    client = _client(ctx)
    job_id = client.start(
        f"/api/plugins/{urllib.parse.quote(name)}/review",
        {"version": version, "decision": decision, "reason": reason},
        idempotency_key=idempotency_key,
    )
    _run_job(ctx, client, job_id, wait, timeout)


@click.command()
@click.argument("job_id", required=False)
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed"]))
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--follow", is_flag=True, help="With JOB_ID: follow it until it finishes.")
@_timeout_option
@pass_cli
def jobs(
    ctx: CliContext, *, job_id: str | None, state: str | None, limit: int, follow: bool,
    timeout: float,
) -> None:  # fmt: skip
    """Show job JOB_ID, or list recent jobs (newest first)."""
    client = _client(ctx)
    if job_id:
        if follow:
            _run_job(ctx, client, job_id, True, timeout)
            return
        job = client.job(job_id)
        text = "\n".join(
            [
                f"job {job.get('id')} ({job.get('kind')}): {job.get('display_status')}",
                *(_step_line(s) for s in job.get("steps") or []),
            ]
        )
        emit(ctx, job, text)
        return
    query: dict[str, Any] = {"limit": limit}
    if state:
        query["state"] = state
    listing = client.request("GET", f"/api/jobs?{urllib.parse.urlencode(query)}")
    rows = listing.get("jobs", [])
    text = "\n".join(
        f"{j.get('id')}  {j.get('kind'):<8}  {j.get('display_status')}  {j.get('updated')}"
        for j in rows
    )
    emit(ctx, rows, text or "no jobs")


@click.command("remote-status")
@pass_cli
def remote_status(ctx: CliContext) -> None:
    """Show the API's health (daemon, broker, workers, sandbox) and, with a token, plugins."""
    client = _client(ctx)
    health = client.request("GET", "/api/health", auth=False, ok_statuses=(503,))
    out: dict[str, Any] = {"api_url": client.base_url, "health": health}
    if client.token:
        try:
            out["plugins"] = client.request("GET", "/api/plugins").get("plugins", [])
        except PlugvisorError as err:
            out["plugins_error"] = err.to_dict()
    lines = [
        f"api: {client.base_url}",
        f"health: {'ok' if health.get('ok') else 'DEGRADED'}",
        f"  daemon: {'reachable' if health['daemon'].get('reachable') else 'DOWN'} "
        f"{health['daemon'].get('detail') or ''}".rstrip(),
        f"  broker: {'reachable' if health['broker'].get('reachable') else 'DOWN'} "
        f"{health['broker'].get('url')} {health['broker'].get('detail') or ''}".rstrip(),
        f"  workers: seen={health['workers'].get('seen')} "
        f"queued_jobs={health['workers'].get('queued_jobs')}",
        "  sandbox: "
        + ", ".join(
            n + ("" if layer.get("active") else " (inactive)")
            for n, layer in (health.get("sandbox") or {}).items()
            if isinstance(layer, dict)
        ),
    ]
    for p in out.get("plugins", []):
        lines.append(
            f"{p.get('name')}: active {p.get('active_version') or '-'}"
            f" (previous {p.get('previous_version') or '-'})"
            + (f" DISABLED: {p.get('disabled_reason')}" if p.get("disabled") else "")
        )
    emit(ctx, out, "\n".join(lines))
    if not health.get("ok"):
        sys.exit(1)  # degraded: scripts test the exit code
