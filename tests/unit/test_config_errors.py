"""Settings load from defaults, file and environment; errors keep their stable codes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from plugvisor.core.config import load_settings, parse_size, setting_docs
from plugvisor.core.errors import (
    ArchiveError,
    BudgetExceeded,
    ConfigError,
    PluginRuntimeError,
    error_from_dict,
)


def test_defaults_and_env_override(tmp_path: Path) -> None:
    s = load_settings(env={"PLUGVISOR_STATE_DIR": str(tmp_path), "PLUGVISOR_API_PORT": "9000"})
    assert s.state_dir == tmp_path
    assert s.api_port == 9000
    assert s.max_archive_files == 50
    assert s.max_unpacked_bytes == 10 * 1024 * 1024


def test_file_then_env_then_override(tmp_path: Path) -> None:
    (tmp_path / "plugvisor.toml").write_text('max_response_bytes = "1M"\napi_port = 1234\n')
    s = load_settings({"state_dir": str(tmp_path)}, env={"PLUGVISOR_API_PORT": "4321"})
    assert s.max_response_bytes == 1024 * 1024
    assert s.api_port == 4321
    s2 = load_settings({"state_dir": str(tmp_path), "api_port": 1}, env={})
    assert s2.api_port == 1


def test_unknown_key_in_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plugvisor.toml").write_text("no_such_thing = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings({"state_dir": str(tmp_path)}, env={})
    assert exc.value.code == "config.unknown_setting"
    assert "no_such_thing" in exc.value.message


def test_bad_value_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"state_dir": str(tmp_path)}, env={"PLUGVISOR_API_PORT": "eighty"})
    assert exc.value.code == "config.invalid_value"
    assert exc.value.details["setting"] == "api_port"


def test_parse_size() -> None:
    assert parse_size("64M") == 64 * 1024**2
    assert parse_size("10MiB") == 10 * 1024**2
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_every_setting_is_documented() -> None:
    for name, env, _default, doc in setting_docs():
        assert env == "PLUGVISOR_" + name.upper()
        assert len(doc) > 10, name


def test_error_codes_round_trip_through_dict_and_pickle() -> None:
    err = ArchiveError("path_traversal", "member '../x' escapes the root", member="../x")
    assert err.code == "archive.path_traversal"
    again = error_from_dict(err.to_dict())
    assert isinstance(again, ArchiveError)
    assert again.code == err.code and again.details == {"member": "../x"}
    pickled = pickle.loads(pickle.dumps(BudgetExceeded("time", "5 s deadline")))
    assert isinstance(pickled, BudgetExceeded) and pickled.code == "budget.time"
    resp = error_from_dict({"code": "response.too_large", "message": "5 MiB > 4 MiB"})
    assert isinstance(resp, PluginRuntimeError) and resp.code == "response.too_large"


def test_bad_rule_is_rejected_when_built() -> None:
    with pytest.raises(ValueError):
        ArchiveError("Not A Rule", "x")


@pytest.mark.parametrize("bad", ["Web-1", "web 1", "web/1", "-" * 64, "wéb"])
def test_a_host_id_outside_the_allowed_characters_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"state_dir": str(tmp_path)}, env={"PLUGVISOR_HOST_ID": bad})
    assert exc.value.code == "config.invalid_value"
    assert exc.value.details["setting"] == "host_id"
    assert "[a-z0-9._-]" in exc.value.message


def test_host_id_defaults_to_the_lower_cased_hostname(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    s = load_settings({"state_dir": str(tmp_path)}, env={})
    assert s.host_id == ""
    assert s.host == socket.gethostname().lower()
    assert load_settings({"state_dir": str(tmp_path), "host_id": "web-3.eu"}, env={}).host == (
        "web-3.eu"
    )
