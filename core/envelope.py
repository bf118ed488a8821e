"""The envelope every plugin call answers with, built in one place.

``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code", "message"[,
"details"]}}`` as compact JSON bytes: the plugin host builds it, the daemon passes it
through untouched (or builds one for its own refusals), the client parses it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["error_envelope", "ok_envelope"]


def ok_envelope(result_json: bytes) -> bytes:
    """``{"ok":true,"result":<result_json>}`` built by concatenation, not re-encoding."""
    return b'{"ok":true,"result":' + result_json + b"}"


def error_envelope(code: str, message: str, **details: Any) -> bytes:
    """``{"ok":false,"error":{"code","message"[,"details"]}}`` as compact JSON bytes."""
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    # default=str: details come from exceptions a plugin may have built.
    return json.dumps({"ok": False, "error": err}, separators=(",", ":"), default=str).encode()
