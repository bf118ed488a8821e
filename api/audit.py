"""The security report of one plugin (``GET /api/plugins/audit?name=``), built from state.

Signature: the stored MANIFEST.sig is verified again, over the stored MANIFEST.json, with
the keys trusted now (``VersionStore.verify_signature``, the check rollback uses); the
report says which key signed it and, on failure, the rule broken. Integrity: the stored
tree is re-hashed against its MANIFEST.json (``VersionStore.verify``). Findings come
from the version's scan report in the registry; violations from the hash-chained
security log, whose chain is verified on every report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.log import get_logger
from plugvisor.core.manifest import parse_manifest
from plugvisor.core.profile import load_profile
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionRecord
from plugvisor.state.security_log import verify_log
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore

__all__ = ["MAX_VIOLATIONS", "build_audit_report", "read_security_log", "verify_security_log"]

_log = get_logger(__name__)
#: Newest violations included in one report.
MAX_VIOLATIONS = 200
# Only the log's tail is read for the violation list; the chain check reads it all.
_TAIL_BYTES = 2 * 1024 * 1024


def build_audit_report(
    registry: Registry, layout: StateLayout, settings: Settings, name: str
) -> dict[str, Any]:
    """The report for the active version of ``name`` (else its newest version)."""
    plugin = registry.get_plugin(name)  # NotFoundError -> 404
    versions = registry.list_versions(name)
    target: VersionRecord | None = None
    if plugin.active_version is not None:
        target = next((v for v in versions if v.version == plugin.active_version), None)
    if target is None and versions:
        target = versions[-1]
    report: dict[str, Any] = {
        "name": name,
        "version": target.version if target else None,
        "status": target.status.value if target else None,
        "signature": None,
        "integrity": None,
        "profile": None,
        "findings": [],
        "scan": None,
        "violations": read_security_log(layout.security_log, plugin=name),
        "security_log": verify_security_log(layout.security_log),
    }
    # Per host of a fleet: the version each runs, and which is behind or down.
    report["hosts"] = registry.plugin_summary(plugin, down_after_s=settings.host_down_after_s)[
        "hosts"
    ]
    if target is None:
        return report
    report["signature"] = _signature(layout, target)
    report["integrity"] = _integrity(layout, target)
    report["profile"] = _profile(target.profile or settings.default_profile, settings)
    scan = _scan_of(target.report)
    report["findings"] = [_finding(f) for f in scan.get("findings", []) if isinstance(f, dict)]
    report["scan"] = {k: v for k, v in scan.items() if k != "findings"} or None
    if target.review_by is not None:
        report["review"] = {
            "by": target.review_by,
            "reason": target.review_reason,
            "at": target.review_at.isoformat() if target.review_at else None,
        }
    return report


def _signature(layout: StateLayout, target: VersionRecord) -> dict[str, Any]:
    """The stored signature re-verified with the keys trusted now."""
    trust = TrustStore(layout.root)
    out: dict[str, Any] = {
        "keyid": target.keyid,
        "key_trusted_now": target.keyid in {kid for kid, _ in trust.list()},
    }
    try:
        VersionStore(layout).verify_signature(
            str(target.digest), trust.load_all(), expected_keyid=target.keyid
        )
    except PlugvisorError as err:  # SignatureError, or StateError for a damaged tree
        return {"status": "failed", **out, "error": {"code": err.code, "message": err.message}}
    return {"status": "verified", **out}


def _scan_of(report: dict[str, Any] | None) -> dict[str, Any]:
    """The scan part of a version's report (stored flat or under ``scan``)."""
    if not report:
        return {}
    scan = report.get("scan")
    if isinstance(scan, dict):
        return scan
    return report if "findings" in report else {}


def _finding(raw: dict[str, Any]) -> dict[str, Any]:
    cwe = raw.get("cwe")
    return {
        "rule": str(raw.get("rule", "")),
        "name": raw.get("name"),
        "severity": str(raw.get("severity", "")),
        "file": raw.get("file"),
        "line": raw.get("line"),
        "cwe": None if cwe in (None, 0, "") else f"CWE-{cwe}" if isinstance(cwe, int) else str(cwe),
        "owasp": raw.get("owasp"),
        "message": raw.get("message"),
        "tool": raw.get("tool"),
    }


def _integrity(layout: StateLayout, version: VersionRecord) -> dict[str, Any]:

    store = VersionStore(layout)
    try:
        root = store.path(version.digest)
        if not root.is_dir():
            return {"ok": False, "digest": version.digest, "problems": [f"{root} is missing"]}
        manifest_file = root / "MANIFEST.json"
        if not manifest_file.is_file():
            return {"ok": None, "digest": version.digest, "problems": ["MANIFEST.json not kept"]}
        problems = store.verify(version.digest, parse_manifest(manifest_file.read_bytes()))
    except (PlugvisorError, OSError) as exc:
        return {"ok": False, "digest": version.digest, "problems": [str(exc)]}
    return {"ok": not problems, "digest": version.digest, "problems": problems}


def _profile(name: str, settings: Settings) -> dict[str, Any]:
    try:
        p = load_profile(name, settings)
    except PlugvisorError as err:
        return {"name": name, "error": err.to_dict()}
    return {
        "name": p.name,
        "memory_limit": p.memory_limit,
        "max_execution_time": p.max_execution_time,
        "max_files": p.max_files,
        "max_db_queries": p.max_db_queries,
        "forbidden_operations": sorted(p.forbidden_operations),
        "allowed_functions": list(p.allowed_functions),
    }


def read_security_log(
    path: Path, plugin: str | None = None, limit: int = MAX_VIOLATIONS
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries of the security log (of ``plugin`` when given), newest last."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        _log.warning("security_log_unreadable", path=str(path), error=str(exc))
        return []
    lines = data.split(b"\n")
    if len(data) < size:
        lines = lines[1:]  # the first line of a tail may be cut
    out: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # verify_security_log reports a damaged line precisely
        if isinstance(entry, dict) and (plugin is None or entry.get("plugin") == plugin):
            out.append({k: v for k, v in entry.items() if k not in ("prev", "hash")})
    return out[-limit:]


def verify_security_log(path: Path) -> dict[str, Any]:
    """The hash chain's status: ``{ok, lines, first_bad_line, reason}``."""
    report = verify_log(path)
    return {
        "ok": report.ok,
        "lines": report.lines,
        "first_bad_line": report.first_bad_line,
        "reason": report.reason or None,
    }
