"""The sandboxed plugin host: a library the daemon, workers' trials and ``dev run`` share.

One process per plugin version, forked from a pre-imported template (zygote) and locked
down in layers (session, fds/env, rlimits, network namespace, privilege drop,
no-new-privs, Landlock, seccomp, in-process policy), watched by a psutil monitor. See
``docs/ARCHITECTURE.md`` for the interface and ``host.py`` for the call path.

The names below are imported on first use (PEP 562): the template
(``python -I -m plugvisor.sandbox.template``) imports this package too, and every
plugin process forked from it would otherwise carry the parent side (``host.py`` with
psutil, structlog and the settings) in memory and within reach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugvisor.sandbox.host import (
        CallOutcome,
        HostSpec,
        PluginHost,
        RequestUsage,
        Spawner,
    )
    from plugvisor.sandbox.layers import LayerReport, LayerStatus, detect_layers

__all__ = [
    "CallOutcome",
    "HostSpec",
    "LayerReport",
    "LayerStatus",
    "PluginHost",
    "RequestUsage",
    "Spawner",
    "detect_layers",
]

_HOME = {
    "CallOutcome": "host",
    "HostSpec": "host",
    "PluginHost": "host",
    "RequestUsage": "host",
    "Spawner": "host",
    "LayerReport": "layers",
    "LayerStatus": "layers",
    "detect_layers": "layers",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
