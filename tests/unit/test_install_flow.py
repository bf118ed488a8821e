"""Validate + install with real signed archives: happy path, and every refusal leaves nothing.

Archives are built on the fly with ``core.archive.pack`` and keys from
``core.signing.generate_keypair``; tampered archives are re-written member by member.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugvisor.core.archive import pack
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.signing import generate_keypair, verify_signature
from plugvisor.state.fetch import ensure_version
from plugvisor.state.install import install_archive, store_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.quarantine import Quarantine
from plugvisor.state.registry import Registry, VersionStatus
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.staging import recover_state
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore

PLUGIN_CODE = "class Plugin:\n    def handle(self, request):\n        return {'hi': request}\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"state_dir": str(tmp_path / "state")}, env={})


@pytest.fixture
def key(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "keys" / "signer"
    path.parent.mkdir()
    generate_keypair(path)
    TrustStore(settings.state_dir).trust(Path(f"{path}.pub"))
    return path


@pytest.fixture
def build(tmp_path: Path, key: Path) -> Callable[..., Path]:
    """``build(version, name="greeter", signer=key, requires=None) -> archive path``."""
    counter = iter(range(1000))

    def _build(
        version: str,
        name: str = "greeter",
        signer: Path | None = None,
        requires: dict[str, str] | None = None,
    ) -> Path:
        src = tmp_path / f"src-{next(counter)}" / name
        (src / name).mkdir(parents=True)
        lines = [f"name: {name}", f"version: {version}", "api: 1",
                 f"entrypoint: {name}:Plugin", "profile: default"]  # fmt: skip
        if requires:
            lines.append("requires:")
            lines.extend(f'  {dep}: "{rng}"' for dep, rng in requires.items())
        (src / "plugin.yaml").write_text("\n".join(lines) + "\n")
        (src / name / "__init__.py").write_text(PLUGIN_CODE)
        return pack(src, signer or key, tmp_path / "out" / f"{next(counter)}")

    return _build


def rewrite(
    archive: Path, out: Path, change: Callable[[list[tuple[tarfile.TarInfo, bytes]]], None]
):
    """Copy ``archive`` member by member, letting ``change`` edit the member list."""
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            members.append((m, data))
    change(members)
    with tarfile.open(out, "w:gz") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return out


def assert_nothing_installed(settings: Settings, *, versions: int = 0) -> None:
    layout = StateLayout(settings.state_dir)
    assert sorted(os.listdir(layout.staging_dir)) == [], "staging/ must be empty"
    assert len(os.listdir(layout.versions_dir)) == versions, os.listdir(layout.versions_dir)


def quarantined(settings: Settings) -> list[dict[str, Any]]:
    return [e.reason for e in Quarantine(StateLayout(settings.state_dir)).list()]


def refused(settings: Settings, archive: Path) -> PlugvisorError:
    with pytest.raises(PlugvisorError) as info:
        install_archive(settings, archive)
    return info.value


# ---- happy path --------------------------------------------------------------------------------


def test_install_stores_the_tree_and_records_the_version(settings: Settings, build) -> None:
    archive = build("1.0.0")
    rec = install_archive(settings, archive)
    assert (rec.plugin, rec.version, rec.status) == ("greeter", "1.0.0", VersionStatus.approved)
    layout = StateLayout(settings.state_dir)
    store = VersionStore(layout)
    tree = store.path(rec.digest)
    assert (tree / "greeter" / "__init__.py").read_text() == PLUGIN_CODE
    assert (tree / "plugin.yaml").is_file()
    assert store.verify(rec.digest) == []
    assert oct(tree.stat().st_mode & 0o777) == oct(0o555)
    with Registry(layout) as reg:
        assert reg.get_version("greeter", "1.0.0") == rec
        assert reg.get_plugin("greeter").highest_version == "1.0.0"
    assert rec.keyid == TrustStore(settings.state_dir).list()[0][0]
    assert_nothing_installed(settings, versions=1)
    assert quarantined(settings) == []


def test_install_with_review_status_and_a_newer_version(settings: Settings, build) -> None:
    install_archive(settings, build("1.0.0"))
    rec = install_archive(settings, build("1.1.0-rc.1"), VersionStatus.review)
    assert rec.status is VersionStatus.review
    rec = install_archive(settings, build("1.1.0"))
    with Registry(StateLayout(settings.state_dir)) as reg:
        assert [v.version for v in reg.list_versions("greeter")] == ["1.0.0", "1.1.0-rc.1", "1.1.0"]
    assert_nothing_installed(settings, versions=3)


# ---- refusals: quarantined, nothing half-written ------------------------------------------------


@pytest.mark.parametrize("again", ["1.0.0", "0.9.0", "1.0.0-rc.1"])
def test_not_newer_version_is_refused_and_quarantined(settings: Settings, build, again) -> None:
    first = install_archive(settings, build("1.0.0"))
    archive = build(again)
    err = refused(settings, archive)
    assert err.code == "version.not_newer"
    assert again in err.message and "1.0.0" in err.message
    [reason] = quarantined(settings)
    assert reason["code"] == "version.not_newer" and reason["original_name"] == archive.name
    # The accepted version is untouched; the refused one left no tree and no row.
    assert_nothing_installed(settings, versions=1)
    with Registry(StateLayout(settings.state_dir)) as reg:
        assert [v.version for v in reg.list_versions("greeter")] == ["1.0.0"]
    assert VersionStore(StateLayout(settings.state_dir)).verify(first.digest) == []


def test_untrusted_signer_is_refused(settings: Settings, build, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    generate_keypair(stranger)
    archive = build("1.0.0", signer=stranger)
    err = refused(settings, archive)
    assert err.code == "signature.untrusted"
    [reason] = quarantined(settings)
    assert reason["code"] == "signature.untrusted"
    entry = Quarantine(StateLayout(settings.state_dir)).list()[0]
    assert entry.archive is not None and entry.archive.read_bytes() == archive.read_bytes()
    assert_nothing_installed(settings)
    with Registry(StateLayout(settings.state_dir)) as reg:
        assert reg.list_plugins() == []


def test_no_trusted_key_at_all_is_refused(tmp_path: Path, build) -> None:
    archive = build("1.0.0")
    bare = load_settings({"state_dir": str(tmp_path / "other")}, env={})
    assert refused(bare, archive).code == "signature.untrusted"
    assert_nothing_installed(bare)


def test_a_changed_file_is_refused(settings: Settings, build, tmp_path: Path) -> None:
    def tamper(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        for i, (m, data) in enumerate(members):
            if m.name.endswith("__init__.py"):
                members[i] = (m, data.replace(b"hi", b"ho"))  # same size, other hash

    archive = rewrite(build("1.0.0"), tmp_path / "greeter-1.0.0.tar.gz", tamper)
    err = refused(settings, archive)
    assert err.code == "archive.hash_mismatch"
    assert [r["code"] for r in quarantined(settings)] == ["archive.hash_mismatch"]
    assert_nothing_installed(settings)


def test_a_path_traversal_member_is_refused(settings: Settings, build, tmp_path: Path) -> None:
    def evil(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        info = tarfile.TarInfo("../../escaped.py")
        info.size = 1
        members.append((info, b"x"))

    archive = rewrite(build("1.0.0"), tmp_path / "evil.tar.gz", evil)
    err = refused(settings, archive)
    assert err.code == "archive.path_traversal"
    assert quarantined(settings)[0]["code"] == "archive.path_traversal"
    assert not (tmp_path / "escaped.py").exists()
    assert not (StateLayout(settings.state_dir).root.parent / "escaped.py").exists()
    assert_nothing_installed(settings)


def test_not_an_archive_is_refused(settings: Settings, tmp_path: Path, key: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip at all")
    err = refused(settings, junk)
    assert err.code == "archive.not_gzip"
    assert quarantined(settings)[0]["archive_sha256"]
    assert_nothing_installed(settings)


# ---- the CLI over the same step ----------------------------------------------------------


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    if settings.database_url:
        env["PLUGVISOR_DATABASE_URL"] = settings.database_url
    return subprocess.run(
        [sys.executable, "-m", "plugvisor", "--state-dir", str(settings.state_dir), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_cli_install_and_status(settings: Settings, build) -> None:
    out = run_cli(settings, "install", str(build("1.0.0")))
    assert out.returncode == 0, out.stderr
    assert "installed greeter 1.0.0 (approved)" in out.stdout
    out = run_cli(settings, "install", str(build("1.0.0")))
    assert out.returncode != 0
    assert "version.not_newer" in out.stderr
    out = run_cli(settings, "status", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [plugin] = data["plugins"]
    assert plugin["name"] == "greeter" and plugin["active_version"] is None
    assert [(v["version"], v["status"]) for v in plugin["versions"]] == [("1.0.0", "approved")]
    out = run_cli(settings, "status")
    assert out.returncode == 0 and out.stdout.startswith("greeter  active -")
    out = run_cli(settings, "--json", "status", "ghost")
    assert out.returncode != 0
    assert json.loads(out.stdout)["error"]["code"] == "not_found.plugin"


def test_cli_install_and_status_with_the_registry_on_postgresql(
    settings: Settings, build, postgres_url: str
) -> None:
    shared = settings.with_overrides(database_url=postgres_url)
    out = run_cli(shared, "install", str(build("1.0.0")))
    assert out.returncode == 0, out.stderr
    out = run_cli(shared, "--json", "status")
    assert out.returncode == 0, out.stderr
    [plugin] = json.loads(out.stdout)["plugins"]
    assert [(v["version"], v["status"]) for v in plugin["versions"]] == [("1.0.0", "approved")]
    assert not StateLayout(settings.state_dir).registry_db.exists()  # nothing went to SQLite
    with Registry(postgres_url) as reg:
        assert reg.get_version("greeter", "1.0.0").status is VersionStatus.approved


def test_an_unreachable_database_url_is_one_clear_line(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = settings.with_overrides(database_url=f"postgresql://pv:pw@127.0.0.1:{port}/pv")
    out = run_cli(down, "status")
    assert out.returncode != 0
    assert "state.database: database_url" in out.stderr
    assert "Traceback" not in out.stderr and "pw@" not in out.stderr


def test_the_transactional_check_refuses_even_when_the_precheck_is_skipped(
    settings: Settings, build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two installers racing both pass the advisory pre-check; the registry still refuses."""
    install_archive(settings, build("1.0.0"))
    monkeypatch.setattr(Registry, "check_newer", lambda self, name, version: None)
    err = refused(settings, build("0.5.0"))
    assert err.code == "version.not_newer"
    assert [r["code"] for r in quarantined(settings)] == ["version.not_newer"]
    assert_nothing_installed(settings, versions=1)  # the stored 0.5.0 tree was removed again


