"""The version store and the state layout: atomic read-only trees, re-verification, modes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from plugvisor.core.errors import StateError
from plugvisor.core.manifest import FileEntry, Manifest, canonical_json
from plugvisor.core.semver import parse_version
from plugvisor.state.layout import StateLayout
from plugvisor.state.store import VersionStore

FILES = {"plugin.yaml": b"name: p\nversion: 1.0.0\n", "p/__init__.py": b"class Plugin: ...\n"}


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "state").ensure()


def stage(layout: StateLayout, files: dict[str, bytes] = FILES) -> tuple[Path, Manifest, str]:
    """A staged tree like extract_archive leaves it: files + MANIFEST.json; its digest."""
    entries = tuple(
        FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))
        for path, data in sorted(files.items())
    )
    manifest = Manifest("p", parse_version("1.0.0"), entries)
    raw = canonical_json(manifest.to_dict())
    staged = (
        layout.staging_dir
        / f"s-{hashlib.sha256(raw).hexdigest()[:8]}-{len(os.listdir(layout.staging_dir))}"
    )
    for path, data in files.items():
        (staged / path).parent.mkdir(parents=True, exist_ok=True)
        (staged / path).write_bytes(data)
    (staged / "MANIFEST.json").write_bytes(raw)
    return staged, manifest, hashlib.sha256(raw).hexdigest()


def test_layout_ensure_creates_the_tree_with_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not make plugin code unreachable
    try:
        layout = StateLayout(tmp_path / "a" / "state").ensure()
    finally:
        os.umask(old)
    for path, mode in layout.dir_modes().items():
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(layout.versions_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE(layout.keys_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.quarantine_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.run_dir.stat().st_mode) == 0o750
    # Idempotent, and a loosened private directory is tightened again.
    os.chmod(layout.keys_dir, 0o777)
    layout.ensure()
    assert stat.S_IMODE(layout.keys_dir.stat().st_mode) == 0o700
    assert layout.daemon_socket == layout.root / "run" / "daemon.sock"
    assert layout.plugin_db("greeter") == layout.root / "data" / "greeter" / "db.sqlite"


def test_layout_refuses_names_that_would_escape_the_tree(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    for bad in ("../x", "A", "", "a/b"):
        with pytest.raises(StateError):
            layout.plugin_files_dir(bad)
    with pytest.raises(StateError):
        layout.backup_dir("p", "../../etc")
    with pytest.raises(StateError):
        layout.version_dir("../" + "0" * 61)
    assert layout.backup_dir("p", "1.0.0-rc.1+b5").name == "1.0.0-rc.1+b5"


def test_plugin_data_dir_is_traverse_only_with_a_private_files_dir(layout: StateLayout) -> None:
    root = layout.ensure_plugin_data("greeter")
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    assert stat.S_IMODE(layout.plugin_files_dir("greeter").stat().st_mode) == 0o700


def test_add_moves_the_tree_read_only_and_verify_is_clean(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, manifest, digest = stage(layout)
    path = store.add(staged, digest)
    assert path == layout.versions_dir / digest and not staged.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o555
    assert stat.S_IMODE((path / "p").stat().st_mode) == 0o555
    assert stat.S_IMODE((path / "p" / "__init__.py").stat().st_mode) == 0o444
    assert store.verify(digest, manifest) == []
    assert store.digests() == [digest]


def test_add_writes_the_manifest_and_verify_can_use_the_stored_one(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, manifest, digest = stage(layout)
    (staged / "MANIFEST.json").unlink()  # extract_archive does not keep it
    path = store.add(staged, digest, manifest)
    assert (path / "MANIFEST.json").read_bytes() == manifest.to_bytes()
    assert store.manifest(digest) == manifest
    assert store.verify(digest) == []
    os.chmod(path / "p" / "__init__.py", 0o644)
    (path / "p" / "__init__.py").write_bytes(b"evil = True\n")
    assert any(p.startswith("p/__init__.py:") for p in store.verify(digest))


def test_add_keeps_the_signature_read_only_and_verify_does_not_flag_it(
    layout: StateLayout,
) -> None:
    store = VersionStore(layout)
    staged, manifest, digest = stage(layout)
    sig = b'{"alg":"ed25519","keyid":"k","sig":"s"}'
    path = store.add(staged, digest, manifest, sig)
    assert stat.S_IMODE((path / "MANIFEST.sig").stat().st_mode) == 0o444
    assert store.signature(digest) == sig
    assert store.manifest_bytes(digest) == (path / "MANIFEST.json").read_bytes()
    assert store.verify(digest) == []  # a control file, not an unlisted one


def test_signature_is_none_for_a_tree_stored_without_one(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, _, digest = stage(layout)
    store.add(staged, digest)
    assert store.signature(digest) is None
    assert store.verify(digest) == []


def test_add_refuses_a_manifest_that_does_not_hash_to_the_digest(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, manifest, _ = stage(layout)
    (staged / "MANIFEST.json").unlink()
    with pytest.raises(StateError) as info:
        store.add(staged, "0" * 64, manifest)
    assert info.value.code == "state.digest_mismatch"
    assert not store.exists("0" * 64)


def test_a_tampered_stored_manifest_is_refused(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, _, digest = stage(layout)
    path = store.add(staged, digest)
    os.chmod(path / "MANIFEST.json", 0o644)
    (path / "MANIFEST.json").write_bytes(b'{"name":"p","version":"1.0.0","files":[]}')
    with pytest.raises(StateError) as info:
        store.manifest(digest)
    assert info.value.code == "state.tampered"
    assert store.verify(digest)[0].startswith("MANIFEST.json: sha256")


def test_add_of_a_stored_digest_keeps_the_existing_tree(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, _, digest = stage(layout)
    first = store.add(staged, digest)
    inode = first.stat().st_ino
    staged2, _, digest2 = stage(layout)
    assert digest2 == digest
    assert store.add(staged2, digest) == first
    assert first.stat().st_ino == inode and not staged2.exists()


def test_verify_reports_every_kind_of_tampering(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, manifest, digest = stage(layout, {**FILES, "p/data.txt": b"hello"})
    path = store.add(staged, digest)
    init = path / "p" / "__init__.py"
    os.chmod(init, 0o644)
    init.write_bytes(b"import os; os.system('id')\n")  # same-size tricks are caught by hash too
    os.chmod(path / "p", 0o755)
    (path / "p" / "data.txt").unlink()
    (path / "p" / "extra.py").write_bytes(b"")
    os.symlink("/etc/passwd", path / "p" / "link")
    problems = store.verify(digest, manifest)
    text = "\n".join(problems)
    assert "p/__init__.py: writable" in text
    assert "p/__init__.py: size" in text
    assert "p/data.txt: missing" in text
    assert "p/extra.py: not in the manifest" in text
    assert "p/link: not in the manifest" in text


def test_verify_catches_a_same_size_change_and_a_swapped_manifest(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, manifest, digest = stage(layout)
    path = store.add(staged, digest)
    target = path / "plugin.yaml"
    data = bytearray(target.read_bytes())
    data[0] ^= 0x20
    os.chmod(target, 0o644)
    target.write_bytes(bytes(data))
    os.chmod(target, 0o444)
    os.chmod(path, 0o755)
    os.chmod(path / "MANIFEST.json", 0o644)
    (path / "MANIFEST.json").write_bytes(b"{}")
    problems = store.verify(digest, manifest)
    assert any(p.startswith("plugin.yaml: sha256") for p in problems), problems
    assert any(p.startswith("MANIFEST.json: sha256") for p in problems), problems


def test_verify_of_a_missing_version_says_so(layout: StateLayout) -> None:
    _, manifest, digest = stage(layout)
    assert VersionStore(layout).verify(digest, manifest) == [
        f"version {digest} is not in the store ({layout.versions_dir / digest})"
    ]


def test_add_refuses_a_symlink_in_the_staged_tree(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, _, digest = stage(layout)
    os.symlink("/etc/passwd", staged / "p" / "evil")
    with pytest.raises(StateError) as info:
        store.add(staged, digest)
    assert info.value.code == "state.not_regular"
    assert not store.exists(digest)


def test_remove_deletes_the_read_only_tree(layout: StateLayout) -> None:
    store = VersionStore(layout)
    staged, _, digest = stage(layout)
    store.add(staged, digest)
    assert store.remove(digest) is True
    assert not store.exists(digest)
    assert store.remove(digest) is False
    assert [p.name for p in layout.staging_dir.iterdir()] == []
