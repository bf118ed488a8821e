"""plugin.yaml and MANIFEST.json parsing: every refusal names its rule and field."""

from __future__ import annotations

import json

import pytest

from plugvisor.core.errors import ManifestError
from plugvisor.core.manifest import (
    FileEntry,
    Manifest,
    canonical_json,
    parse_manifest,
    parse_plugin_yaml,
)
from plugvisor.core.semver import parse_version

GOOD = b"""\
name: greeter
version: 1.2.0
api: 1
entrypoint: greeter:Plugin
profile: default
requires:
  formatter: ">=1.0,<2"
description: Says hello.
config:
  greeting: Hello
  times: 2
"""


def test_full_plugin_yaml() -> None:
    meta = parse_plugin_yaml(GOOD)
    assert meta.name == "greeter"
    assert meta.version == parse_version("1.2.0")
    assert meta.api == 1
    assert (meta.entry_module, meta.entry_attribute) == ("greeter", "Plugin")
    assert meta.profile == "default"
    assert str(meta.requires["formatter"]) == ">=1.0,<2"
    assert meta.requires["formatter"].contains("1.5.0")
    assert meta.description == "Says hello."
    assert meta.config == {"greeting": "Hello", "times": 2}
    assert meta.to_dict()["requires"] == {"formatter": ">=1.0,<2"}


def test_minimal_plugin_yaml_defaults() -> None:
    meta = parse_plugin_yaml(b"name: a\nversion: 0.1.0\napi: 1\nentrypoint: a.b:C\n")
    assert meta.profile == "default"
    assert meta.requires == {}
    assert meta.config == {}
    assert meta.description == ""


def _without(key: str) -> bytes:
    return b"".join(line + b"\n" for line in GOOD.splitlines() if not line.startswith(key.encode()))


def _with(key: str, value: str) -> bytes:
    lines = [ln for ln in GOOD.decode().splitlines() if not ln.startswith(f"{key}:")]
    if key in ("requires", "config"):  # drop the nested lines too
        lines = [ln for ln in lines if not ln.startswith("  ")]
    return ("\n".join(lines) + f"\n{key}: {value}\n").encode()


