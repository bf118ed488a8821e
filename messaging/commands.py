"""The daemon's control commands: one frozen dataclass each, checked once in ``from_dict``.

A command travels as ``{"id", "kind", "params", "expires_at"}`` (:mod:`.control`); the
daemon parses ``kind`` + ``params`` back with :data:`COMMANDS` and looks its handler up by
the class. A new command is one class here (registered with ``@COMMANDS.register``) and
one handler in the daemon's table (``daemon/main.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from plugvisor.messaging.message import Message, MessageFamily, optional_str, required_str

__all__ = ["COMMANDS", "Activate", "Command", "Disable", "Enable", "Rollback", "Status"]


@dataclass(frozen=True)
class Command(Message):
    """A control command for the daemon (base class)."""


#: Every control command, by kind.
COMMANDS: MessageFamily[Command] = MessageFamily("command")


@COMMANDS.register
@dataclass(frozen=True)
class Status(Command):
    """The daemon's pid and every plugin's routing state."""

    kind: ClassVar[str] = "status"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        return cls()


@COMMANDS.register
@dataclass(frozen=True)
class Activate(Command):
    """Swap plugin ``name`` to ``version`` (blue/green, watched afterwards)."""

    kind: ClassVar[str] = "activate"
    name: str
    version: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Activate:
        return cls(required_str(data, "name", "a plugin"), required_str(data, "version"))


@COMMANDS.register
@dataclass(frozen=True)
class Rollback(Command):
    """Swap back to ``version`` (default: the previous one), with staged data if given.

    ``restore_from`` names a worker-staged ``data/.restore-NAME-<job>/`` directory that
    the daemon exchanges with the plugin's data while no host runs (checked there).
    """

    kind: ClassVar[str] = "rollback"
    name: str
    version: str | None = None
    restore_from: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollback:
        return cls(
            required_str(data, "name", "a plugin"),
            optional_str(data, "version"),
            optional_str(data, "restore_from", "a staged restore directory"),
        )


@COMMANDS.register
@dataclass(frozen=True)
class Disable(Command):
    """Stop routing calls to plugin ``name`` and stop its hosts."""

    kind: ClassVar[str] = "disable"
    name: str
    reason: str = "disabled by an operator"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Disable:
        reason = data.get("reason")
        return cls(
            required_str(data, "name", "a plugin"),
            str(reason) if reason else "disabled by an operator",
        )


@COMMANDS.register
@dataclass(frozen=True)
class Enable(Command):
    """Route calls to plugin ``name`` again (its active version is started)."""

    kind: ClassVar[str] = "enable"
    name: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Enable:
        return cls(required_str(data, "name", "a plugin"))
