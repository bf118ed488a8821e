"""SemVer 2.0 precedence and version ranges (core/semver.py)."""

from __future__ import annotations

import itertools
import pickle

import pytest

from plugvisor.core.errors import VersionError
from plugvisor.core.semver import Version, parse_range, parse_version

# semver.org §11: each one lower than the next.
SEMVER_ORG_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
]


def test_semver_org_precedence_chain() -> None:
    versions = [parse_version(v) for v in SEMVER_ORG_ORDER]
    for low, high in itertools.pairwise(versions):
        assert low < high, (low, high)
        assert high > low
        assert not high <= low
    shuffled = list(reversed(versions))
    assert sorted(shuffled) == versions


def test_numeric_fields_compare_numerically() -> None:
    assert parse_version("1.9.0") < parse_version("1.10.0")
    assert parse_version("1.0.0-2") < parse_version("1.0.0-10")
    assert parse_version("1.0.0-10") < parse_version("1.0.0-alpha")  # numeric < alphanumeric


def test_build_metadata_is_ignored_for_precedence() -> None:
    a, b = parse_version("1.0.0+build.1"), parse_version("1.0.0+build.2")
    assert a == b
    assert hash(a) == hash(b)
    assert not a < b
    assert str(a) == "1.0.0+build.1"
    assert parse_version("1.0.0-rc.1+x") < parse_version("1.0.0")


@pytest.mark.parametrize(
    "text", ["1", "1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "", "1.0.0 ", "a.b.c"]
)
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(VersionError) as info:
        parse_version(text)
    assert info.value.code == "version.invalid"


def test_non_string_version_is_refused() -> None:
    with pytest.raises(VersionError):
        Version.parse(1.0)  # type: ignore[arg-type]


def test_version_pickles() -> None:
    v = parse_version("1.2.3-rc.1+b")
    assert str(pickle.loads(pickle.dumps(v))) == "1.2.3-rc.1+b"


def test_range_with_partial_versions() -> None:
    r = parse_range(">=1.0,<2")
    assert r.contains(parse_version("1.0.0"))
    assert r.contains("1.99.99")
    assert not r.contains("2.0.0")
    assert not r.contains("0.9.9")
    assert not r.contains("1.0.0-rc.1")  # a pre-release of 1.0.0 is below 1.0.0
    assert r.contains("2.0.0-alpha")  # plain precedence: below 2.0.0
    assert parse_range(">=1").contains("1.0.0")


@pytest.mark.parametrize(
    ("rng", "inside", "outside"),
    [
        ("==1.2.3", ["1.2.3", "1.2.3+b"], ["1.2.4", "1.2.3-rc.1"]),
        ("!=1.2.3", ["1.2.4", "1.2.3-rc.1"], ["1.2.3"]),
        (">1.0", ["1.0.1", "1.0.1-alpha"], ["1.0.0", "0.1.0"]),
        ("<=1.0.0-beta", ["1.0.0-alpha", "1.0.0-beta"], ["1.0.0-beta.1", "1.0.0"]),
        (">=1.0.0, <1.5, !=1.2.0", ["1.0.0", "1.4.9"], ["1.2.0", "1.5.0"]),
        ("*", ["0.0.1", "99.0.0-x"], []),
    ],
)
def test_range_operators(rng: str, inside: list[str], outside: list[str]) -> None:
    r = parse_range(rng)
    for v in inside:
        assert r.contains(v), (rng, v)
        assert v in r
    for v in outside:
        assert not r.contains(v), (rng, v)


@pytest.mark.parametrize("text", [">=1.0,<2", "==1.2.3-rc.1", "!=0.1.0,>0.0.1", "*"])
def test_range_str_round_trip(text: str) -> None:
    r = parse_range(text)
    assert str(r) == text
    assert parse_range(str(r)) == r


def test_range_equality_is_by_meaning() -> None:
    assert parse_range(">=1.0") == parse_range(">=1.0.0")
    assert parse_range(">=1.0") != parse_range(">1.0")


@pytest.mark.parametrize(
    "text", ["", " ", "1.0", "=>1.0", ">=1.0,", ">=x", "~1.0", "^1.0", ">=1.0.0.0", "<01"]
)
def test_invalid_ranges_are_refused(text: str) -> None:
    with pytest.raises(VersionError) as info:
        parse_range(text)
    assert info.value.code == "version.invalid"
