"""Security profiles: the bundled YAML matches SPEC §5, and every refusal names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plugvisor.core.config import load_settings
from plugvisor.core.errors import ProfileError
from plugvisor.core.profile import (
    OPERATION_CLASSES,
    SecurityProfile,
    bundled_profiles_dir,
    load_profile,
    parse_profile,
)

SETTINGS = load_settings({}, env={})

#: SPEC §5's pure-computation standard library: default.yaml must let all of it be imported.
SPEC_MODULES = [
    "json",
    "re",
    "math",
    "cmath",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "datetime",
    "time",
    "calendar",
    "zoneinfo",
    "collections",
    "itertools",
    "functools",
    "operator",
    "heapq",
    "bisect",
    "array",
    "copy",
    "dataclasses",
    "enum",
    "typing",
    "abc",
    "string",
    "textwrap",
    "unicodedata",
    "difflib",
    "hashlib",
    "hmac",
    "base64",
    "binascii",
    "uuid",
    "struct",
    "csv",
    "io",
    "html",
    "urllib.parse",
    "ipaddress",
    "contextlib",
    "traceback",
]

VALID = {
    "memory_limit": "64M",
    "max_execution_time": 5,
    "max_files": 50,
    "max_db_queries": 10,
    "allowed_functions": ["len", "json.*"],
    "forbidden_operations": ["file_write"],
}


def _yaml(**changes: object) -> bytes:
    data = {**VALID, **changes}
    data = {k: v for k, v in data.items() if v is not _DROP}
    return yaml.safe_dump(data).encode()


_DROP = object()


def test_default_matches_spec_values() -> None:
    p = load_profile("default", SETTINGS)
    assert p.name == "default"
    assert p.memory_limit == 64 * 1024**2
    assert p.max_execution_time == 5.0
    assert p.max_files == 50
    assert p.max_db_queries == 10
    assert p.forbidden_operations == {
        "file_write", "subprocess", "network", "dynamic_code", "native_code",
    }  # fmt: skip
    assert {"len", "str.upper", "json.dumps"} <= set(p.allowed_functions)
    assert not p.writable_data_dir and not p.network_allowed


def test_default_lets_ordinary_plugins_do_ordinary_work() -> None:
    p = load_profile("default", SETTINGS)
    mods = p.allowed_modules()
    for mod in SPEC_MODULES:
        assert mod in mods, mod
    for call in (
        "json.loads",
        "re.sub",
        "time.time",
        "time.sleep",
        "time.monotonic",
        "len",
        "str.upper",
        "isinstance",
        "collections.Counter",
        "io.StringIO",
    ):
        assert p.allows_call(call), call  # fmt: skip
    for call in (
        "eval",
        "exec",
        "compile",
        "os.system",
        "subprocess.run",
        "socket.socket",
        "ctypes.CDLL",
        "time.ctime",
        "io.open",
        "__import__",
    ):
        assert not p.allows_call(call), call  # fmt: skip
    assert p.module_names("json") is None  # all public names
    time_names = p.module_names("time")
    assert time_names is not None and "sleep" in time_names and "ctime" not in time_names
    assert "ctypes" not in mods and "sys" not in mods and "os" not in mods


def test_strict_is_tighter_and_trusted_opens_data_dir_and_network() -> None:
    default = load_profile("default", SETTINGS)
    strict = load_profile("strict", SETTINGS)
    trusted = load_profile("trusted", SETTINGS)
    assert strict.memory_limit == 32 * 1024**2 and strict.max_execution_time == 2.0
    assert strict.allowed_modules() < default.allowed_modules()
    assert trusted.writable_data_dir and trusted.network_allowed
    assert {"subprocess", "dynamic_code", "native_code"} <= trusted.forbidden_operations
    assert "socket" in trusted.allowed_modules()


def test_every_bundled_profile_parses() -> None:
    names = sorted(p.stem for p in bundled_profiles_dir().glob("*.yaml"))
    assert {"default", "strict", "trusted"} <= set(names)
    for name in names:
        assert isinstance(load_profile(name, SETTINGS), SecurityProfile)


def test_profiles_dir_is_searched_first(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_bytes(_yaml(max_files=7))
    (tmp_path / "custom.yaml").write_bytes(_yaml())
    settings = SETTINGS.with_overrides(profiles_dir=str(tmp_path))
    assert load_profile("default", settings).max_files == 7
    assert load_profile("custom", settings).name == "custom"
    assert load_profile("strict", settings).max_files == 10  # falls back to the bundled one


@pytest.mark.parametrize(
    ("changes", "rule", "field"),
    [
        ({"memory_limit": "lots"}, "invalid_value", "memory_limit"),
        ({"memory_limit": "1M"}, "invalid_value", "memory_limit"),
        ({"memory_limit": True}, "invalid_value", "memory_limit"),
        ({"max_execution_time": 0}, "invalid_value", "max_execution_time"),
        ({"max_execution_time": "5s"}, "invalid_value", "max_execution_time"),
        ({"max_files": 2.5}, "invalid_value", "max_files"),
        ({"max_files": -1}, "invalid_value", "max_files"),
        ({"max_db_queries": False}, "invalid_value", "max_db_queries"),
        ({"allowed_functions": "len"}, "invalid_value", "allowed_functions"),
        ({"allowed_functions": ["len", "len"]}, "duplicate", "allowed_functions"),
        ({"allowed_functions": ["os.path/../x"]}, "invalid_value", "allowed_functions"),
        ({"allowed_functions": ["json.*.x"]}, "invalid_value", "allowed_functions"),
        ({"forbidden_operations": ["teleport"]}, "unknown_operation", "forbidden_operations"),
        ({"forbidden_operations": [1]}, "invalid_value", "forbidden_operations"),
        ({"max_files": _DROP}, "missing_key", "max_files"),
        ({"sandbox": "off"}, "unknown_key", "sandbox"),
        # A profile may not allow what it forbids.
        ({"allowed_functions": ["shutil.*"]}, "conflict", "allowed_functions"),
        (
            {"allowed_functions": ["os.*"], "forbidden_operations": ["subprocess"]},
            "conflict",
            "allowed_functions",
        ),
        (
            {"allowed_functions": ["eval"], "forbidden_operations": ["dynamic_code"]},
            "conflict",
            "allowed_functions",
        ),
        (
            {"allowed_functions": ["ctypes.util.*"], "forbidden_operations": ["native_code"]},
            "conflict",
            "allowed_functions",
        ),
    ],
)
def test_parse_errors_name_the_field(changes: dict[str, object], rule: str, field: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(_yaml(**changes), "custom")
    err = info.value
    assert err.code == f"profile.{rule}"
    assert err.details["field"] == field
    assert field in err.message and "custom" in err.message


def test_not_a_mapping_and_bad_yaml_refused() -> None:
    for data in (b"- a\n- b\n", b"a: [unclosed\n", b"!!python/object:os.system {}\n"):
        with pytest.raises(ProfileError) as info:
            parse_profile(data, "custom")
        assert info.value.code in ("profile.invalid_yaml",)


@pytest.mark.parametrize("name", ["../default", "Default", "a/b", "", "x" * 65, "1abc", "a.b"])
def test_bad_profile_name_refused(name: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(name, SETTINGS)
    assert info.value.code == "profile.invalid_name"
    with pytest.raises(ProfileError):
        parse_profile(_yaml(), name)


def test_unknown_profile_not_found() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("nosuchprofile", SETTINGS)
    assert info.value.code == "profile.not_found"


def test_operation_classes_document_their_enforcement() -> None:
    assert set(OPERATION_CLASSES) == {
        "file_write", "subprocess", "network", "dynamic_code", "native_code",
    }  # fmt: skip
    for op in OPERATION_CLASSES.values():
        assert op.enforced_by and op.description
        assert op.audit_events  # the in-process hook has something to watch
