"""Semantic Versioning 2.0 versions and version ranges (``">=1.0,<2"``).

:class:`Version` wraps :class:`semver.Version` and orders by SemVer *precedence*: a
pre-release sorts below its release (``1.0.0-rc.1 < 1.0.0``) and build metadata is
ignored (``1.0.0+a == 1.0.0+b``), so the monotonic-version rule treats a re-built
version as the same version. :class:`VersionRange` is a conjunction of comparators
(``== != >= <= > <``) separated by commas; a partial version in a range is padded with
zeros (``1`` -> ``1.0.0``, ``1.0`` -> ``1.0.0``); ``*`` admits every version.
Membership is plain precedence comparison, so ``<2`` admits ``2.0.0-alpha``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import semver

from plugvisor.core.errors import VersionError

__all__ = ["Comparator", "Version", "VersionRange", "parse_range", "parse_version"]

_OPERATORS: Final = ("==", "!=", ">=", "<=", ">", "<")
_PARTIAL = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$")
_MAX_TEXT = 256


class Version:
    """A SemVer 2.0 version, totally ordered by precedence (build metadata ignored)."""

    __slots__ = ("_v",)

    def __init__(self, value: semver.Version) -> None:
        self._v = value

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse a full ``MAJOR.MINOR.PATCH[-PRE][+BUILD]`` string, nothing looser."""
        if not isinstance(text, str) or len(text) > _MAX_TEXT:
            raise VersionError("invalid", f"{text!r} is not a semantic version string")
        try:
            return cls(semver.Version.parse(text))
        except (ValueError, TypeError) as exc:
            raise VersionError(
                "invalid", f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH): {exc}"
            ) from exc

    @property
    def major(self) -> int:
        return int(self._v.major)

    @property
    def minor(self) -> int:
        return int(self._v.minor)

    @property
    def patch(self) -> int:
        return int(self._v.patch)

    @property
    def prerelease(self) -> str | None:
        return self._v.prerelease

    @property
    def build(self) -> str | None:
        return self._v.build

    @property
    def is_prerelease(self) -> bool:
        return self._v.prerelease is not None

    def _cmp(self, other: Version) -> int:
        return int(self._v.compare(other._v))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._cmp(other) == 0

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._cmp(other) < 0

    def __le__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._cmp(other) <= 0

    def __gt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._cmp(other) > 0

    def __ge__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._cmp(other) >= 0

    def __hash__(self) -> int:
        # Equal precedence must hash alike, so the build metadata stays out.
        return hash((self.major, self.minor, self.patch, self.prerelease))

    def __str__(self) -> str:
        return str(self._v)

    def __repr__(self) -> str:
        return f"Version({str(self._v)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse_version, (str(self),))


def parse_version(text: str) -> Version:
    """Parse a full semantic version; ``VersionError("invalid")`` otherwise."""
    return Version.parse(text)


@dataclass(frozen=True)
class Comparator:
    """One ``<op><version>`` term of a range; ``text`` keeps the version as written."""

    op: str
    version: Version
    text: str = field(compare=False)

    def matches(self, v: Version) -> bool:
        """Whether ``v`` satisfies this comparator by precedence."""
        op = self.op
        if op == "==":
            return v == self.version
        if op == "!=":
            return v != self.version
        if op == ">=":
            return v >= self.version
        if op == "<=":
            return v <= self.version
        if op == ">":
            return v > self.version
        return v < self.version

    def __str__(self) -> str:
        return f"{self.op}{self.text}"


@dataclass(frozen=True)
class VersionRange:
    """A conjunction of comparators; the empty tuple (written ``*``) admits every version."""

    comparators: tuple[Comparator, ...]

    def contains(self, v: Version | str) -> bool:
        """Whether ``v`` satisfies every comparator."""
        version = v if isinstance(v, Version) else parse_version(v)
        return all(c.matches(version) for c in self.comparators)

    def __contains__(self, v: object) -> bool:
        return isinstance(v, Version | str) and self.contains(v)

    def __str__(self) -> str:
        return ",".join(str(c) for c in self.comparators) or "*"


def _parse_bound(text: str, whole: str) -> Version:
    m = _PARTIAL.match(text)
    if m:
        return parse_version(f"{m.group(1)}.{m.group(2) or 0}.0")
    try:
        return parse_version(text)
    except VersionError as exc:
        raise VersionError(
            "invalid", f"range {whole!r}: {text!r} is not a version", range=whole
        ) from exc


def parse_range(text: str) -> VersionRange:
    """Parse ``">=1.0,<2"`` (comma-separated ``== != >= <= > <`` comparators) or ``*``."""
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_TEXT:
        raise VersionError("invalid", f"{text!r} is not a version range such as '>=1.0,<2'")
    if text.strip() == "*":
        return VersionRange(())
    comparators: list[Comparator] = []
    for raw in text.split(","):
        term = raw.strip()
        op = next((o for o in _OPERATORS if term.startswith(o)), None)
        if op is None:
            raise VersionError(
                "invalid",
                f"range {text!r}: term {term!r} must start with one of {' '.join(_OPERATORS)}",
                range=text,
            )
        bound = term[len(op) :].strip()
        comparators.append(Comparator(op, _parse_bound(bound, text), bound))
    return VersionRange(tuple(comparators))