def test_concurrent_installs_from_two_processes_serialise(settings: Settings, build) -> None:
    archives = [build("1.0.0"), build("1.0.0")]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plugvisor",
                "--state-dir",
                str(settings.state_dir),
                "install",
                str(a),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in archives
    ]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    assert any("version.not_newer" in err for _, err in results)
    assert_nothing_installed(settings, versions=1)


def test_store_archive_stores_without_recording(settings: Settings, build) -> None:
    package = store_archive(settings, build("1.0.0"))
    layout = StateLayout(settings.state_dir)
    assert package.path == layout.versions_dir / package.digest
    assert VersionStore(layout).verify(package.digest, package.manifest) == []
    # MANIFEST.sig is kept beside MANIFEST.json and still verifies (rollback re-checks it).
    store = VersionStore(layout)
    sig = store.signature(package.digest)
    assert sig == package.signature
    keys = TrustStore(layout.root).load_all()
    assert verify_signature(store.manifest_bytes(package.digest), sig, keys) == package.keyid
    with Registry(layout) as reg:
        assert reg.find_plugin("greeter") is None
        reg.add_version(package.meta, package.digest, package.keyid)
    # Outranked versions are refused before anything is stored.
    assert refused(settings, build("1.0.0")).code == "version.not_newer"
    assert_nothing_installed(settings, versions=1)


