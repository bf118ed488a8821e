"""Plugin authors' kit: run an unsigned plugin directory in the sandbox; check it as upload does.

:class:`DevSandbox` is what ``plugvisor dev run`` and the ``sandboxed_plugin`` pytest
fixture use: the directory's files are copied (as ``pack`` would take them: no
``tests/``, no ``__pycache__``, no dot-files) into a throw-away state directory under
``/tmp`` (mode 0o755, so the sandbox user can traverse it), and one host is spawned from a
private template with the plugin's profile -- no daemon, no broker, no signature. Every
call yields a :class:`RequestReport`: the answer or the error, the budgets used (wall time,
peak RSS sampled with psutil, files opened, ``ctx.db`` queries) and each violation the
sandbox saw, in the ``"<class>: <what>, <file>:<line>"`` words of the audit layer.

:func:`check_directory` is ``plugvisor dev check``: the package rules (by packing to a
temporary archive with a throw-away key and running :func:`~plugvisor.core.archive.check_archive`
on it) and the upload scan (:func:`~plugvisor.scan.scanner.scan_tree` on the extracted
tree, the same call the upload pipeline makes), judged with the same threshold.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from plugvisor.core.archive import (
    ArchiveLimits,
    Check,
    check_archive,
    extract_archive,
    pack,
)
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import ArchiveError, NotFoundError, PlugvisorError
from plugvisor.core.fs import remove_tree
from plugvisor.core.manifest import PluginMeta, parse_plugin_yaml
from plugvisor.core.profile import SecurityProfile, load_profile
from plugvisor.core.signing import generate_keypair, load_public_key
from plugvisor.sandbox import HostSpec, PluginHost, Spawner
from plugvisor.state.layout import StateLayout
from plugvisor.state.security_log import SecurityLog

__all__ = [
    "CheckReport",
    "DevSandbox",
    "RequestReport",
    "Violation",
    "budget_figure",
    "check_directory",
    "copy_plugin_tree",
]

#: Directory names ``pack`` leaves out (and so does a dev run: what runs is what ships).
_SKIPPED_DIRS = frozenset({"__pycache__", "tests"})
#: How often the peak-RSS sampler looks at the host while a request runs.
_RSS_INTERVAL_S = 0.002


@dataclass(frozen=True)
class Violation:
    """One violation the sandbox recorded: ``kind`` (``policy.forbidden``, ``budget.files``...)
    and the audit layer's ``detail`` (``"<class>: <what>, <file>:<line>"``)."""

    kind: str
    detail: str


