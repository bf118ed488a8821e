"""Reload and rollback: the task bodies of the two pipelines that change the live version.

reload ``{name, version?}``: ``reload_check`` -> ``snapshot`` -> ``trial`` -> ``activate``.
The check resolves the version (default: the highest ``approved`` one newer than the
active version; any other status is refused, naming it) and refuses dependency
conflicts, each named. The snapshot backs up the active version and its data; the trial
runs the candidate in the sandbox on a copy of the data; ``activate`` asks the daemon
over the control plane with the command id ``<job id>:activate``, so a redelivered task
re-sends the same id and the daemon answers from its record instead of swapping twice.
Until the daemon's swap commits, the registry and the live side are untouched: a reload
failing at any step leaves the old version active and serving.

rollback ``{name, version?}``: ``rollback_check`` -> ``snapshot`` -> ``restore``. The check
picks the previous version (or the one named), which must have a complete backup in
``backups/NAME/VERSION/`` whose files match its manifest and whose digest is the
version's; the stored tree is re-hashed (``VersionStore.verify``) and its MANIFEST.json
checked to hash to the digest; its stored MANIFEST.sig is re-verified over those bytes
against the keys trusted now (``signature.untrusted`` once its key is no longer trusted,
``signature.invalid`` for a tampered MANIFEST.sig, ``signature.missing`` for a tree
stored without one) and must name the key recorded at install. No re-scan: the version
was approved before. The snapshot of the current version makes the
rollback itself reversible (a later reload/rollback to it restores that data).

Data restore design (the live plugin keeps writing its DB until the swap): the worker
stages the backup's data in ``data/.restore-NAME-<job>/`` (same file system), then sends
the daemon ``rollback {name, version, restore_from}``. Under the plugin's swap lock the
daemon verifies the target, stops routing to the old hosts and drains them (in-flight
calls finish; calls arriving in that window get ``plugin.unavailable``), exchanges the
staged directory with ``data/NAME/`` in one ``renameat2(RENAME_EXCHANGE)`` (the DB and the
files flip together: never a half-restored DB), and starts the target version on it. If
the target fails to start, it exchanges back and restarts the old version. Writes the
old version made after the snapshot are, by the nature of a rollback, not in the
restored data; they stay in the exchanged-out directory, which the worker moves to
``backups/NAME/.pre-rollback-<job>/`` for an operator (not counted by retention).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugvisor.core.errors import (
    ConflictError,
    DependencyError,
    JobError,
    NotFoundError,
    PlugvisorError,
    SignatureError,
    StateError,
)
from plugvisor.core.fs import fsync_dir, remove_tree
from plugvisor.core.semver import parse_version
from plugvisor.messaging.broker import CONNECTION_ERRORS
from plugvisor.messaging.celery_app import soft_time_limit
from plugvisor.messaging.commands import Activate, Command, Rollback
from plugvisor.messaging.control import broadcast_command, outcome_result, send_command
from plugvisor.messaging.jobs import open_registry
from plugvisor.state.backups import (
    read_backup,
    read_restore_id,
    snapshot_active,
    stage_restore,
    verify_backup,
)
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import ACTIVATABLE, Registry, VersionStatus
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore
from plugvisor.workers.hooks import on_step
from plugvisor.workers.jobs import JobFailed, JobRun, Step
from plugvisor.workers.trial import run_trial

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = [
    "BODIES",
    "check_rollback_target",
    "resolve_reload_version",
]

# ---- reload ----------------------------------------------------------------------------------


def resolve_reload_version(registry: Registry, name: str, version: str | None) -> str:
    """The version a reload goes to; refuses a missing, unapproved or no-newer target."""
    plugin = registry.get_plugin(name)
    active = plugin.active_version
    if version:
        record = registry.get_version(name, version)  # NotFoundError names it
        if record.status is not VersionStatus.approved:
            hint = " (it is the active version)" if record.status is VersionStatus.active else (
                "; use rollback for a version that was active before"
                if record.status is VersionStatus.retired else "")  # fmt: skip
            raise ConflictError(
                "not_approved",
                f"{name} {version} is {record.status.value}, not approved: it cannot be "
                f"reloaded{hint}",
                plugin=name, version=version, status=record.status.value,
            )  # fmt: skip
        return record.version
    floor = parse_version(active) if active else None
    candidates = [
        v for v in registry.list_versions(name)
        if v.status is VersionStatus.approved
        and (floor is None or parse_version(v.version) > floor)
    ]  # fmt: skip
    if not candidates:
        raise ConflictError(
            "no_newer_version",
            f"{name} has no approved version newer than {active or 'nothing (none active)'}",
            plugin=name, active=active,
        )  # fmt: skip
    return max(candidates, key=lambda v: parse_version(v.version)).version


def _dependency_check(registry: Registry, name: str, version: str) -> None:
    conflicts = registry.check_dependencies((name, version))
    if conflicts:
        raise DependencyError(
            "conflict", f"{name} {version} refused: " + "; ".join(conflicts),
            plugin=name, version=version, conflicts=conflicts,
        )  # fmt: skip


def _reload_check(job: JobRun, settings: Settings) -> None:
    """Resolve the target version and refuse dependency conflicts, each named."""
    registry = open_registry(settings)

    def check(_step: Step) -> dict[str, Any]:
        name = str(job.params["name"])
        version = resolve_reload_version(registry, name, job.params.get("version"))
        _dependency_check(registry, name, version)
        return {"name": name, "version": version, "from": registry.get_plugin(name).active_version}

    job.run_step("check", check)


def _target(job: JobRun) -> dict[str, Any]:
    result = job.step_result("check")
    return dict(result)


def _snapshot(job: JobRun, settings: Settings) -> None:
    """Back up the active version (code reference + data) before anything changes."""
    registry = open_registry(settings)
    target = _target(job)

    def snap(_step: Step) -> dict[str, Any]:
        out = snapshot_active(
            settings, registry, str(target["name"]), job.job_id, protect={str(target["version"])},
            on_copied=partial(on_step, "snapshot"),
        )  # fmt: skip
        return out if out is not None else {"skipped": "no active version"}

    job.run_step("snapshot", snap)


def _trial(job: JobRun, settings: Settings) -> None:
    """Run the candidate in the sandbox on a copy of the data (setup, health, selftest)."""
    registry = open_registry(settings)
    target = _target(job)
    job.run_step(
        "trial",
        lambda _s: run_trial(
            settings, registry, str(target["name"]), str(target["version"]), job.job_id
        ),
    )


def _command_timeout(settings: Settings, job: JobRun) -> float:
    """How long to wait for the daemon: the swap's own budget, within the task's limit."""
    left = soft_time_limit(settings) - (time.monotonic() - job.started) - 2.0
    return max(1.0, min(settings.swap_health_timeout_s * 2 + 20.0, left))


# The command id makes a retry safe: the daemon answers a repeated id from its record.
_TRANSIENT = CONNECTION_ERRORS


def _command(
    settings: Settings,
    job: JobRun,
    send: Callable[[float], dict[str, dict[str, Any]]],
    kind: str,
    command_id: str,
) -> dict[str, dict[str, Any]]:
    """Send one control-plane command with ``send(timeout)``; its outcomes by host.

    A broken broker connection (RabbitMQ restarting, a dropped socket) is retried with
    back-off inside the task's time budget; every try carries the same ``command_id``,
    so each daemon applies the command once whatever number of copies reach it.
    """
    delay = 0.2
    while True:
        try:
            return send(_command_timeout(settings, job))
        except _TRANSIENT as exc:
            left = soft_time_limit(settings) - (time.monotonic() - job.started)
            if left < delay + 5.0:
                raise JobError(
                    "broker_unavailable", f"{kind} command {command_id} could not "
                    f"reach the daemon: {type(exc).__name__}: {exc}", command_id=command_id,
                ) from exc  # fmt: skip
            job.log.warning("job.command_retry", kind=kind, command_id=command_id,
                            error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def fleet_result(outcomes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One result from the outcomes of every addressed host, or the error that fails it.

    A host that refused (or failed the swap) fails the step with its error, naming the
    host when there are several; hosts that did not answer in time only fail it when
    none answered -- they converge to the desired version when they return, and are
    listed as ``behind``. The result is the first switched host's, plus every host's
    outcome.
    """
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, PlugvisorError] = {}
    for host, outcome in sorted(outcomes.items()):
        try:
            results[host] = dict(outcome_result(outcome))
        except PlugvisorError as exc:
            errors[host] = exc
    refused = {h: e for h, e in errors.items() if e.code != "job.timeout"}
    if refused or not results:
        host, err = next(iter((refused or errors).items()))
        if len(outcomes) == 1:
            raise err
        raise type(err)(
            err.rule, f"host {host}: {err.message}",
            **{**err.details, "host": host, "hosts": _host_lines(results, errors)},
        )  # fmt: skip
    first = results[next(iter(results))]
    return {**first, "hosts": _host_lines(results, errors),
            "behind": sorted(errors)}  # fmt: skip


