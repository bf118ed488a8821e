"""Plugins and versions: monotonic versions, one active version, disable, dependencies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from plugvisor.core.errors import (
    ConflictError,
    NotFoundError,
    StateError,
    VersionError,
)
from plugvisor.core.semver import Version, parse_range, parse_version
from plugvisor.state.registry.codec import dumps, loads, ts, ts_req, utc_now
from plugvisor.state.registry.db import insert_first
from plugvisor.state.registry.events import Events
from plugvisor.state.registry.records import (
    ACTIVATABLE,
    ActivationCheck,
    Dependent,
    PluginMetaLike,
    PluginRecord,
    VersionRecord,
    VersionStatus,
    plugin_record,
)
from plugvisor.state.registry.schema import (
    Q,
    artefacts_t,
    plugins_t,
    requires_t,
    versions_t,
)


class Versions(Events):
    """Plugins, their versions, activation and the dependency graph."""

    # ---- plugins and versions --------------------------------------------------------------
    def add_version(
        self,
        meta: PluginMetaLike,
        digest: str,
        keyid: str,
        status: VersionStatus = VersionStatus.approved,
        report: Mapping[str, Any] | None = None,
        *,
        archive: bytes | None = None,
    ) -> VersionRecord:
        """Record a new version; refuse one not higher than every version ever recorded.

        ``archive``: the signed archive the version came from, stored in the shared
        artefact store in the same transaction (other hosts fetch it from there).

        The monotonic check and the insert share one transaction (SQLite write lock taken
        at BEGIN; ``FOR UPDATE`` on the plugin row elsewhere), so two concurrent uploads
        cannot both pass it. Raises ``VersionError("not_newer")`` naming both versions.
        """
        status = VersionStatus(status)
        if status is VersionStatus.active:
            raise StateError(
                "invalid_status", "a new version cannot be added as active; use activate()"
            )
        name = meta.name
        version_text = str(meta.version)
        new = parse_version(version_text)
        requires = {dep: _range_text(rng) for dep, rng in dict(meta.requires).items()}
        for text in requires.values():
            parse_range(text)  # refuse a malformed edge before it is stored
        meta_json = _meta_dict(meta)

        def run(conn: Connection) -> VersionRecord:
            now = utc_now()
            row = conn.execute(
                sa.select(plugins_t.c.highest_version)
                .where(plugins_t.c.name == name)
                .with_for_update()
            ).first()
            if row is None:
                insert_first(
                    conn,
                    sa.insert(plugins_t).values(
                        name=name, highest_version=version_text, active_version=None,
                        previous_version=None, disabled=False, disabled_reason=None,
                        disabled_at=None, created=now, updated=now,
                    ),
                )  # fmt: skip
            else:
                if not new > parse_version(row.highest_version):
                    raise _not_newer(name, version_text, row.highest_version)
                conn.execute(
                    sa.update(plugins_t)
                    .where(plugins_t.c.name == name)
                    .values(highest_version=version_text, updated=now)
                )
            try:
                conn.execute(
                    sa.insert(versions_t).values(
                        plugin=name, version=version_text, status=status.value, digest=digest,
                        keyid=keyid, profile=meta.profile, entrypoint=meta.entrypoint,
                        meta=dumps(meta_json),
                        report=None if report is None else dumps(dict(report)),
                        review_by=None, review_reason=None, review_at=None,
                        created=now, updated=now,
                    )
                )  # fmt: skip
            except IntegrityError as exc:
                raise ConflictError(
                    "duplicate_digest",
                    f"digest {digest} is already recorded for another version",
                    digest=digest,
                ) from exc
            if archive is not None:
                conn.execute(
                    sa.insert(artefacts_t).values(
                        digest=digest, archive=archive, size=len(archive), created=now
                    )
                )
            for dep, text in requires.items():
                conn.execute(
                    sa.insert(requires_t).values(
                        plugin=name, version=version_text, requires_name=dep, range=text
                    )
                )
            self._event(conn, name, "added", None, version_text, status.value, "")
            return self._version_in(conn, name, version_text)

        return self._write(run)

    def check_newer(self, name: str, version: str) -> None:
        """Raise ``VersionError("not_newer")`` unless ``version`` would pass :meth:`add_version`.

        Advisory (a read): lets an installer refuse before storing anything; the
        authoritative check is the one inside :meth:`add_version`'s transaction.
        """
        plugin = self.find_plugin(name)
        if plugin is not None and not parse_version(version) > parse_version(
            plugin.highest_version
        ):
            raise _not_newer(name, version, plugin.highest_version)

    def get_plugin(self, name: str) -> PluginRecord:
        """The plugin's record; ``NotFoundError("plugin")`` when it was never recorded."""
        with self._read() as conn:
            return self._plugin_in(conn, name)

    def find_plugin(self, name: str) -> PluginRecord | None:
        """The plugin's record, or None."""
        with self._read() as conn:
            row = conn.execute(Q.plugin, {"b_name": name}).first()
            return None if row is None else plugin_record(row)

    def list_plugins(self) -> list[PluginRecord]:
        """Every plugin, by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(plugins_t).order_by(plugins_t.c.name)).all()
            return [plugin_record(r) for r in rows]

    def get_version(self, name: str, version: str) -> VersionRecord:
        """One version; ``NotFoundError("version")`` when absent."""
        with self._read() as conn:
            return self._version_in(conn, name, str(version))

    def find_digest(self, digest: str) -> VersionRecord | None:
        """The version whose code has ``digest``, or None (for the version store's GC)."""
        with self._read() as conn:
            row = conn.execute(sa.select(versions_t).where(versions_t.c.digest == digest)).first()
            if row is None:
                return None
            return self._version_in(conn, row.plugin, row.version)

    def list_versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, lowest SemVer precedence first."""
        with self._read() as conn:
            rows = conn.execute(sa.select(versions_t).where(versions_t.c.plugin == name)).all()
            records = [self._to_version(conn, r) for r in rows]
        return sorted(records, key=lambda r: parse_version(r.version))

    def active_versions(self) -> list[VersionRecord]:
        """The active version of every plugin that has one, by plugin name."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(versions_t)
                .where(versions_t.c.status == VersionStatus.active.value)
                .order_by(versions_t.c.plugin)
            ).all()
            return [self._to_version(conn, r) for r in rows]

    def activate(self, name: str, version: str) -> tuple[VersionRecord | None, VersionRecord]:
        """Make ``version`` the one active version of ``name``; return ``(old, new)``.

        One transaction: the old active version becomes ``retired`` and is remembered as
        ``previous_version``. Activating the version already active changes nothing and
        returns ``(new, new)``. Only approved, retired (a rollback) or active versions
        may be activated, and not while the plugin is disabled.
        """
        version = str(version)

        def run(conn: Connection) -> tuple[VersionRecord | None, VersionRecord]:
            changed, old = self._switch_in(conn, name, version)
            new = self._version_in(conn, name, version)
            if not changed:
                return new, new
            return (self._version_in(conn, name, old) if old else None), new

        return self._write(run)

    def switch_active(self, name: str, version: str) -> str | None:
        """:meth:`activate` for the daemon's swap path: returns the version active before
        (``version`` itself when it already was), without loading either record."""
        version = str(version)
        return self._write(lambda conn: self._switch_in(conn, name, version)[1])

    def _switch_in(self, conn: Connection, name: str, version: str) -> tuple[bool, str | None]:
        """The activation inside ``conn``'s write transaction: ``(changed, old version)``."""
        plugin = self._plugin_in(conn, name, lock=True)
        row = conn.execute(Q.version_check, {"b_plugin": name, "b_version": version}).first()
        if row is None:
            raise _no_version(name, version)
        status = VersionStatus(row.status)
        if status is VersionStatus.active:
            return False, version
        if status not in ACTIVATABLE:
            raise ConflictError(
                "not_activatable",
                f"{name} {version} is {status.value}; only approved or retired "
                "versions can be activated",
                plugin=name, version=version, status=status.value,
            )  # fmt: skip
        if plugin.disabled:
            raise ConflictError(
                "plugin_disabled",
                f"{name} is disabled ({plugin.disabled_reason}); enable it first",
                plugin=name,
            )
        now = utc_now()
        current = conn.execute(
            Q.active_of, {"b_plugin": name, "b_status": VersionStatus.active.value}
        ).first()
        old = current.version if current is not None else None
        if old is not None:
            # Retire first: the partial unique index refuses two active rows at once.
            conn.execute(
                Q.set_version_status,
                {"b_plugin": name, "b_version": old, "b_status": VersionStatus.retired.value,
                 "b_now": now},
            )  # fmt: skip
        conn.execute(
            Q.set_version_status,
            {"b_plugin": name, "b_version": version, "b_status": VersionStatus.active.value,
             "b_now": now},
        )  # fmt: skip
        conn.execute(
            Q.set_active,
            {"b_name": name, "b_active": version, "b_previous": old or plugin.previous_version,
             "b_now": now},
        )  # fmt: skip
        self._event(conn, name, "activated", old, version, "ok", "")
        return True, old

    def set_status(
        self,
        name: str,
        version: str,
        status: VersionStatus,
        *,
        by: str | None = None,
        reason: str | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> VersionRecord:
        """Change one version's status (review decisions, disabling a version, ...).

        ``by``/``reason`` are recorded as the review decision (who, why, when) when given;
        ``report`` replaces the stored scan/audit report. ``active`` is refused: use
        :meth:`activate`, which keeps the one-active invariant. Taking the active version
        to another status leaves the plugin with no active version.
        """
        status = VersionStatus(status)
        version = str(version)
        if status is VersionStatus.active:
            raise StateError("invalid_status", "use activate() to make a version active")

        def run(conn: Connection) -> VersionRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            current = self._version_in(conn, name, version)
            now = utc_now()
            values: dict[str, Any] = {"status": status.value, "updated": now}
            if by is not None or reason is not None:
                values.update(review_by=by, review_reason=reason, review_at=now)
            if report is not None:
                values["report"] = dumps(dict(report))
            conn.execute(
                sa.update(versions_t)
                .where(versions_t.c.plugin == name, versions_t.c.version == version)
                .values(**values)
            )
            if plugin.active_version == version:
                conn.execute(
                    sa.update(plugins_t)
                    .where(plugins_t.c.name == name)
                    .values(active_version=None, previous_version=version, updated=now)
                )
            change = f"{current.status.value} -> {status.value}"
            self._event(
                conn, name, "status", version, version, status.value,
                f"{change}: {reason}" if reason else change,
            )  # fmt: skip
            return self._version_in(conn, name, version)

        return self._write(run)

    def set_report(self, name: str, version: str, report: Mapping[str, Any]) -> VersionRecord:
        """Replace the stored scan/audit report of one version without changing its status."""
        version = str(version)

        def run(conn: Connection) -> VersionRecord:
            self._version_in(conn, name, version)
            conn.execute(
                sa.update(versions_t)
                .where(versions_t.c.plugin == name, versions_t.c.version == version)
                .values(report=dumps(dict(report)), updated=utc_now())
            )
            return self._version_in(conn, name, version)

        return self._write(run)

    def disable(self, name: str, reason: str) -> PluginRecord:
        """Mark the plugin disabled with a reason (its active version stays recorded)."""

        def run(conn: Connection) -> PluginRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            now = utc_now()
            conn.execute(
                sa.update(plugins_t)
                .where(plugins_t.c.name == name)
                .values(disabled=True, disabled_reason=reason, disabled_at=now, updated=now)
            )
            self._event(
                conn, name, "disabled", plugin.active_version, plugin.active_version, "ok",
                reason,
            )  # fmt: skip
            return self._plugin_in(conn, name)

        return self._write(run)

    def enable(self, name: str) -> PluginRecord:
        """Clear the disabled flag and its reason."""

        def run(conn: Connection) -> PluginRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            conn.execute(
                sa.update(plugins_t)
                .where(plugins_t.c.name == name)
                .values(disabled=False, disabled_reason=None, disabled_at=None, updated=utc_now())
            )
            self._event(
                conn, name, "enabled", plugin.active_version, plugin.active_version, "ok", ""
            )
            return self._plugin_in(conn, name)

        return self._write(run)

    # ---- dependencies ----------------------------------------------------------------------
    def dependents(self, name: str) -> list[Dependent]:
        """Plugins whose active version requires ``name``: ``(plugin, version, range)``.

        A disabled plugin still counts: enabling it brings that version back.
        """
        with self._read() as conn:
            return self._dependents_in(conn, name)

    def check_dependencies(self, target: PluginMetaLike | tuple[str, str]) -> list[str]:
        """Every reason activating ``target`` would break the dependency graph; [] if none.

        ``target`` is a parsed ``plugin.yaml`` or a recorded ``(name, version)``. Checks
        (SPEC §6 reload): each ``requires`` entry names a plugin with an enabled active
        version inside the range, and every active dependent's range admits the version.
        """
        with self._read() as conn:
            if isinstance(target, tuple):
                name, version_text = target[0], str(target[1])
                self._version_in(conn, name, version_text)  # not found: NotFoundError
                requires = self._requires_in(conn, name, version_text)
            else:
                name, version_text = target.name, str(target.version)
                requires = {d: _range_text(r) for d, r in dict(target.requires).items()}
            return self._conflicts_in(conn, name, version_text, requires)

    def check_activation(self, name: str, version: str) -> ActivationCheck:
        """The plugin, the version's status and digest, and its dependency conflicts, read in
        one transaction; ``NotFoundError`` for an unknown plugin or version."""
        version = str(version)
        with self._read() as conn:
            plugin = self._plugin_in(conn, name)
            row = conn.execute(Q.version_check, {"b_plugin": name, "b_version": version}).first()
            if row is None:
                raise _no_version(name, version)
            conflicts = self._conflicts_in(
                conn, name, version, self._requires_in(conn, name, version)
            )
        return ActivationCheck(
            plugin=plugin, version=version, status=VersionStatus(row.status),
            digest=str(row.digest), conflicts=conflicts,
        )  # fmt: skip

    def _conflicts_in(
        self, conn: Connection, name: str, version_text: str, requires: Mapping[str, str]
    ) -> list[str]:
        version = parse_version(version_text)
        conflicts: list[str] = []
        for dep, text in sorted(requires.items()):
            if dep == name:
                continue
            row = conn.execute(Q.plugin, {"b_name": dep}).first()
            if row is None or row.active_version is None:
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, but {dep} has no active version"
                )
                continue
            if not _admits(text, parse_version(row.active_version)):
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, "
                    f"but {dep} {row.active_version} is active"
                )
            elif row.disabled:
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, "
                    f"but {dep} is disabled ({row.disabled_reason})"
                )
        for user in self._dependents_in(conn, name):
            if user.plugin == name:
                continue
            if not _admits(user.range, version):
                conflicts.append(
                    f"{user.plugin} {user.version} requires {name} {user.range}, "
                    f"which does not admit {name} {version_text}"
                )
        return conflicts

    def _plugin_in(self, conn: Connection, name: str, lock: bool = False) -> PluginRecord:
        row = conn.execute(Q.plugin_locked if lock else Q.plugin, {"b_name": name}).first()
        if row is None:
            raise NotFoundError("plugin", f"no plugin named {name!r}", plugin=name)
        return plugin_record(row)

    def _version_in(self, conn: Connection, name: str, version: str) -> VersionRecord:
        row = conn.execute(Q.version, {"b_plugin": name, "b_version": version}).first()
        if row is None:
            raise _no_version(name, version)
        return self._to_version(conn, row)

    def _requires_in(self, conn: Connection, name: str, version: str) -> dict[str, str]:
        edges = conn.execute(Q.requires, {"b_plugin": name, "b_version": version}).all()
        return {e.requires_name: e.range for e in edges}

    def _to_version(self, conn: Connection, row: Any) -> VersionRecord:
        return VersionRecord(
            plugin=row.plugin, version=row.version, status=VersionStatus(row.status),
            digest=row.digest, keyid=row.keyid, profile=row.profile, entrypoint=row.entrypoint,
            meta=loads(row.meta), report=loads(row.report),
            requires=self._requires_in(conn, row.plugin, row.version),
            review_by=row.review_by, review_reason=row.review_reason,
            review_at=ts(row.review_at), created=ts_req(row.created),
            updated=ts_req(row.updated),
        )  # fmt: skip

    def _dependents_in(self, conn: Connection, name: str) -> list[Dependent]:
        rows = conn.execute(Q.dependents, {"b_name": name}).all()
        return [Dependent(r.name, r.active_version, r.range) for r in rows]