def test_recover_state_removes_crash_debris_but_not_live_trees(settings: Settings, build) -> None:
    layout = StateLayout(settings.state_dir)
    kept = install_archive(settings, build("1.0.0"))
    orphan = store_archive(settings, build("2.0.0"))  # stored, never recorded
    debris = layout.staging_dir / f".{'ab' * 16}.x1y2.part"  # extraction's temp dir
    (debris / "greeter").mkdir(parents=True)
    (debris / "greeter" / "x.py").write_text("")
    os.chmod(debris, 0o555)
    uploads = layout.staging_dir / "uploads"  # the API's spool: not install debris
    uploads.mkdir()
    (uploads / "queued.tar.gz").write_bytes(b"x")
    # Fresh debris and a fresh orphan are spared (a live worker may own them) ...
    report = recover_state(layout)
    assert report.staging == () and report.orphans == ()
    # ... old ones go.
    report = recover_state(layout, staging_grace_s=0, orphan_grace_s=0)
    assert report.staging == (debris,) and report.orphans == (orphan.digest,)
    assert os.listdir(layout.staging_dir) == ["uploads"]
    assert (uploads / "queued.tar.gz").exists()
    assert os.listdir(layout.versions_dir) == [kept.digest]


def test_cli_status_on_a_missing_state_dir_creates_nothing(tmp_path: Path) -> None:
    missing = load_settings({"state_dir": str(tmp_path / "typo")}, env={})
    out = run_cli(missing, "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no plugins installed"
    assert not (tmp_path / "typo").exists()


def test_the_sandbox_user_reads_plugin_code_but_not_keys_or_quarantine(build) -> None:
    """Modes as created: ``nobody`` reaches versions/<digest>/ and nothing private."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the sandbox user: setuid missing")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    # pytest's tmp_path sits below a 0o700 directory; use a traversable parent of our own.
    base = Path(tempfile.mkdtemp(prefix="plugvisor-modes-"))
    try:
        os.chmod(base, 0o755)
        settings = load_settings({"state_dir": str(base / "state")}, env={})
        key = base / "signer"
        generate_keypair(key)
        TrustStore(settings.state_dir).trust(Path(f"{key}.pub"))
        rec = install_archive(settings, build("1.0.0", signer=key))
        refused_archive = build("0.1.0", signer=key)
        with pytest.raises(PlugvisorError):
            install_archive(settings, refused_archive)
        layout = StateLayout(settings.state_dir)
        probe = (
            "import sys\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        open(p, 'rb').read(1); print('read', p)\n"
            "    except PermissionError:\n"
            "        print('denied', p)\n"
        )
        code = layout.version_dir(rec.digest) / "greeter" / "__init__.py"
        key_file = TrustStore(settings.state_dir).list()[0][1]
        [entry] = Quarantine(layout).list()
        assert entry.archive is not None
        out = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", probe, str(code), str(key_file),
             str(entry.archive), str(layout.registry_db)],
            user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
            capture_output=True, text=True, timeout=30, cwd="/",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            f"read {code}",
            f"denied {key_file}",
            f"denied {entry.archive}",
            f"denied {layout.registry_db}",
        ]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- the fleet's shared artefact store ------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One registry two state directories share: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def _second_host(tmp_path: Path, shared_db: str, key: Path | None) -> Settings:
    other = load_settings(
        {"state_dir": str(tmp_path / "host-b"), "database_url": shared_db, "host_id": "b"},
        env={},
    )
    if key is not None:
        TrustStore(other.state_dir).trust(Path(f"{key}.pub"))
    return other


def test_another_host_fetches_and_verifies_an_accepted_version(
    settings: Settings, build, key: Path, tmp_path: Path, shared_db: str
) -> None:
    host_a = settings.with_overrides(database_url=shared_db)
    record = install_archive(host_a, build("1.0.0"))
    host_b = _second_host(tmp_path, shared_db, key)
    with Registry.open(host_b) as reg:
        assert reg.get_artefact(record.digest)  # stored once, with the version's row
        path = ensure_version(host_b, reg, record.digest)
    assert path == StateLayout(host_b.state_dir).version_dir(record.digest)
    assert VersionStore(StateLayout(host_b.state_dir)).verify(record.digest) == []
    assert (path / "greeter" / "__init__.py").read_text() == PLUGIN_CODE
    assert_nothing_installed(host_b, versions=1)


def test_a_tampered_artefact_is_refused_by_the_fetching_host_and_logged(
    settings: Settings, build, key: Path, tmp_path: Path, shared_db: str
) -> None:
    host_a = settings.with_overrides(database_url=shared_db)
    archive = build("1.0.0")
    record = install_archive(host_a, archive)

    def swap_code(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        for i, (m, data) in enumerate(members):
            if m.name.endswith("__init__.py"):  # same size, other code, same manifest
                members[i] = (m, data.replace(b"'hi'", b"'HI'"))

    evil = rewrite(archive, tmp_path / "evil.tar.gz", swap_code)
    engine = sa.create_engine(Registry.open(host_a).url)
    with engine.begin() as conn:  # someone with write access to the database
        conn.execute(
            sa.text("UPDATE artefacts SET archive = :a WHERE digest = :d"),
            {"a": evil.read_bytes(), "d": record.digest},
        )
    engine.dispose()
    host_b = _second_host(tmp_path, shared_db, key)
    with Registry.open(host_b) as reg, pytest.raises(PlugvisorError) as info:
        ensure_version(host_b, reg, record.digest)
    assert info.value.code == "archive.hash_mismatch"
    assert_nothing_installed(host_b)
    log = StateLayout(host_b.state_dir).security_log
    assert SecurityLog(log).verify().ok
    [line] = [json.loads(raw) for raw in log.read_text().splitlines()]
    assert line["kind"] == "artefact.archive.hash_mismatch"
    assert (line["plugin"], line["version"], line["action"]) == ("greeter", "1.0.0", "refused")


def test_a_host_that_does_not_trust_the_signer_refuses_the_artefact(
    settings: Settings, build, tmp_path: Path, shared_db: str
) -> None:
    record = install_archive(settings.with_overrides(database_url=shared_db), build("1.0.0"))
    host_b = _second_host(tmp_path, shared_db, key=None)  # trusts nobody
    with Registry.open(host_b) as reg, pytest.raises(PlugvisorError) as info:
        ensure_version(host_b, reg, record.digest)
    assert info.value.code.startswith("signature.")
    assert_nothing_installed(host_b)


def test_a_digest_nobody_stored_is_not_found(tmp_path: Path, shared_db: str) -> None:
    host_b = _second_host(tmp_path, shared_db, key=None)
    with Registry.open(host_b) as reg, pytest.raises(PlugvisorError) as info:
        ensure_version(host_b, reg, "ab" * 32)
    assert info.value.code == "not_found.artefact"


def test_cli_hosts_lists_registered_hosts(settings: Settings, tmp_path: Path) -> None:
    out = run_cli(settings, "hosts")
    assert out.returncode == 0 and out.stdout.strip() == "no hosts registered"
    assert not Path(settings.state_dir).exists()  # nothing created at a mistyped path
    shared = settings.with_overrides(database_url=f"sqlite:///{tmp_path / 'shared.sqlite'}")
    with Registry.open(shared) as reg:
        reg.heartbeat("web-1", started_at="2026-01-01T00:00:00+00:00", plugvisor_version="0.1.0",
                      pid=42, layers={"seccomp": True}, load={"loadavg_1m": 0.5})  # fmt: skip
        reg.observe("web-1", "greeter", "1.0.0", "serving")
    out = run_cli(shared, "--json", "hosts")
    assert out.returncode == 0, out.stderr
    [host] = json.loads(out.stdout)["hosts"]
    assert (host["host_id"], host["status"], host["pid"]) == ("web-1", "up", 42)
    assert host["plugins"] == {"greeter": {"version": "1.0.0", "health": "serving", "detail": ""}}
    out = run_cli(shared, "hosts")
    assert out.stdout.startswith("web-1  UP") and "greeter 1.0.0 serving" in out.stdout


def test_cli_status_shows_each_host_of_a_fleet(settings: Settings, build, tmp_path: Path) -> None:
    shared = settings.with_overrides(database_url=f"sqlite:///{tmp_path / 'shared.sqlite'}")
    install_archive(shared, build("1.0.0"))
    with Registry.open(shared) as reg:
        reg.activate("greeter", "1.0.0")
        for host, version, seen in (("web-1", "1.0.0", None), ("web-2", None, "2026-01-01")):
            reg.heartbeat(host, started_at="2026-01-01T00:00:00+00:00", plugvisor_version="0.1",
                          pid=1, layers={}, load={})  # fmt: skip
            reg.observe(host, "greeter", version, "serving" if version else "down")
            if seen:  # web-2 went quiet long ago: down
                engine = sa.create_engine(reg.url)
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE hosts SET last_seen = :s WHERE host_id = :h"),
                                 {"s": f"{seen}T00:00:00+00:00", "h": host})  # fmt: skip
                engine.dispose()
    out = run_cli(shared, "status")
    assert out.returncode == 0, out.stderr
    assert "  host web-1: 1.0.0  serving" in out.stdout
    assert "  host web-2: -  down BEHIND HOST DOWN" in out.stdout