def _host_lines(
    results: Mapping[str, Mapping[str, Any]], errors: Mapping[str, PlugvisorError]
) -> dict[str, dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {
        h: {"outcome": r.get("outcome"), "took_ms": r.get("took_ms")} for h, r in results.items()
    }
    lines.update({h: {"outcome": "error", "error": e.code} for h, e in errors.items()})
    return dict(sorted(lines.items()))


def _activate(job: JobRun, settings: Settings) -> None:
    """Ask every daemon of the fleet to swap; the job's result is their recorded outcomes."""
    target = _target(job)
    name, version = str(target["name"]), str(target["version"])

    def activate(_step: Step) -> dict[str, Any]:
        # Same id on every delivery: each daemon applies it once and answers repeats
        # from its record (Registry.record_command).
        cid = f"{job.job_id}:activate"
        command = Activate(name, version)
        send = partial(_broadcast, settings, command, cid)
        return fleet_result(_command(settings, job, send, command.kind, cid))

    swapped = job.run_step("activate", activate)
    job.succeed({
        "name": name,
        "version": version,
        "from": target.get("from"),
        "outcome": swapped.get("outcome"),
        "took_ms": swapped.get("took_ms"),
        "hosts": swapped.get("hosts"),
        "behind": swapped.get("behind"),
        "snapshot": _backup_ref(job.step_result("snapshot")),
        "trial": job.step_result("trial"),
    })  # fmt: skip


def _broadcast(
    settings: Settings, command: Command, cid: str, timeout: float
) -> dict[str, dict[str, Any]]:
    return broadcast_command(settings, command, timeout=timeout, command_id=cid)


def _to_this_host(
    settings: Settings, command: Command, cid: str, timeout: float
) -> dict[str, dict[str, Any]]:
    return {settings.host: send_command(settings, command, timeout=timeout, command_id=cid)}


def _backup_ref(snapshot: Any) -> dict[str, Any] | None:
    if not isinstance(snapshot, dict) or "path" not in snapshot:
        return None
    return {"version": snapshot.get("version"), "path": snapshot.get("path")}


# ---- rollback --------------------------------------------------------------------------------


def check_rollback_target(
    settings: Settings, registry: Registry, name: str, version: str | None
) -> dict[str, Any]:
    """Resolve and re-verify a rollback target: status, backup, code hashes, signature."""
    layout = StateLayout(settings.state_dir)
    plugin = registry.get_plugin(name)
    target = version or plugin.previous_version
    if not target:
        raise ConflictError(
            "no_previous", f"{name} has no previous version to roll back to", plugin=name
        )
    record = registry.get_version(name, target)
    if target == plugin.active_version:
        raise ConflictError(
            "already_active", f"{name} {target} is the active version already",
            plugin=name, version=target,
        )  # fmt: skip
    if record.status not in ACTIVATABLE:
        raise ConflictError(
            "not_activatable", f"{name} {target} is {record.status.value}; only approved or "
            "retired versions can be rolled back to", plugin=name, version=target,
            status=record.status.value,
        )  # fmt: skip
    backup_path = layout.backup_dir(name, target)
    try:
        backup = read_backup(backup_path)
    except NotFoundError as exc:
        raise NotFoundError(
            "backup", f"{name} {target} has no backup in {backup_path}: only a version "
            "snapshotted when it was active can be rolled back to (with its data)",
            plugin=name, version=target,
        ) from exc  # fmt: skip
    problems = verify_backup(backup_path)
    if problems:
        raise StateError(
            "backup_corrupt", f"backup of {name} {target} differs from its manifest: "
            + "; ".join(problems[:5]), plugin=name, version=target, problems=problems[:20],
        )  # fmt: skip
    if backup.digest != record.digest:
        raise StateError(
            "backup_mismatch", f"backup of {name} {target} references code {backup.digest[:12]}, "
            f"the registry {record.digest[:12]}", plugin=name, version=target,
        )  # fmt: skip
    store = VersionStore(layout)
    store.manifest(record.digest)  # StateError("tampered") unless it hashes to the digest
    problems = store.verify(record.digest)
    if problems:
        raise StateError(
            "integrity", f"{name} {target} differs from its manifest: " + "; ".join(problems[:5]),
            plugin=name, version=target, problems=problems[:20],
        )  # fmt: skip
    _check_stored_signature(
        store, name=name, target=target, digest=record.digest, keyid=record.keyid, layout=layout
    )
    _dependency_check(registry, name, target)
    return {
        "name": name,
        "version": target,
        "from": plugin.active_version,
        "digest": record.digest,
        "backup": str(backup_path),
        "backup_job": backup.job_id,
    }


def _check_stored_signature(
    store: VersionStore, *, name: str, target: str, digest: str, keyid: str, layout: StateLayout
) -> None:
    """Re-verify the stored MANIFEST.sig over the stored MANIFEST.json with today's trust."""
    try:
        store.verify_signature(digest, TrustStore(layout.root).load_all(), expected_keyid=keyid)
    except SignatureError as err:
        raise SignatureError(
            err.rule, f"{name} {target}: {err.message}", **{**err.details, "plugin": name,
            "version": target},
        ) from err  # fmt: skip


def _rollback_check(job: JobRun, settings: Settings) -> None:
    """Resolve the target and re-verify its backup, code and signature."""
    registry = open_registry(settings)
    job.run_step(
        "check",
        lambda _s: check_rollback_target(
            settings, registry, str(job.params["name"]), job.params.get("version")
        ),
    )


def _restore(job: JobRun, settings: Settings) -> None:
    """Stage the backup's data, have the daemon swap code and data together, tidy up."""
    target = _target(job)
    name, version = str(target["name"]), str(target["version"])
    layout = StateLayout(settings.state_dir)
    staged = job.run_step(
        "stage", lambda _s: stage_restore(settings, name, version, job.job_id)
    )  # fmt: skip

    def swap(_step: Step) -> dict[str, Any]:
        # The backup and the staged data are this host's: its daemon swaps them in; the
        # other hosts of a fleet follow the desired version with their own data.
        cid = f"{job.job_id}:rollback"
        command = Rollback(name, version, restore_from=staged["stage"])
        send = partial(_to_this_host, settings, command, cid)
        return fleet_result(_command(settings, job, send, command.kind, cid))

    try:
        swapped = job.run_step("swap", swap)
    except JobFailed:
        # Refused or undone by the daemon: the staged copy still holds the backup's data
        # (its RESTORE_ID is ours), a duplicate of the backup: not worth keeping.
        stage = Path(str(staged["stage"]))
        if read_restore_id(stage) == job.job_id:
            remove_tree(stage)
        raise

    def keep_previous(_step: Step) -> dict[str, Any]:
        # After the exchange the staged path holds the data the old version left.
        stage = layout.data_dir / os.path.basename(str(staged["stage"]))
        if not stage.exists():
            return {"previous_data": None}
        if read_restore_id(stage) == job.job_id:
            remove_tree(stage)  # never exchanged (the daemon found it applied already)
            return {"previous_data": None}
        dest = layout.plugin_backups_dir(name) / f".pre-rollback-{job.job_id.replace(':', '_')}"
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        if dest.exists():
            remove_tree(dest)
        os.rename(stage, dest)  # same file system (state dir): one rename
        fsync_dir(dest.parent)
        return {"previous_data": str(dest)}

    kept = job.run_step("tidy", keep_previous)
    job.succeed({
        "name": name,
        "version": version,
        "from": target.get("from"),
        "outcome": swapped.get("outcome"),
        "restored": swapped.get("restored"),
        "took_ms": swapped.get("took_ms"),
        "snapshot": _backup_ref(job.step_result("snapshot")),
        "previous_data": kept.get("previous_data"),
    })  # fmt: skip


#: Short task name -> body (merged into the task registry by tasks.py).
BODIES = {
    "reload_check": _reload_check,
    "rollback_check": _rollback_check,
    "snapshot": _snapshot,
    "trial": _trial,
    "activate": _activate,
    "restore": _restore,
}
