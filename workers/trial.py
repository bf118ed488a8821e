"""The trial of a candidate version: run it once in the real sandbox, away from live data.

:func:`run_trial` verifies the stored tree, copies the plugin's data (``data_dir`` files
and ``ctx.db`` through SQLite's backup API) into a throw-away directory under
``staging/``, spawns the version under its own profile (setup runs), asks ``health()``,
then runs ``selftest()`` when the plugin defines one, and tears the host down. A failed
setup, a false or failing health check, a failed self-test, a crash, and any violation or
budget breach reported while it ran fail the trial with that code; the live plugin and
its data are never touched.

Each worker process has one :class:`~plugvisor.sandbox.Spawner` (the template
process), started on the first trial and closed at ``worker_process_shutdown``.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_shutdown

from plugvisor.core.errors import PlugvisorError, SandboxError, StateError, error_from_dict
from plugvisor.core.fs import remove_tree
from plugvisor.core.log import get_logger
from plugvisor.core.manifest import parse_plugin_yaml
from plugvisor.core.profile import load_profile
from plugvisor.sandbox import HostSpec, PluginHost, Spawner
from plugvisor.state.backups import copy_sqlite, copy_tree
from plugvisor.state.layout import StateLayout
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.store import VersionStore
from plugvisor.workers.hooks import on_step

if TYPE_CHECKING:
    from plugvisor.core.config import Settings
    from plugvisor.state.registry import Registry

__all__ = ["TrialViolation", "close_spawner", "run_trial", "worker_spawner"]

_log = get_logger(__name__)


@dataclass(frozen=True)
class TrialViolation:
    """One violation the sandbox reported while a trial ran."""

    plugin: str
    version: str
    kind: str
    detail: str


class _Collector:
    """The spawner's ``on_violation`` callback: keeps what the current trial caused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[TrialViolation] = []

    def __call__(self, plugin: str, version: str, kind: str, detail: str) -> None:
        with self._lock:
            self._seen.append(TrialViolation(plugin, version, kind, detail))

    def take(self, plugin: str, version: str) -> list[TrialViolation]:
        with self._lock:
            mine = [v for v in self._seen if (v.plugin, v.version) == (plugin, version)]
            self._seen = [v for v in self._seen if (v.plugin, v.version) != (plugin, version)]
        return mine


_spawner: Spawner | None = None
_collector = _Collector()
_spawner_lock = threading.Lock()


def worker_spawner(settings: Settings) -> Spawner:
    """This process's spawner, its template started on first use (restarted if it died)."""
    global _spawner  # noqa: PLW0603 -- one template per worker process, by design
    with _spawner_lock:
        if _spawner is None:
            layout = StateLayout(settings.state_dir)
            _spawner = Spawner(
                settings, security_log=SecurityLog(layout.security_log), on_violation=_collector
            )  # fmt: skip
        _spawner.start()
        return _spawner


def close_spawner(**_: Any) -> None:
    """Stop this process's template (``worker_process_shutdown``; safe to call twice)."""
    global _spawner  # noqa: PLW0603
    with _spawner_lock:
        if _spawner is not None:
            try:
                _spawner.close()
            finally:
                _spawner = None


worker_process_shutdown.connect(close_spawner, weak=False)


def _violation_error(found: list[TrialViolation], name: str, version: str) -> PlugvisorError:
    first = found[0]
    err = error_from_dict({
        "code": first.kind if "." in first.kind else f"policy.{first.kind}",
        "message": f"trial of {name} {version}: {first.kind}: {first.detail}"
        + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""),
        "details": {"plugin": name, "version": version, "violations": len(found)},
    })  # fmt: skip
    return err


def run_trial(
    settings: Settings, registry: Registry, name: str, version: str, job_id: str
) -> dict[str, Any]:
    """Start ``name`` ``version`` in the sandbox on a copy of its data; raise if it fails."""
    layout = StateLayout(settings.state_dir)
    record = registry.get_version(name, version)
    problems = VersionStore(layout).verify(record.digest)
    if problems:
        raise StateError(
            "integrity", f"{name} {version} differs from its manifest: " + "; ".join(problems[:5]),
            plugin=name, version=version, problems=problems[:20],
        )  # fmt: skip
    tree = layout.version_dir(record.digest)
    meta = parse_plugin_yaml((tree / "plugin.yaml").read_bytes())
    profile = load_profile(meta.profile or settings.default_profile, settings)
    layout.ensure()
    # Debris of a killed attempt of this job (the next trial of anyone's removes nothing else).
    prefix = f"trial-{job_id.replace(':', '_')}-"
    for old in layout.staging_dir.glob(prefix + "*"):
        remove_tree(old)
    scratch = layout.staging_dir / f"{prefix}{secrets.token_hex(4)}"
    scratch.mkdir(mode=0o711)
    t0 = time.perf_counter()
    try:
        live_files = layout.plugin_files_dir(name)
        if live_files.is_dir():
            copy_tree(live_files, scratch / "files")
        else:
            (scratch / "files").mkdir(mode=0o700)
        if layout.plugin_db(name).is_file():
            copy_sqlite(layout.plugin_db(name), scratch / "db.sqlite")
        spec = HostSpec(
            plugin=name,
            version=version,
            code_dir=tree,
            entrypoint=meta.entrypoint,
            profile=profile,
            data_dir=scratch / "files",
            db_path=scratch / "db.sqlite",
            config=dict(meta.config or {}),
            max_response_bytes=settings.max_response_bytes,
        )
        spawner = worker_spawner(settings)
        _collector.take(name, version)  # nothing left over from an earlier trial
        timings: dict[str, Any] = {}
        try:
            host = spawner.spawn(spec, timeout=settings.swap_health_timeout_s)
        except PlugvisorError as exc:
            found = _collector.take(name, version)
            if found:
                raise _violation_error(found, name, version) from exc
            raise
        try:
            timings = dict(host.timings)
            on_step("trial", scratch)
            healthy = host.health(timeout=settings.swap_health_timeout_s)
            found = _collector.take(name, version)
            if found:
                raise _violation_error(found, name, version)
            if not healthy:
                raise SandboxError(
                    "unhealthy", f"{name} {version} failed its health check in the trial "
                    "(health() returned false, raised, or the host died)",
                    plugin=name, version=version,
                )  # fmt: skip
            selftest = _selftest(host, name, version)
            found = _collector.take(name, version)
            if found:
                raise _violation_error(found, name, version)
        finally:
            host.stop(grace=2.0)
    finally:
        remove_tree(scratch)
    took = round((time.perf_counter() - t0) * 1000, 3)
    _log.info("trial.passed", plugin=name, version=version, ms=took)
    return {
        "name": name,
        "version": version,
        "profile": profile.name,
        "healthy": True,
        "selftest": selftest,
        "took_ms": took,
        "spawn_ms": timings.get("spawn"),
    }


def _selftest(host: PluginHost, name: str, version: str) -> str:
    """Run the plugin's ``selftest()`` if it has one: ``passed`` or ``absent``; raise if failed.

    An exception inside it raises its typed error (``plugin.error``, ``budget.*``,
    ``policy.*``); any return value other than ``True`` is ``sandbox.selftest_failed``.
    """
    outcome = host.selftest()
    if outcome is None:
        return "absent"
    if outcome is not True:
        raise SandboxError(
            "selftest_failed", f"{name} {version} failed its selftest(): returned {outcome!r}",
            plugin=name, version=version,
        )  # fmt: skip
    return "passed"
