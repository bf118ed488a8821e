"""Fixtures of the fleet suite: several daemons over one PostgreSQL (``make_fleet``)."""

from __future__ import annotations

from plugvisor.tests.support.fleetkit import make_fleet

__all__ = ["make_fleet"]
