"""The registry's records: what a row of each aggregate reads back as.

Frozen dataclasses with one shared ``to_dict`` (times as ISO 8601, enums as their
values), plus the shapes the API and the CLI show (``summary``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from plugvisor.state.registry.codec import loads, ts, ts_req


class VersionStatus(enum.StrEnum):
    """Where one version of a plugin stands."""

    #: Refused by validation or review; kept for the record, never run.
    quarantined = "quarantined"
    #: Scan findings at or above the review severity: waits for an admin's decision.
    review = "review"
    #: Validated (and scanned clean or approved by an admin): may be activated.
    approved = "approved"
    #: The one version serving calls for its plugin.
    active = "active"
    #: Was active, replaced by another version; may be activated again by a rollback.
    retired = "retired"
    #: Withdrawn by an operator or by the violation tracker; never activated again as is.
    disabled = "disabled"


#: Statuses from which :meth:`Registry.activate` may make a version active.
ACTIVATABLE = frozenset({VersionStatus.approved, VersionStatus.retired, VersionStatus.active})


class JobStatus(enum.StrEnum):
    """Life of a queued job (SPEC §6: ``queued, running: <step>, succeeded, failed``)."""

    #: Recorded, waiting for a worker.
    queued = "queued"
    #: A worker is on it; ``step`` says where.
    running = "running"
    #: Done; ``result`` holds the outcome.
    succeeded = "succeeded"
    #: Stopped; ``error`` holds ``{code, message}``.
    failed = "failed"


class PluginMetaLike(Protocol):
    """What :meth:`Registry.add_version` reads from a parsed ``plugin.yaml`` (``PluginMeta``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> Any: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def requires(self) -> Mapping[str, Any]: ...


# ---- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginRecord:
    """One plugin: the highest version ever accepted and which version is live."""

    name: str
    highest_version: str
    active_version: str | None
    previous_version: str | None
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created: datetime
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)

    def summary(self, versions: Iterable[VersionRecord]) -> dict[str, Any]:
        """The plugin as the API and the CLI show it, with ``versions`` summarised."""
        return {
            "name": self.name,
            "active_version": self.active_version,
            "previous_version": self.previous_version,
            "highest_version": self.highest_version,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "disabled_at": None if self.disabled_at is None else self.disabled_at.isoformat(),
            "versions": [v.summary() for v in versions],
        }


@dataclass(frozen=True)
class VersionRecord:
    """One recorded version of a plugin, with its code digest and review trail."""

    plugin: str
    version: str
    status: VersionStatus
    digest: str
    keyid: str
    profile: str | None
    entrypoint: str
    meta: dict[str, Any]
    report: dict[str, Any] | None
    requires: dict[str, str]
    review_by: str | None
    review_reason: str | None
    review_at: datetime | None
    created: datetime
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)

    def summary(self) -> dict[str, Any]:
        """The version as the API and the CLI list it (no manifest, no scan report)."""
        review = None
        if self.review_by is not None:
            at = None if self.review_at is None else self.review_at.isoformat()
            review = {"by": self.review_by, "reason": self.review_reason, "at": at}
        return {
            "plugin": self.plugin,
            "version": self.version,
            "status": self.status.value,
            "digest": self.digest,
            "keyid": self.keyid,
            "profile": self.profile,
            "requires": dict(self.requires),
            "created": self.created.isoformat(),
            "review": review,
        }


@dataclass(frozen=True)
class JobRecord:
    """One queued job: what it does, where it is, and how it ended."""

    id: str
    kind: str
    status: JobStatus
    step: str | None
    steps: tuple[dict[str, Any], ...]
    params: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    idempotency_key: str | None
    created: datetime
    updated: datetime

    @property
    def display_status(self) -> str:
        """``queued``, ``running: <step>``, ``succeeded`` or ``failed: <reason>`` (SPEC §6)."""
        if self.status is JobStatus.running and self.step:
            return f"running: {self.step}"
        if self.status is JobStatus.failed and self.error:
            return f"failed: {self.error.get('code', '')}: {self.error.get('message', '')}"
        return self.status.value

    def to_dict(self) -> dict[str, Any]:
        out = record_dict(self)
        out["steps"] = list(self.steps)
        out["display_status"] = self.display_status
        return out


@dataclass(frozen=True)
class CommandRecord:
    """A control-plane command as first recorded, and its outcome once applied."""

    id: str
    host_id: str
    kind: str
    params: dict[str, Any]
    outcome: dict[str, Any] | None
    created: datetime

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)


