"""The status of the sandbox's layers: what the kernel offers and what a host applied.

Plain data, shared by the probe (:mod:`plugvisor.sandbox.layers`, daemon side) and the
lock-down (:mod:`plugvisor.sandbox.lockdown`, inside the child), so neither imports the
other's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["LAYER_NAMES", "LayerReport", "LayerStatus"]

#: Every layer, in the order the child applies them.
LAYER_NAMES = (
    "process",
    "session",
    "fds_env",
    "rlimits",
    "netns",
    "privileges",
    "no_new_privs",
    "landlock",
    "seccomp",
    "policy",
    "monitor",
)


@dataclass(frozen=True)
class LayerStatus:
    """One layer: does the system offer it, is it in force, and why not when it is not."""

    name: str
    available: bool
    active: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "active": self.active, "reason": self.reason}


@dataclass(frozen=True)
class LayerReport:
    """Every layer's status, in :data:`LAYER_NAMES` order."""

    layers: tuple[LayerStatus, ...]

    def __getitem__(self, name: str) -> LayerStatus:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __iter__(self) -> Iterator[LayerStatus]:
        return iter(self.layers)

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self.layers)

    @property
    def inactive(self) -> tuple[LayerStatus, ...]:
        """Layers not in force (a warning each; never a silent gap)."""
        return tuple(layer for layer in self.layers if not layer.active)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {layer.name: layer.to_dict() for layer in self.layers}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerReport:
        return cls(
            tuple(
                LayerStatus(
                    str(name),
                    bool(v.get("available")),
                    bool(v.get("active")),
                    str(v.get("reason", "")),
                )
                for name, v in data.items()
                if isinstance(v, dict)
            )
        )

    def merged(self, *extra: LayerStatus) -> LayerReport:
        """A copy with ``extra`` replacing or adding layers, kept in canonical order."""
        by_name = {layer.name: layer for layer in self.layers}
        by_name.update({layer.name: layer for layer in extra})
        order = {n: i for i, n in enumerate(LAYER_NAMES)}
        return LayerReport(
            tuple(sorted(by_name.values(), key=lambda s: order.get(s.name, len(order))))
        )
