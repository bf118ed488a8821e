"""``plugvisor keys``, ``pack`` and ``verify`` through the real command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugvisor.cli import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "greeter"
PLUGVISOR = Path(sys.executable).with_name("plugvisor")


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not PLUGVISOR.exists():
        pytest.skip(f"{PLUGVISOR} missing: the package is not installed in this venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    return subprocess.run(
        [str(PLUGVISOR), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_pack_verify_via_the_installed_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gen = _run("--state-dir", state, "keys", "generate", tmp_path / "dev.key", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    keyid = gen.stdout.split()[1]
    assert len(keyid) == 64

    packed = _run("--state-dir", state, "pack", EXAMPLE, "--key", tmp_path / "dev.key",
                  cwd=tmp_path)  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    archive = Path(packed.stdout.strip().splitlines()[-1])
    assert archive == tmp_path / "greeter-1.0.0.tar.gz"  # default: the current directory
    assert archive.is_file()

    untrusted = _run("--state-dir", state, "verify", archive, cwd=tmp_path)
    assert untrusted.returncode != 0
    assert "FAIL  signature: signature.untrusted" in untrusted.stdout
    assert "ok    files match manifest" in untrusted.stdout

    trust = _run("--state-dir", state, "keys", "trust", tmp_path / "dev.key.pub", cwd=tmp_path)
    assert trust.returncode == 0, trust.stderr
    assert keyid in trust.stdout
    listed = _run("--state-dir", state, "keys", "list", cwd=tmp_path)
    assert listed.stdout.split()[0] == keyid

    ok = _run("--state-dir", state, "verify", archive, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("ok    ")]) == 10
    assert lines[-1].endswith("valid")

    as_json = _run("--state-dir", state, "--json", "verify", archive, cwd=tmp_path)
    report = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {"signature", "compression ratio"}


def test_pack_error_exits_non_zero_naming_the_rule(tmp_path: Path) -> None:
    _run("keys", "generate", tmp_path / "k", cwd=tmp_path)
    src = tmp_path / "src"
    (src / "greeter").mkdir(parents=True)
    (src / "plugin.yaml").write_text("name: Greeter\nversion: 1.0.0\napi: 1\nentrypoint: g:P\n")
    (src / "greeter" / "__init__.py").write_text("")
    res = _run("pack", src, "--key", tmp_path / "k", "-o", tmp_path / "out", cwd=tmp_path)
    assert res.returncode != 0
    assert "manifest.invalid_field" in res.stderr
    assert "name" in res.stderr


def test_verify_reports_a_tampered_archive(tmp_path: Path) -> None:
    runner = CliRunner()
    state = str(tmp_path / "state")
    res = runner.invoke(cli, ["--state-dir", state, "keys", "generate", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        ["--state-dir", state, "pack", str(EXAMPLE), "--key", str(tmp_path / "k"),
         "-o", str(tmp_path)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    archive = Path(res.output.strip().splitlines()[-1])
    # Re-pack with one file's content changed but the signed manifest kept.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "greeter/__init__.py":
                data = data.replace(b"Hello", b"Pwned")
            dst.addfile(member, io.BytesIO(data))
    res = runner.invoke(
        cli,
        ["--state-dir", state, "--json", "verify", str(tampered), "--key",
         str(tmp_path / "k.pub")],
    )  # fmt: skip
    assert res.exit_code == 1
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["ok"] is False
    failed = {c["name"]: c["codes"] for c in report["checks"] if not c["ok"]}
    assert failed == {"files match manifest": ["archive.hash_mismatch"]}
