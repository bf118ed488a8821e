"""The sandboxed plugin host: a library the daemon, workers' trials and ``dev run`` share.

One process per plugin version, forked from a pre-imported template (zygote) and locked
down in layers (session, fds/env, rlimits, network namespace, privilege drop,
no-new-privs, Landlock, seccomp, in-process policy), watched by a psutil monitor. See
``docs/ARCHITECTURE.md`` for the interface and ``host.py`` for the call path.
"""

from __future__ import annotations

from plugvisor.daemon.sandbox.host import (
    CallOutcome,
    HostSpec,
    PluginHost,
    RequestUsage,
    Spawner,
)
from plugvisor.daemon.sandbox.layers import LayerReport, LayerStatus, detect_layers

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