@dataclass(frozen=True)
class EventRecord:
    """One state change of a plugin (activation, status change, disable, ...)."""

    id: int
    plugin: str
    kind: str
    from_version: str | None
    to_version: str | None
    outcome: str
    reason: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)


@dataclass(frozen=True)
class ActivationCheck:
    """What a swap needs to know before it spawns anything (:meth:`Registry.check_activation`).

    Read in one transaction and without the version's stored report (a scan report can be
    large): the daemon runs this on every swap.
    """

    plugin: PluginRecord
    version: str
    status: VersionStatus
    digest: str
    #: Every reason activating the version would break the dependency graph; [] if none.
    conflicts: list[str]


class Dependent(NamedTuple):
    """An active plugin whose active version requires another plugin within ``range``."""

    plugin: str
    version: str
    range: str


def record_dict(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(rec).items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, enum.Enum):
            out[key] = value.value
        else:
            out[key] = value
    return out


def plugin_record(row: Any) -> PluginRecord:
    return PluginRecord(
        name=row.name, highest_version=row.highest_version, active_version=row.active_version,
        previous_version=row.previous_version, disabled=bool(row.disabled),
        disabled_reason=row.disabled_reason, disabled_at=ts(row.disabled_at),
        created=ts_req(row.created), updated=ts_req(row.updated),
    )  # fmt: skip


def job_record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id, kind=row.kind, status=JobStatus(row.status), step=row.step,
        steps=tuple(loads(row.steps) or ()), params=loads(row.params) or {},
        result=loads(row.result), error=loads(row.error),
        idempotency_key=row.idempotency_key, created=ts_req(row.created),
        updated=ts_req(row.updated),
    )  # fmt: skip


def event_record(row: Any) -> EventRecord:
    return EventRecord(
        id=int(row.id), plugin=row.plugin, kind=row.kind, from_version=row.from_version,
        to_version=row.to_version, outcome=row.outcome, reason=row.reason, at=ts_req(row.at),
    )  # fmt: skip


@dataclass(frozen=True)
class HostRecord:
    """One daemon of the fleet, as its last heartbeat left it."""

    host_id: str
    started_at: datetime
    last_seen: datetime
    plugvisor_version: str
    pid: int
    #: The sandbox layers active on this host (``{layer: state}``).
    layers: dict[str, Any]
    #: Load figures of the last heartbeat (load average, plugin hosts, RSS).
    load: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)

    def is_down(self, now: datetime, down_after_s: float) -> bool:
        """No heartbeat for ``down_after_s`` seconds (or a clock that jumped back far)."""
        return abs((now - self.last_seen).total_seconds()) > down_after_s

    def summary(
        self, observed: Iterable[ObservedRecord], now: datetime, down_after_s: float
    ) -> dict[str, Any]:
        """The host as ``plugvisor hosts`` and ``GET /api/hosts`` show it, with what it runs."""
        return {
            "host_id": self.host_id,
            "status": "down" if self.is_down(now, down_after_s) else "up",
            "started_at": self.started_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "seconds_since_seen": round((now - self.last_seen).total_seconds(), 1),
            "plugvisor_version": self.plugvisor_version,
            "pid": self.pid,
            "layers": dict(self.layers),
            "load": dict(self.load),
            "plugins": {
                o.plugin: {"version": o.active_version, "health": o.health, "detail": o.detail}
                for o in observed
                if o.host_id == self.host_id
            },
        }


@dataclass(frozen=True)
class ObservedRecord:
    """What one host runs of one plugin (written by that host's daemon only)."""

    host_id: str
    plugin: str
    active_version: str | None
    #: ``serving``, ``down`` (no version running), ``disabled`` or ``failed``.
    health: str
    detail: str
    changed: datetime

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)


def host_record(row: Any) -> HostRecord:
    return HostRecord(
        host_id=row.host_id, started_at=ts_req(row.started_at), last_seen=ts_req(row.last_seen),
        plugvisor_version=row.plugvisor_version, pid=int(row.pid),
        layers=loads(row.layers) or {}, load=loads(row.load) or {},
    )  # fmt: skip


def observed_record(row: Any) -> ObservedRecord:
    return ObservedRecord(
        host_id=row.host_id, plugin=row.plugin, active_version=row.active_version,
        health=row.health, detail=row.detail, changed=ts_req(row.changed),
    )  # fmt: skip