@pytest.mark.parametrize("key", ["name", "version", "api", "entrypoint"])
def test_missing_required_field(key: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_plugin_yaml(_without(key))
    assert info.value.code == "manifest.missing_field"
    assert info.value.details["field"] == key


@pytest.mark.parametrize(
    ("key", "value", "rule", "field"),
    [
        ("name", "Greeter", "invalid_field", "name"),
        ("name", "1abc", "invalid_field", "name"),
        ("name", "a" * 65, "invalid_field", "name"),
        ("name", "12", "invalid_field", "name"),
        ("version", "1.2", "invalid_field", "version"),
        ("version", "'1.2.x'", "invalid_field", "version"),
        ("api", "2", "unsupported_api", "api"),
        ("api", "'1'", "invalid_field", "api"),
        ("api", "true", "invalid_field", "api"),
        ("entrypoint", "greeter", "invalid_field", "entrypoint"),
        ("entrypoint", "greeter:Plugin.x", "invalid_field", "entrypoint"),
        ("entrypoint", "../x:Plugin", "invalid_field", "entrypoint"),
        ("entrypoint", "class:Plugin", "invalid_field", "entrypoint"),
        ("profile", "../../etc/passwd", "invalid_field", "profile"),
        ("profile", "3", "invalid_field", "profile"),
        ("description", "[1, 2]", "invalid_field", "description"),
        ("requires", "[formatter]", "invalid_field", "requires"),
        ("requires", "{formatter: 1}", "invalid_field", "requires.formatter"),
        ("requires", "{formatter: '~1.0'}", "invalid_field", "requires.formatter"),
        ("requires", "{Bad: '>=1'}", "invalid_field", "requires.Bad"),
        ("requires", "{greeter: '>=1'}", "invalid_field", "requires.greeter"),
        ("config", "[1]", "invalid_field", "config"),
        ("config", "{when: 2024-01-01}", "invalid_field", "config"),
        ("config", "{x: .nan}", "invalid_field", "config"),
        ("colour", "blue", "unknown_field", "colour"),
    ],
)
def test_invalid_field_is_named(key: str, value: str, rule: str, field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_plugin_yaml(_with(key, value))
    assert info.value.code == f"manifest.{rule}", info.value
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"name: [unclosed\n", "not_yaml"),
        (b"\xff\xfe", "not_yaml"),
        (b"- a\n- b\n", "not_mapping"),
        (b"", "not_mapping"),
        (b"a: &x [1]\nb: *x\n", "not_yaml"),  # aliases refused (billion laughs)
        (b"!!python/object:os.system {}\n", "not_yaml"),  # safe loader only
        (b"x: " + b"y" * 70_000 + b"\n", "too_large"),
    ],
)
def test_document_level_errors(data: bytes, rule: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_plugin_yaml(data)
    assert info.value.code == f"manifest.{rule}"
    assert info.value.details["field"] == "plugin.yaml"


def test_canonical_json_is_the_spec_form() -> None:
    obj = {"b": 1, "a": ["é", {"d": None, "c": True}]}
    assert canonical_json(obj) == json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert canonical_json(obj) == '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()


def _manifest_doc() -> dict[str, object]:
    return {
        "name": "greeter",
        "version": "1.2.0",
        "files": [
            {"path": "greeter/__init__.py", "sha256": "a" * 64, "size": 10},
            {"path": "plugin.yaml", "sha256": "b" * 64, "size": 20},
        ],
    }


def test_manifest_round_trip() -> None:
    data = canonical_json(_manifest_doc())
    m = parse_manifest(data)
    assert m == Manifest(
        "greeter",
        parse_version("1.2.0"),
        (FileEntry("greeter/__init__.py", "a" * 64, 10), FileEntry("plugin.yaml", "b" * 64, 20)),
    )
    assert m.to_bytes() == data


def _broken(path: tuple[object, ...], value: object) -> bytes:
    doc = _manifest_doc()
    target: object = doc
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    if value is KeyError:
        del target[path[-1]]  # type: ignore[attr-defined]
    else:
        target[path[-1]] = value  # type: ignore[index]
    return canonical_json(doc)


@pytest.mark.parametrize(
    ("path", "value", "rule", "field"),
    [
        (("name",), KeyError, "missing_field", "name"),
        (("files",), KeyError, "missing_field", "files"),
        (("extra",), 1, "unknown_field", "extra"),
        (("name",), "Bad Name", "invalid_field", "name"),
        (("version",), "1.0", "invalid_field", "version"),
        (("files",), {}, "invalid_field", "files"),
        (("files", 0, "path"), "../x.py", "invalid_field", "files[0].path"),
        (("files", 0, "path"), "/abs.py", "invalid_field", "files[0].path"),
        (("files", 0, "path"), "./x.py", "invalid_field", "files[0].path"),
        (("files", 0, "path"), "MANIFEST.sig", "invalid_field", "files[0].path"),
        (("files", 0, "sha256"), "ABC", "invalid_field", "files[0].sha256"),
        (("files", 1, "size"), -1, "invalid_field", "files[1].size"),
        (("files", 1, "size"), True, "invalid_field", "files[1].size"),
        (("files", 1, "mode"), 420, "unknown_field", "files[1].mode"),
        (("files", 1, "sha256"), KeyError, "missing_field", "files[1].sha256"),
        (("files", 1, "path"), "a.py", "invalid_field", "files[1].path"),  # not sorted
        (("files", 1, "path"), "greeter/__init__.py", "invalid_field", "files[1].path"),
    ],
)
def test_manifest_errors_name_the_field(
    path: tuple[object, ...], value: object, rule: str, field: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(_broken(path, value))
    assert info.value.code == f"manifest.{rule}", info.value
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"not json", "not_json"),
        (b"[]", "not_mapping"),
        (json.dumps(_manifest_doc()).encode(), "not_canonical"),  # spaces
        (canonical_json(_manifest_doc()) + b"\n", "not_canonical"),
        # a duplicate key that json.loads would silently resolve
        (canonical_json(_manifest_doc()).replace(b'{"files"', b'{"name":"x","files"'),
         "not_canonical"),
    ],
)  # fmt: skip
def test_manifest_document_errors(data: bytes, rule: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert info.value.code == f"manifest.{rule}"
