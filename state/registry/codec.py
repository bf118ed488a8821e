"""How registry values are stored: ISO 8601 UTC text for times, compact sorted JSON for
structures. One place, so every aggregate reads back what another wrote.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

UNSET: Any = object()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def ts_req(value: str) -> datetime:
    return datetime.fromisoformat(value)
