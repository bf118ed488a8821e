"""Stand-in for ``policy.py`` when it is missing: imports the plugin, enforces nothing.

Used only so the runtime can run without the in-process layer; the host reports the
``policy`` layer as inactive (a warning at every spawn), and the OS layers still apply.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["FallbackPolicy", "install_fallback_policy"]


class FallbackPolicy:
    """Same interface as the real PolicyHandle; counts nothing."""

    def __init__(self, plugin_root: str) -> None:
        self.plugin_root = plugin_root
        self.files_opened = 0

    def begin_request(self, request_id: str) -> None:
        self.files_opened = 0

    def end_request(self) -> None:
        return None

    def load_plugin(self, entrypoint: str) -> object:
        module, _, attr = entrypoint.partition(":")
        if self.plugin_root not in sys.path:
            sys.path.insert(0, self.plugin_root)
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod


def install_fallback_policy(
    profile: Any,
    plugin_root: str,
    report: Callable[[str, str], None],
    *,
    data_dir: str | None = None,
) -> FallbackPolicy:
    """Signature of ``policy.install_policy``."""
    return FallbackPolicy(plugin_root)