@dataclass(frozen=True)
class RequestReport:
    """One request run by :meth:`DevSandbox.run`: answer or error, budgets used, violations."""

    request: Any
    ok: bool
    result: Any
    error: PlugvisorError | None
    elapsed: float  # seconds of wall time
    peak_rss: int  # bytes, the host's highest RSS sampled during the request
    baseline_rss: int  # bytes, the runtime's RSS before the plugin (the memory budget adds to it)
    files_opened: int | None  # None when the host died before reporting it
    db_queries: int
    violations: tuple[Violation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON shape printed by ``plugvisor --json dev run``."""
        return {
            "request": self.request,
            "ok": self.ok,
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "usage": {
                "elapsed_s": round(self.elapsed, 6),
                "peak_rss": self.peak_rss,
                "baseline_rss": self.baseline_rss,
                "files_opened": self.files_opened,
                "db_queries": self.db_queries,
            },
            "violations": [dataclasses.asdict(v) for v in self.violations],
        }


def budget_figure(code: str, profile: SecurityProfile) -> str:
    """The budget a ``budget.*`` code names, in plain words with the profile's figure."""
    figures = {
        "budget.time": f"request ran past {profile.max_execution_time:g} s (max_execution_time)",
        "budget.memory": f"request went over {_mib(profile.memory_limit)} (memory_limit)",
        "budget.files": f"request opened more than {profile.max_files} files (max_files)",
        "budget.db_queries": (
            f"request ran more than {profile.max_db_queries} ctx.db queries (max_db_queries)"
        ),
    }
    return figures.get(code, code)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def copy_plugin_tree(src: Path, dest: Path) -> None:
    """Copy what ``pack`` would take from ``src`` to ``dest`` (read-only, world-readable).

    Leaves out ``tests/`` at the top, ``__pycache__``, ``*.pyc`` and dot-files, and refuses
    symbolic links as the archive rules do.
    """

    def ignore(dirpath: str, names: list[str]) -> set[str]:
        top = Path(dirpath).resolve() == src.resolve()
        out = set()
        for n in names:
            full = os.path.join(dirpath, n)
            if os.path.islink(full):
                rel = os.path.relpath(full, src)
                raise ArchiveError("symlink", f"{rel!r} is a symbolic link", member=rel)
            skipped_dir = n == "__pycache__" or (top and n in _SKIPPED_DIRS)
            if n.startswith(".") or n.endswith(".pyc") or skipped_dir:
                out.add(n)
        return out

    shutil.copytree(src, dest, ignore=ignore)
    # The sandbox user reads the code and nothing may write it, the plugin least of all.
    for path in sorted(dest.rglob("*"), reverse=True):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    os.chmod(dest, 0o555)  # noqa: S103 -- read and traverse only


def _read_meta(plugin_dir: Path) -> PluginMeta:
    yaml_path = plugin_dir / "plugin.yaml"
    if not yaml_path.is_file():
        raise NotFoundError(
            "plugin_yaml", f"{plugin_dir} has no plugin.yaml: not a plugin directory",
            path=str(plugin_dir),
        )  # fmt: skip
    return parse_plugin_yaml(yaml_path.read_bytes())


class _PeakRss:
    """Samples one process's RSS with psutil in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._stop = threading.Event()
        try:
            self._proc: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._proc = None
        self._thread = threading.Thread(target=self._run, name="pv-dev-rss", daemon=True)

    def _sample(self) -> None:
        if self._proc is None:
            return
        try:
            self.peak = max(self.peak, self._proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._proc = None  # killed mid-request: keep the last peak

    def _run(self) -> None:
        while not self._stop.wait(_RSS_INTERVAL_S):
            self._sample()

    def __enter__(self) -> _PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sample()


class DevSandbox:
    """One unsigned plugin directory served by one sandboxed host, for authors and tests.

    ``profile`` overrides plugin.yaml's. A host killed by a budget breach is replaced on
    the next call, as the daemon would. Use as a context manager, or call :meth:`close`:
    it stops the host and the template and removes the throw-away state directory.
    """

    def __init__(
        self,
        plugin_dir: Path | str,
        profile: str | None = None,
        *,
        settings: Settings | None = None,
        config: Mapping[str, Any] | None = None,
        spawn_timeout: float = 15.0,
    ) -> None:
        self.plugin_dir = Path(plugin_dir).resolve()
        self.meta = _read_meta(self.plugin_dir)
        self.settings = settings or load_settings({})
        self.profile = load_profile(profile or self.meta.profile, self.settings)
        self.config = dict(self.meta.config if config is None else config)
        self.spawn_timeout = spawn_timeout
        self.state_dir: Path | None = None
        self.host: PluginHost | None = None
        self._spawner: Spawner | None = None
        self._violations: list[Violation] = []
        self._lock = threading.Lock()
        self._spec: HostSpec | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> DevSandbox:
        """Copy the code, start the template and spawn the host (runs ``setup()``)."""
        if self._spec is not None:
            return self
        # Under /tmp and 0o755, not pytest's tmp_path or a home directory: the sandbox
        # user must traverse every ancestor of the code it imports.
        root = Path(tempfile.mkdtemp(prefix=f"pv-dev-{self.meta.name}-", dir="/tmp"))
        os.chmod(root, 0o755)  # noqa: S103 -- traversable by the sandbox user on purpose
        self.state_dir = root
        try:
            layout = StateLayout(root).ensure()
            code_dir = layout.versions_dir / f"dev-{uuid.uuid4().hex}"
            copy_plugin_tree(self.plugin_dir, code_dir)
            layout.ensure_plugin_data(self.meta.name)
            self._spec = HostSpec(
                plugin=self.meta.name,
                version=str(self.meta.version),
                code_dir=code_dir,
                entrypoint=self.meta.entrypoint,
                profile=self.profile,
                data_dir=layout.plugin_files_dir(self.meta.name),
                db_path=layout.plugin_db(self.meta.name),
                config=self.config,
                max_response_bytes=self.settings.max_response_bytes,
            )
            settings = dataclasses.replace(self.settings, state_dir=root)
            self._spawner = Spawner(
                settings, security_log=SecurityLog(layout.security_log),
                on_violation=self._on_violation,
            )  # fmt: skip
            self._spawner.start(timeout=self.spawn_timeout)
            self._ensure_host()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the host (teardown) and the template; remove the state directory. Idempotent."""
        if self.host is not None:
            self.host.stop()
            self.host = None
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self.state_dir is not None:
            remove_tree(self.state_dir)  # the code copy is read-only
            self.state_dir = None
        self._spec = None

    def __enter__(self) -> DevSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- calls ---------------------------------------------------------------------------
    def call(self, request: Any, timeout: float | None = None) -> Any:
        """``handle(request)`` in the sandbox: the result, or the typed error it raised.

        ``BudgetExceeded`` (``budget.*``), ``PolicyViolation`` (``policy.forbidden``),
        ``PluginRuntimeError`` (``plugin.error``, ``plugin.crashed``, ``response.*``).
        """
        report = self.run(request, timeout)
        if report.error is not None:
            raise report.error
        return report.result

    def run(self, request: Any, timeout: float | None = None) -> RequestReport:
        """Run one request; never raises for a call error (it is in the report)."""
        if self._spec is None:
            self.start()
        with self._lock:
            host = self._ensure_host()
            self._violations.clear()
            result: Any = None
            error: PlugvisorError | None = None
            with _PeakRss(host.pid) as rss:
                try:
                    result = host.call(request, request_id=f"dev-{uuid.uuid4().hex[:8]}",
                                       timeout=timeout)  # fmt: skip
                except PlugvisorError as exc:
                    error = exc
            usage = host.last_usage
            return RequestReport(
                request=request,
                ok=error is None,
                result=result,
                error=error,
                elapsed=usage.elapsed if usage else 0.0,
                peak_rss=rss.peak,
                baseline_rss=host.baseline_rss,
                files_opened=usage.files_opened if usage else None,
                db_queries=usage.db_queries if usage else 0,
                violations=tuple(self._violations),
            )

    def health(self) -> bool:
        """``health()`` of the plugin (True when it defines none)."""
        with self._lock:
            return self._ensure_host().health()

    # ---- internals -----------------------------------------------------------------------
    def _ensure_host(self) -> PluginHost:
        if self.host is not None and self.host.alive:
            return self.host
        if self.host is not None:
            self.host.stop(grace=0.0)
        assert self._spawner is not None and self._spec is not None
        self.host = None
        self.host = self._spawner.spawn(self._spec, timeout=self.spawn_timeout)
        return self.host

    def _on_violation(self, plugin: str, version: str, kind: str, detail: str) -> None:
        self._violations.append(Violation(kind, detail))


# ---- dev check ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckReport:
    """``dev check``: the package checks and the scan, and the upload's verdict."""

    directory: str
    checks: tuple[Check, ...]
    findings: tuple[dict[str, Any], ...]
    blocking: int
    threshold: str
    profile: str
    verdict: str  # "approved" | "review" | "refused"
    package_error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when an upload would be approved at once."""
        return self.verdict == "approved"

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ok": self.ok,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
            "package_error": self.package_error,
            "findings": list(self.findings),
            "blocking": self.blocking,
            "threshold": self.threshold,
            "profile": self.profile,
        }


def check_directory(plugin_dir: Path | str, settings: Settings | None = None) -> CheckReport:
    """The package rules and the upload scan on a directory, as an upload would judge them.

    The directory is packed with a throw-away key (``pack`` refuses what extraction
    would: too many files, too large, links, bad names, a bad plugin.yaml, an entrypoint
    outside the package), every :func:`check_archive` check is run on the archive, and the
    extracted tree is scanned under the plugin's profile. Verdict: ``refused`` (a package
    rule broken or the profile unknown), ``review`` (findings at or above
    ``scan_review_severity``) or ``approved``.
    """
    # Imported here: Bandit is a second of imports a dev run does not need.
    from plugvisor.scan.scanner import Severity, scan_tree  # noqa: PLC0415

    settings = settings or load_settings({})
    src = Path(plugin_dir).resolve()
    threshold = Severity.parse(settings.scan_review_severity)
    limits = ArchiveLimits.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="pv-check-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "throwaway.key"
        generate_keypair(key)
        pub = load_public_key(Path(f"{key}.pub"))
        try:
            archive = pack(src, key, tmp / "out", limits)
        except PlugvisorError as exc:
            check = Check("pack", False, str(exc), (exc.code,))
            return CheckReport(str(src), (check,), (), 0, str(threshold), "", "refused",
                               exc.to_dict())  # fmt: skip
        checks = tuple(check_archive(archive, [pub], limits))
        if not all(c.ok for c in checks):
            return CheckReport(str(src), checks, (), 0, str(threshold), "", "refused")
        package = extract_archive(archive, tmp / "tree", [pub], limits)
        try:
            profile = load_profile(package.meta.profile or settings.default_profile, settings)
        except PlugvisorError as exc:
            check = Check("profile", False, str(exc), (exc.code,))
            return CheckReport(str(src), (*checks, check), (), 0, str(threshold),
                               package.meta.profile, "refused", exc.to_dict())  # fmt: skip
        report = scan_tree(package.path, profile)
        remove_tree(package.path)  # sealed read-only: TemporaryDirectory could not remove it
    blocking = report.at_or_above(threshold)
    verdict = "review" if blocking else "approved"
    return CheckReport(
        str(src), (*checks, Check("profile", True, f"{profile.name}")),
        tuple(f.to_dict() for f in report.findings), len(blocking), str(threshold),
        profile.name, verdict,
    )  # fmt: skip
