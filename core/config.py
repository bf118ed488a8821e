"""The one settings object: defaults, then a TOML file, then ``PLUGVISOR_*`` environment variables.

Each setting is documented exactly once, in its field's ``doc``; ``plugvisor config``
and the README's configuration table are generated from these fields. The file is
``PLUGVISOR_CONFIG`` if set, else ``<state_dir>/plugvisor.toml`` if it exists. An
environment variable is the setting's name upper-cased with a ``PLUGVISOR_`` prefix
(``PLUGVISOR_STATE_DIR``, ``PLUGVISOR_BROKER_URL``). Unknown keys and malformed
values are refused with a ``config.*`` error naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plugvisor.core.errors import ConfigError

__all__ = ["ENV_PREFIX", "HOST_ID", "Settings", "load_settings", "parse_size", "setting_docs"]

ENV_PREFIX = "PLUGVISOR_"

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value: str | int) -> int:
    """Parse ``64M``, ``10MiB``, ``4096`` into bytes (binary units)."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as 64M, 10MiB or 4096")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * _UNITS[unit]


def _s(default: Any, doc: str, kind: str = "") -> Any:
    return field(default=default, metadata={"doc": doc, "kind": kind})


@dataclass(frozen=True)
class Settings:
    """Every plugvisor setting. Build with :func:`load_settings`, never by hand in production."""

    state_dir: Path = _s(  # noqa: RUF009 -- Path is immutable
        Path("var"), "State directory: registry, version store, backups, quarantine, logs, run/."
    )
    database_url: str = _s(
        "",
        "Registry database (SQLAlchemy URL). Empty means SQLite (registry.db in the state "
        "directory); a fleet shares one PostgreSQL: postgresql://user:pass@host:5432/plugvisor "
        "(driver psycopg 3).",
    )
    host_id: str = _s(
        "",
        "This server's name in the fleet: 1-63 characters of [a-z0-9._-]. Empty means the "
        "machine's hostname, lower-cased.",
    )
    heartbeat_interval_s: float = _s(
        5.0,
        "Seconds between a daemon's heartbeats in the registry; each beat also records what "
        "this host runs and converges it to the fleet's desired versions.",
    )
    host_down_after_s: float = _s(
        30.0, "A host whose last heartbeat is older than this is shown as down."
    )
    broker_url: str = _s(
        "",
        "Message broker for jobs and the control plane. Empty means the embedded SQLite "
        "broker in the state directory; production uses amqp://user:pass@host:5672//.",
    )
    result_backend: str = _s(
        "", "Celery result backend. Empty means a SQLite database in the state directory."
    )
    broker_polling_interval: float = _s(
        0.05, "Seconds between polls of the embedded SQLite broker (lower = faster, more CPU)."
    )
    job_queue: str = _s(
        "plugvisor.jobs",
        "Broker queue of the job tasks (workers consume it). Distinct per deployment "
        "when several share one RabbitMQ vhost.",
    )
    log_level: str = _s("info", "Minimum level of structured log records (debug, info, ...).")
    log_format: str = _s("json", "json (one object per line, for shipping) or console.")
    max_unpacked_bytes: int = _s(10 * 1024**2, "Largest unpacked plugin archive.", "size")
    max_archive_files: int = _s(50, "Most files in a plugin archive besides MANIFEST.*.")
    max_compression_ratio: float = _s(
        100.0, "Highest unpacked/compressed ratio once ratio_threshold_bytes are unpacked."
    )
    ratio_threshold_bytes: int = _s(
        1024**2, "Unpacked bytes after which max_compression_ratio is enforced.", "size"
    )
    max_upload_bytes: int = _s(16 * 1024**2, "Largest upload the API accepts.", "size")
    max_response_bytes: int = _s(4 * 1024**2, "Largest JSON response of a plugin call.", "size")
    sandbox_user: str = _s(
        "nobody", "Unprivileged user plugin processes run as when the daemon runs as root."
    )
    default_profile: str = _s("default", "Profile used when plugin.yaml names none.")
    profiles_dir: str = _s(
        "", "Extra directory searched for profile YAML files before the bundled profiles/."
    )
    scan_review_severity: str = _s(
        "medium", "Scan findings at or above this severity send an upload to review."
    )
    violation_threshold: int = _s(5, "Violations within violation_window_s that disable a plugin.")
    violation_window_s: float = _s(60.0, "Sliding window for violation_threshold, in seconds.")
    crash_threshold: int = _s(5, "Host crashes within crash_window_s that disable a plugin.")
    crash_window_s: float = _s(60.0, "Sliding window for crash_threshold, in seconds.")
    restart_backoff_max_s: float = _s(10.0, "Longest wait between restarts of a crashed host.")
    swap_health_timeout_s: float = _s(10.0, "How long a new version gets for setup + health.")
    drain_timeout_s: float = _s(30.0, "How long in-flight calls on an old version may finish.")
    watch_window_s: float = _s(30.0, "After a swap, how long errors are watched for auto-rollback.")
    watch_error_threshold: int = _s(
        5, "Errors or violations of a new version within the watch window that roll it back."
    )
    plugin_concurrency: int = _s(8, "Concurrent calls served per plugin.")
    plugin_queue_limit: int = _s(64, "Calls waiting per plugin before callers get 'overloaded'.")
    host_idle_timeout_s: float = _s(
        60.0, "Extra plugin hosts (beyond one per plugin) idle this long are stopped."
    )
    call_timeout_s: float = _s(30.0, "Client-side timeout for one call through the daemon.")
    metrics_addr: str = _s("127.0.0.1", "Address of the daemon's Prometheus endpoint.")
    metrics_port: int = _s(9471, "Port of the daemon's Prometheus endpoint; 0 turns it off.")
    api_host: str = _s("127.0.0.1", "Address the API listens on.")
    api_port: int = _s(8470, "Port the API listens on.")
    api_url: str = _s("", "Where the CLI finds the API; empty means http://api_host:api_port.")
    api_token: str = _s("", "Bearer token the CLI sends to the API.")
    backup_retention: int = _s(5, "Backups kept per plugin (oldest removed first).")
    recovery_grace_s: float = _s(
        3600.0,
        "At daemon start, a stored version tree no registry row names is removed once it is "
        "this old (a worker may be about to record it); install debris in staging/ once it "
        "is older than a twelfth of it.",
    )
    job_time_limit_s: float = _s(300.0, "Hard time limit of one worker task.")

    # ---- derived -----------------------------------------------------------------
    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def host(self) -> str:
        """The effective ``host_id`` (the hostname when the setting is empty)."""
        return self.host_id or socket.gethostname().lower()

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some settings replaced (values are coerced and checked)."""
        data = dataclasses.asdict(self)
        data.update(changes)
        return _build(data, source="override")


def setting_docs() -> list[tuple[str, str, str, str]]:
    """``(name, env var, default, doc)`` for every setting, for docs and ``--help``."""
    return [
        (f.name, ENV_PREFIX + f.name.upper(), str(f.default), f.metadata["doc"])
        for f in fields(Settings)
    ]


def _coerce(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    kind = f.metadata.get("kind", "")
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "size":
            return parse_size(raw if isinstance(raw, int) else str(raw))
        if typ == "Path":
            return Path(str(raw))
        if typ == "int":
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ == "str":
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            return raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "invalid_value",
            f"setting {f.name} from {source}: {exc}",
            setting=f.name,
            source=source,
        ) from exc
    raise ConfigError("invalid_value", f"setting {f.name} has unsupported type {typ}")


def _build(values: Mapping[str, Any], source: str) -> Settings:
    known = {f.name: f for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, raw in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(
                "unknown_setting", f"unknown setting {key!r} in {source}", setting=key
            )
        out[key] = _coerce(f, raw, source)
    settings = Settings(**out)
    _check(settings)
    return settings


#: What a host id may be: it names a RabbitMQ queue and a registry row, and shows in logs.
HOST_ID = re.compile(r"^[a-z0-9._-]{1,63}$")


def _check(s: Settings) -> None:
    positive = (
        "max_unpacked_bytes", "max_archive_files", "max_compression_ratio",
        "max_response_bytes", "plugin_concurrency", "violation_threshold", "crash_threshold",
        "heartbeat_interval_s", "host_down_after_s",
    )  # fmt: skip
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError("invalid_value", f"setting {name} must be > 0", setting=name)
    if not HOST_ID.match(s.host):
        source = "setting host_id" if s.host_id else "host_id (empty: the hostname)"
        raise ConfigError("invalid_value", f"{source} {s.host!r} must be 1-63 characters of "
                          "[a-z0-9._-]", setting="host_id")  # fmt: skip
    if s.log_format not in ("json", "console"):
        raise ConfigError("invalid_value", "setting log_format must be json or console",
                          setting="log_format")  # fmt: skip
    if s.scan_review_severity.lower() not in ("low", "medium", "high"):
        raise ConfigError("invalid_value", "setting scan_review_severity must be low, medium "
                          "or high", setting="scan_review_severity")  # fmt: skip


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults ← config file ← ``PLUGVISOR_*`` environment ← explicit ``overrides``."""
    env = os.environ if env is None else env
    known = {f.name for f in fields(Settings)}
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in known
    }
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    state_dir = Path(explicit.get("state_dir") or from_env.get("state_dir") or "var")
    config_path = env.get(ENV_PREFIX + "CONFIG")
    path = Path(config_path) if config_path else state_dir / "plugvisor.toml"
    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("invalid_file", f"{path}: {exc}", path=str(path)) from exc
        _build(merged, source=str(path))  # names the file in any error
    elif config_path:
        raise ConfigError("missing_file", f"config file {path} does not exist", path=str(path))
    merged.update(from_env)
    merged.update(explicit)
    return _build(merged, source="settings")