def _no_version(name: str, version: str) -> NotFoundError:
    return NotFoundError(
        "version", f"plugin {name!r} has no version {version!r}", plugin=name, version=version
    )


def _not_newer(name: str, version: str, highest: str) -> VersionError:
    return VersionError(
        "not_newer",
        f"{name} {version} is not newer than {highest}, the highest version of {name} ever "
        "accepted; an equal or lower version is refused as a rollback attack (roll back "
        "through the backups)",
        plugin=name, version=version, highest=highest,
    )  # fmt: skip


def _range_text(rng: Any) -> str:
    """The canonical text of a requirement range (a ``VersionRange`` or a string)."""
    return str(rng).strip()


def _admits(range_text: str, version: Version) -> bool:
    return bool(parse_range(range_text).contains(version))


def _meta_dict(meta: PluginMetaLike) -> dict[str, Any]:
    """A JSON-compatible copy of the parsed plugin.yaml, requirement ranges as text."""
    to_dict = getattr(meta, "to_dict", None)
    out: dict[str, Any]
    if callable(to_dict):
        out = dict(to_dict())
    else:
        out = {
            "name": meta.name,
            "version": str(meta.version),
            "entrypoint": meta.entrypoint,
            "profile": meta.profile,
            "requires": {d: _range_text(r) for d, r in dict(meta.requires).items()},
        }
    # Round-trip now so YAML scalars json cannot hold (dates) become text once, here.
    return dict(json.loads(json.dumps(out, sort_keys=True, default=str)))
