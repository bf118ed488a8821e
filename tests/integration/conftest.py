"""Fixtures of the integration suites: the daemon rig (``daemon_kit``), from tests/support."""

from __future__ import annotations

from plugvisor.tests.support.daemonkit import daemon_kit

__all__ = ["daemon_kit"]
