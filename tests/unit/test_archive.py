"""Plugin archives (core/archive.py): one test per refusal rule, round trips, an independent packer.

Hostile archives are built here with ``tarfile`` and a properly signed manifest wherever
the rule needs one, so each refusal is the rule under test and not the signature.
Every refusal must leave nothing behind: no ``dest``, no temporary directory beside it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugvisor.core.archive import (
    ArchiveLimits,
    check_archive,
    extract_archive,
    pack,
)
from plugvisor.core.config import load_settings
from plugvisor.core.errors import ArchiveError, ConflictError, ManifestError, PlugvisorError
from plugvisor.core.fs import remove_tree
from plugvisor.core.signing import PublicKey, generate_keypair, keyid, load_public_key

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLUGIN_YAML = b"name: demo\nversion: 1.0.0\napi: 1\nentrypoint: demo:Plugin\n"
BASE: dict[str, bytes] = {
    "plugin.yaml": PLUGIN_YAML,
    "demo/__init__.py": b"class Plugin:\n    def handle(self, request):\n        return request\n",
}
MiB = 1024 * 1024
Entry = tuple[tarfile.TarInfo, bytes | None]


# ---- building archives by hand -------------------------------------------------------


def _info(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return (info, data if kind == tarfile.REGTYPE else None)


def _manifest(files: dict[str, bytes], name: str = "demo", version: str = "1.0.0") -> bytes:
    entries = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in sorted(files.items())
    ]
    doc = {"name": name, "version": version, "files": entries}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sig(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {
        "keyid": hashlib.sha256(raw).hexdigest(),
        "alg": "ed25519",
        "sig": base64.b64encode(key.sign(manifest)).decode(),
    }
    return json.dumps(doc).encode()


def _tar(entries: Iterable[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _signed(
    key: Ed25519PrivateKey,
    files: dict[str, bytes] | None = None,
    *,
    listed: dict[str, bytes] | None = None,
    extra: Iterable[Entry] = (),
    name: str = "demo",
    version: str = "1.0.0",
) -> list[Entry]:
    """MANIFEST.json (over ``listed``, default ``files``) + MANIFEST.sig + files + extra."""
    files = dict(BASE) if files is None else files
    manifest = _manifest(files if listed is None else listed, name, version)
    return [
        _info("MANIFEST.json", manifest),
        _info("MANIFEST.sig", _sig(manifest, key)),
        *(_info(p, d) for p, d in sorted(files.items())),
        *extra,
    ]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted(key: Ed25519PrivateKey) -> list[PublicKey]:
    return [PublicKey(keyid(key.public_key()), key.public_key())]


def _refused(tmp_path: Path, data: bytes, trusted: list[PublicKey], **limits: float) -> str:
    """Extract ``data``; assert it is refused and nothing is left; return the error code."""
    archive = tmp_path / "in.tar.gz"
    archive.write_bytes(data)
    parent = Path(tempfile.mkdtemp(prefix="store", dir=tmp_path))
    dest = parent / "dest"
    with pytest.raises(PlugvisorError) as info:
        extract_archive(archive, dest, trusted, ArchiveLimits(**limits))  # type: ignore[arg-type]
    assert not dest.exists()
    assert list(parent.iterdir()) == [], "a temporary directory was left beside dest"
    details = info.value.to_dict()
    json.dumps(details)  # what a quarantine reason file stores
    return info.value.code


def _ok(tmp_path: Path, data: bytes, trusted: list[PublicKey]) -> Path:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(data)
    dest = tmp_path / "ok-dest"
    pkg = extract_archive(archive, dest, trusted)
    assert pkg.path == dest
    return dest


# ---- a well-formed archive passes (the baseline the refusals below deviate from) ------------


def test_hand_built_archive_extracts(tmp_path: Path, key, trusted) -> None:
    dest = _ok(tmp_path, gzip.compress(_tar(_signed(key))), trusted)
    assert (dest / "plugin.yaml").read_bytes() == PLUGIN_YAML
    assert (dest / "demo" / "__init__.py").read_bytes() == BASE["demo/__init__.py"]


# ---- one test per refusal rule ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.py", "demo/../../evil.py", "demo/.."])
def test_path_traversal(tmp_path: Path, key, trusted, name: str) -> None:
    data = gzip.compress(_tar(_signed(key, extra=[_info(name, b"x = 1\n")])))
    assert _refused(tmp_path, data, trusted) == "archive.path_traversal"
    assert not (tmp_path / "evil.py").exists()


def test_path_traversal_through_a_pax_path(tmp_path: Path, key, trusted) -> None:
    info, body = _info("demo/innocent.py", b"x = 1\n")
    info.pax_headers = {"path": "../../evil.py"}
    data = gzip.compress(_tar([*_signed(key), (info, body)]))
    assert _refused(tmp_path, data, trusted) == "archive.path_traversal"


@pytest.mark.parametrize("name", ["demo/./x.py", "a//b.py", "demo/" + "x" * 256, "d/" * 600])
def test_invalid_path(tmp_path: Path, key, trusted, name: str) -> None:
    data = gzip.compress(_tar(_signed(key, extra=[_info(name, b"x = 1\n")])))
    assert _refused(tmp_path, data, trusted) == "archive.invalid_path"


@pytest.mark.parametrize("prefix", ["", ".//"])
def test_absolute_path(tmp_path: Path, key, trusted, prefix: str) -> None:
    target = tmp_path / "planted.py"
    data = gzip.compress(_tar(_signed(key, extra=[_info(prefix + str(target), b"x = 1\n")])))
    assert _refused(tmp_path, data, trusted) == "archive.absolute_path"
    assert not target.exists()


def test_symlink(tmp_path: Path, key, trusted) -> None:
    link = _info("demo/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")
    data = gzip.compress(_tar(_signed(key, extra=[link])))
    assert _refused(tmp_path, data, trusted) == "archive.symlink"


def test_hardlink(tmp_path: Path, key, trusted) -> None:
    link = _info("demo/copy.yaml", kind=tarfile.LNKTYPE, link="plugin.yaml")
    data = gzip.compress(_tar(_signed(key, extra=[link])))
    assert _refused(tmp_path, data, trusted) == "archive.hardlink"


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_special_file(tmp_path: Path, key, trusted, kind: bytes) -> None:
    data = gzip.compress(_tar(_signed(key, extra=[_info("demo/dev", kind=kind)])))
    assert _refused(tmp_path, data, trusted) == "archive.special_file"


@pytest.mark.parametrize(
    "extra",
    [
        [_info("plugin.yaml", b"name: evil\n")],  # same file twice, second would win
        [_info("MANIFEST.sig", b"{}")],
        [_info("demo", kind=tarfile.DIRTYPE), _info("demo", kind=tarfile.DIRTYPE)],
        [_info("demo/__init__.py/x", b"")],  # inside a path that is a file
        [_info("plugin.yaml", kind=tarfile.DIRTYPE)],  # a file and a directory
    ],
    ids=["file", "manifest-member", "directory", "under-file", "file-and-dir"],
)
def test_duplicate_member(tmp_path: Path, key, trusted, extra: list[Entry]) -> None:
    data = gzip.compress(_tar(_signed(key, extra=extra)))
    assert _refused(tmp_path, data, trusted) == "archive.duplicate_member"


def test_too_many_files(tmp_path: Path, key, trusted) -> None:
    files = dict(BASE)
    files.update({f"demo/m{i:02d}.py": b"" for i in range(49)})  # 51 files, all listed
    data = gzip.compress(_tar(_signed(key, files)))
    assert _refused(tmp_path, data, trusted) == "archive.too_many_files"
    # 50 files is the limit, and allowed.
    del files["demo/m48.py"]
    _ok(tmp_path, gzip.compress(_tar(_signed(key, files))), trusted)


def test_too_many_directories_count_as_members(tmp_path: Path, key, trusted) -> None:
    dirs = [_info(f"d{i}", kind=tarfile.DIRTYPE) for i in range(200)]
    data = gzip.compress(_tar(_signed(key, extra=dirs)))
    assert _refused(tmp_path, data, trusted) == "archive.too_many_files"


def test_too_large_default_limit(tmp_path: Path, key, trusted) -> None:
    # Incompressible, so the ratio rule cannot fire first: 10 MiB + 1 byte unpacked.
    files = {**BASE, "demo/blob.bin": os.urandom(10 * MiB + 1 - sum(map(len, BASE.values())))}
    data = gzip.compress(_tar(_signed(key, files)), compresslevel=1)
    assert _refused(tmp_path, data, trusted) == "archive.too_large"


def test_too_large_configured_limit(tmp_path: Path, key, trusted) -> None:
    files = {**BASE, "demo/blob.bin": os.urandom(64 * 1024)}
    data = gzip.compress(_tar(_signed(key, files)))
    assert _refused(tmp_path, data, trusted, max_unpacked_bytes=32 * 1024) == "archive.too_large"
    settings = load_settings({"state_dir": str(tmp_path)}, env={})
    assert ArchiveLimits.from_settings(settings.with_overrides(max_unpacked_bytes="32K")) == (
        ArchiveLimits(max_unpacked_bytes=32 * 1024)
    )


def test_compression_ratio_is_measured_while_streaming(tmp_path: Path, key, trusted) -> None:
    files = {**BASE, "demo/zeros.bin": bytes(16 * MiB)}  # ~1000:1
    data = gzip.compress(_tar(_signed(key, files)), compresslevel=9)
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(data)
    (tmp_path / "store").mkdir()
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, tmp_path / "store" / "d", trusted)
    assert info.value.code == "archive.compression_ratio"
    # Stopped just past the 1 MiB threshold, not after unpacking the bomb.
    assert info.value.details["unpacked"] < 2 * MiB
    assert list((tmp_path / "store").iterdir()) == []


def test_compression_ratio_below_threshold_is_allowed(tmp_path: Path, key, trusted) -> None:
    files = {**BASE, "demo/zeros.bin": bytes(512 * 1024)}  # very compressible, but < 1 MiB
    _ok(tmp_path, gzip.compress(_tar(_signed(key, files))), trusted)


def test_header_only_bomb_is_bounded(tmp_path: Path, key, trusted) -> None:
    # A 16 MiB pax header record: tarfile would buffer it whole; the decoder stops first.
    info, body = _info("demo/x.py", b"")
    info.pax_headers = {"comment": "A" * (16 * MiB)}
    data = gzip.compress(_tar([*_signed(key), (info, body)]))
    assert _refused(tmp_path, data, trusted) in {"archive.compression_ratio", "archive.too_large"}


def test_not_in_manifest(tmp_path: Path, key, trusted) -> None:
    data = gzip.compress(_tar(_signed(key, extra=[_info("demo/extra.py", b"x = 1\n")])))
    assert _refused(tmp_path, data, trusted) == "archive.not_in_manifest"


def test_not_in_manifest_when_manifest_comes_last(tmp_path: Path, key, trusted) -> None:
    entries = _signed(key, extra=[_info("demo/extra.py", b"x = 1\n")])
    data = gzip.compress(_tar(entries[2:] + entries[:2]))
    assert _refused(tmp_path, data, trusted) == "archive.not_in_manifest"


def test_missing_member(tmp_path: Path, key, trusted) -> None:
    listed = {**BASE, "demo/util.py": b"y = 2\n"}
    data = gzip.compress(_tar(_signed(key, BASE, listed=listed)))
    assert _refused(tmp_path, data, trusted) == "archive.missing_member"


def test_hash_mismatch(tmp_path: Path, key, trusted) -> None:
    files = dict(BASE)
    listed = {**BASE, "demo/__init__.py": BASE["demo/__init__.py"].replace(b"request", b"REQUEST")}
    data = gzip.compress(_tar(_signed(key, files, listed=listed)))
    assert _refused(tmp_path, data, trusted) == "archive.hash_mismatch"


@pytest.mark.parametrize("delta", [b"# more\n", b""])
def test_size_mismatch(tmp_path: Path, key, trusted, delta: bytes) -> None:
    listed = {**BASE, "demo/__init__.py": BASE["demo/__init__.py"] + (delta or b"x")}
    files = {**BASE, "demo/__init__.py": BASE["demo/__init__.py"] + delta * 2}
    data = gzip.compress(_tar(_signed(key, files, listed=listed)))
    assert _refused(tmp_path, data, trusted) == "archive.size_mismatch"


def test_name_mismatch(tmp_path: Path, key, trusted) -> None:
    data = gzip.compress(_tar(_signed(key, name="other")))
    assert _refused(tmp_path, data, trusted) == "archive.name_mismatch"


def test_version_mismatch(tmp_path: Path, key, trusted) -> None:
    # A re-labelled old version: the signed manifest says 2.0.0, plugin.yaml says 1.0.0.
    data = gzip.compress(_tar(_signed(key, version="2.0.0")))
    assert _refused(tmp_path, data, trusted) == "archive.version_mismatch"


def test_non_utf8_name(tmp_path: Path, key, trusted) -> None:
    bad = _info("demo/\udcff.py", b"x = 1\n")  # the raw byte 0xff in the header
    data = gzip.compress(_tar(_signed(key, extra=[bad]), fmt=tarfile.GNU_FORMAT))
    assert b"demo/\xff.py" in gzip.decompress(data)
    assert _refused(tmp_path, data, trusted) == "archive.non_utf8_name"


def _good_archive(key: Ed25519PrivateKey) -> bytes:
    return gzip.compress(_tar(_signed(key)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[: len(d) // 2],  # truncated inside the deflate stream
        lambda d: d[:-4],  # truncated inside the gzip trailer
        lambda d: d[:40] + bytes(b ^ 0xFF for b in d[40:60]) + d[60:],  # corrupted deflate data
        lambda d: d[:-8] + bytes(4) + d[-4:],  # wrong CRC32 in the trailer
        lambda d: d + b"garbage after the gzip stream",
    ],
    ids=["truncated", "truncated-trailer", "bitflip", "bad-crc", "trailing-garbage"],
)
def test_corrupt(tmp_path: Path, key, trusted, mangle) -> None:
    assert _refused(tmp_path, mangle(_good_archive(key)), trusted) == "archive.corrupt"


def test_corrupt_tar_inside_valid_gzip(tmp_path: Path, key, trusted) -> None:
    raw = _tar(_signed(key))
    assert _refused(tmp_path, gzip.compress(raw[:700]), trusted) == "archive.corrupt"
    # A broken header after the first member must not end the archive quietly.
    broken = raw[:1024] + b"\x01" * 512 + raw[1536:]
    assert _refused(tmp_path, gzip.compress(broken), trusted) == "archive.corrupt"


def test_member_hidden_after_end_of_archive(tmp_path: Path, key, trusted) -> None:
    raw = _tar(_signed(key))
    hidden = _tar([_info("demo/hidden.py", b"evil = 1\n")])
    end = raw.rstrip(b"\x00")
    end += bytes(-len(end) % 512) + bytes(1024)  # the two zero blocks ending the archive
    assert _refused(tmp_path, gzip.compress(end + hidden), trusted) == "archive.corrupt"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x1f", b"PK\x03\x04 a zip", b"plain text"],
    ids=["empty", "one-byte", "zip", "text"],
)
def test_not_gzip(tmp_path: Path, trusted, data: bytes) -> None:
    assert _refused(tmp_path, data, trusted) == "archive.not_gzip"


def test_uncompressed_tar_is_not_gzip(tmp_path: Path, key, trusted) -> None:
    assert _refused(tmp_path, _tar(_signed(key)), trusted) == "archive.not_gzip"


def test_signature_missing(tmp_path: Path, key, trusted) -> None:
    entries = [e for e in _signed(key) if e[0].name != "MANIFEST.sig"]
    assert _refused(tmp_path, gzip.compress(_tar(entries)), trusted) == "signature.missing"


def test_signature_malformed(tmp_path: Path, key, trusted) -> None:
    entries = _signed(key)
    entries[1] = _info("MANIFEST.sig", b'{"keyid": "x"}')
    assert _refused(tmp_path, gzip.compress(_tar(entries)), trusted) == "signature.malformed"


def test_signature_untrusted(tmp_path: Path, key) -> None:
    stranger = Ed25519PrivateKey.generate()
    data = gzip.compress(_tar(_signed(stranger)))
    other = PublicKey(keyid(key.public_key()), key.public_key())
    assert _refused(tmp_path, data, [other]) == "signature.untrusted"


def test_signature_invalid(tmp_path: Path, key, trusted) -> None:
    # The manifest was edited after signing (an extra file slipped in).
    entries = _signed(key)
    tampered = _manifest({**BASE, "demo/evil.py": b"x"})
    entries[0] = _info("MANIFEST.json", tampered)
    entries.append(_info("demo/evil.py", b"x"))
    assert _refused(tmp_path, gzip.compress(_tar(entries)), trusted) == "signature.invalid"


def test_missing_manifest(tmp_path: Path, key, trusted) -> None:
    entries = [e for e in _signed(key) if e[0].name != "MANIFEST.json"]
    assert _refused(tmp_path, gzip.compress(_tar(entries)), trusted) == "archive.missing_member"


def test_manifest_schema_error(tmp_path: Path, key, trusted) -> None:
    manifest = b'{"files":[],"name":"demo"}'
    entries = [_info("MANIFEST.json", manifest), _info("MANIFEST.sig", _sig(manifest, key))]
    code = _refused(tmp_path, gzip.compress(_tar(entries)), trusted)
    assert code == "manifest.missing_field"


@pytest.mark.parametrize(
    ("yaml_text", "code"),
    [
        (b"name: [demo\n", "manifest.not_yaml"),
        (b"name: demo\nversion: 1.0.0\napi: 1\nentrypoint: demo:Plugin\nshell: rm\n",
         "manifest.unknown_field"),
        (b"name: demo\nversion: 1.0.0\napi: 9\nentrypoint: demo:Plugin\n",
         "manifest.unsupported_api"),
        (b"name: demo\nversion: 1.0.0\napi: 1\nentrypoint: nothere:Plugin\n",
         "manifest.invalid_field"),
    ],
)  # fmt: skip
def test_plugin_yaml_errors(tmp_path: Path, key, trusted, yaml_text: bytes, code: str) -> None:
    files = {**BASE, "plugin.yaml": yaml_text}
    assert _refused(tmp_path, gzip.compress(_tar(_signed(key, files))), trusted) == code


def test_plugin_yaml_missing(tmp_path: Path, key, trusted) -> None:
    files = {"demo/__init__.py": BASE["demo/__init__.py"]}
    code = _refused(tmp_path, gzip.compress(_tar(_signed(key, files))), trusted)
    assert code == "archive.missing_member"


def test_dest_must_not_exist(tmp_path: Path, key, trusted) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_good_archive(key))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(ConflictError):
        extract_archive(archive, dest, trusted)
    assert (dest / "keep").read_text() == "mine"


def test_refused_errors_carry_reason_details(tmp_path: Path, key, trusted) -> None:
    data = gzip.compress(_tar(_signed(key, extra=[_info("../x", b"")])))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, tmp_path / "d", trusted)
    reason = info.value.to_dict()
    assert reason["code"] == "archive.path_traversal"
    assert reason["details"]["member"] == "../x"
    assert "path" in reason["message"] or ".." in reason["message"]


# ---- accepted variants -------------------------------------------------------------------


def test_directories_and_dot_slash_names_are_accepted(tmp_path: Path, key, trusted) -> None:
    entries = _signed(key)
    renamed = [_info(".", kind=tarfile.DIRTYPE), _info("./demo", kind=tarfile.DIRTYPE)]
    for info, data in entries:
        info.name = "./" + info.name
        renamed.append((info, data))
    dest = _ok(tmp_path, gzip.compress(_tar(renamed)), trusted)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "demo",
        "demo/__init__.py",
        "plugin.yaml",
    ]


def test_multi_member_gzip_is_accepted(tmp_path: Path, key, trusted) -> None:
    raw = _tar(_signed(key))
    data = gzip.compress(raw[:1536]) + gzip.compress(raw[1536:])
    _ok(tmp_path, data, trusted)


# ---- round trip through the real tools -----------------------------------------------------


def _plugin_dir(root: Path) -> Path:
    src = root / "src"
    shutil.copytree(EXAMPLES / "greeter", src)
    (src / "greeter" / "data.txt").write_text("data file\n")
    (src / "tests").mkdir()
    (src / "tests" / "test_x.py").write_text("assert True\n")
    (src / "greeter" / "__pycache__").mkdir()
    (src / "greeter" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (src / "greeter" / "stale.pyc").write_bytes(b"\0")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / ".env").write_text("SECRET=1\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    return src


def test_round_trip_generate_pack_verify_extract(tmp_path: Path) -> None:
    pub = generate_keypair(tmp_path / "signing.key")
    src = _plugin_dir(tmp_path)
    out = pack(src, tmp_path / "signing.key", tmp_path / "dist")
    assert out == tmp_path / "dist" / "greeter-1.0.0.tar.gz"
    trusted = [load_public_key(tmp_path / "signing.key.pub")]
    assert trusted[0].keyid == pub.keyid
    checks = check_archive(out, trusted)
    assert all(c.ok for c in checks), checks
    with tarfile.open(out) as tar:
        names = tar.getnames()
        members = tar.getmembers()
    assert names[:2] == ["MANIFEST.json", "MANIFEST.sig"]
    assert names[2:] == sorted(["plugin.yaml", "greeter/__init__.py", "greeter/data.txt", "run.sh"])
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isreg() for m in members)
    assert {m.name: m.mode for m in members}["run.sh"] == 0o755
    assert {m.name: m.mode for m in members}["plugin.yaml"] == 0o644

    dest = tmp_path / "versions" / "v1"
    (tmp_path / "versions").mkdir()
    pkg = extract_archive(out, dest, trusted)
    assert pkg.meta.name == "greeter" and str(pkg.meta.version) == "1.0.0"
    assert pkg.keyid == pub.keyid
    with tarfile.open(out) as tar:
        manifest_bytes = tar.extractfile("MANIFEST.json").read()  # type: ignore[union-attr]
    assert pkg.digest == hashlib.sha256(manifest_bytes).hexdigest()
    assert [f.path for f in pkg.manifest.files] == names[2:]
    assert (dest / "greeter" / "data.txt").read_text() == "data file\n"
    assert stat.S_IMODE((dest / "plugin.yaml").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "greeter").stat().st_mode) == 0o555
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    assert not (dest / "MANIFEST.json").exists()
    assert os.listdir(tmp_path / "versions") == ["v1"]
    remove_tree(dest)
    assert not dest.exists()
    remove_tree(dest)  # absent is fine


def test_pack_is_reproducible(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    src = _plugin_dir(tmp_path)
    a = pack(src, tmp_path / "k", tmp_path / "a").read_bytes()
    time.sleep(0.01)  # a different wall clock must not matter (not synchronisation)
    os.utime(src / "plugin.yaml", (1, 1))
    b = pack(src, tmp_path / "k", tmp_path / "b").read_bytes()
    assert a == b
    assert a[4:8] == b"\0\0\0\0"  # gzip mtime


def test_pack_refuses_what_extract_would(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    src = _plugin_dir(tmp_path)
    out = tmp_path / "out"

    def code() -> str:
        with pytest.raises(PlugvisorError) as info:
            pack(src, tmp_path / "k", out)
        assert not out.exists() or list(out.iterdir()) == []
        return info.value.code

    (src / "greeter" / "link.py").symlink_to(src / "plugin.yaml")
    assert code() == "archive.symlink"
    (src / "greeter" / "link.py").unlink()
    (src / "MANIFEST.json").write_text("{}")
    assert code() == "archive.duplicate_member"
    (src / "MANIFEST.json").unlink()
    for i in range(50):
        (src / "greeter" / f"m{i}.py").write_text("")
    assert code() == "archive.too_many_files"
    for i in range(50):
        (src / "greeter" / f"m{i}.py").unlink()
    (src / "plugin.yaml").write_text("name: greeter\nversion: one\napi: 1\nentrypoint: g:P\n")
    with pytest.raises(ManifestError) as info:
        pack(src, tmp_path / "k", out)
    assert info.value.details["field"] == "version"


def test_pack_refuses_a_bomb(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    src = _plugin_dir(tmp_path)
    (src / "greeter" / "zeros.bin").write_bytes(bytes(3 * MiB))
    with pytest.raises(ArchiveError) as info:
        pack(src, tmp_path / "k", tmp_path / "out")
    assert info.value.code == "archive.compression_ratio"
    assert list((tmp_path / "out").iterdir()) == []


def test_check_archive_reports_every_failure(tmp_path: Path, key) -> None:
    stranger = Ed25519PrivateKey.generate()
    extra = [
        _info("demo/extra.py", b"x"),
        _info("demo/link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        _info("../up", b""),
    ]
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(gzip.compress(_tar(_signed(stranger, name="other", extra=extra))))
    trusted = [PublicKey(keyid(key.public_key()), key.public_key())]
    checks = {c.name: c for c in check_archive(archive, trusted)}
    failed = {name for name, c in checks.items() if not c.ok}
    assert failed == {
        "member paths",
        "member types",
        "signature",
        "files match manifest",
        "plugin.yaml",
    }
    assert checks["signature"].codes == ("signature.untrusted",)
    assert checks["member types"].codes == ("archive.symlink",)
    assert checks["member paths"].codes == ("archive.path_traversal",)
    assert checks["files match manifest"].codes == ("archive.not_in_manifest",)
    assert checks["plugin.yaml"].codes == ("archive.name_mismatch",)
    assert checks["gzip"].ok and checks["file count"].ok


def test_check_archive_stops_at_a_bomb(tmp_path: Path, key, trusted) -> None:
    archive = tmp_path / "bomb.tar.gz"
    files = {**BASE, "demo/zeros.bin": bytes(32 * MiB)}
    archive.write_bytes(gzip.compress(_tar(_signed(key, files))))
    checks = {c.name: c for c in check_archive(archive, trusted)}
    assert not checks["compression ratio"].ok
    assert checks["signature"].ok is False and "not checked" in checks["signature"].detail


# ---- an independent packer, written from SPEC §3 alone ----------------------------------------


def _spec_pack(src: Path, key: Ed25519PrivateKey, out: Path) -> None:
    """Pack like a third party would: tarfile + hashlib + cryptography, nothing of plugvisor."""
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    manifest = json.dumps(
        {
            "name": "greeter",
            "version": "1.0.0",
            "files": [
                {
                    "path": f,
                    "sha256": hashlib.sha256((src / f).read_bytes()).hexdigest(),
                    "size": (src / f).stat().st_size,
                }
                for f in files
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    raw_pub = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    sig = json.dumps(
        {
            "keyid": hashlib.sha256(raw_pub).hexdigest(),
            "alg": "ed25519",
            "sig": base64.b64encode(key.sign(manifest)).decode("ascii"),
        },
        indent=2,
    ).encode()
    manifest_file, sig_file = out.parent / "MANIFEST.json", out.parent / "MANIFEST.sig"
    manifest_file.write_bytes(manifest)
    sig_file.write_bytes(sig)
    # Different choices than pack(): directories included, real mtimes, GNU format,
    # MANIFEST members last.
    with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for entry in sorted(src.rglob("*"), reverse=True):
            if entry.is_dir():
                tar.add(entry, arcname=entry.relative_to(src).as_posix(), recursive=False)
        for f in files:
            tar.add(src / f, arcname=f)
        tar.add(manifest_file, arcname="MANIFEST.json")
        tar.add(sig_file, arcname="MANIFEST.sig")


def test_independent_packer_archive_verifies_and_extracts(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    src = tmp_path / "greeter"
    shutil.copytree(EXAMPLES / "greeter", src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "greeter" / "templates").mkdir()
    (src / "greeter" / "templates" / "hello.txt").write_text("Hello, {name}! ✓\n")
    out = tmp_path / "dist" / "greeter-1.0.0.tar.gz"
    out.parent.mkdir()
    _spec_pack(src, key, out)
    trusted = [PublicKey(keyid(key.public_key()), key.public_key())]
    assert all(c.ok for c in check_archive(out, trusted)), check_archive(out, trusted)
    dest = tmp_path / "v"
    pkg = extract_archive(out, dest, trusted)
    assert pkg.meta.entrypoint == "greeter:Plugin"
    assert (dest / "greeter" / "templates" / "hello.txt").read_text() == "Hello, {name}! ✓\n"


def test_gnu_tar_archive_extracts(tmp_path: Path) -> None:
    """An archive made by GNU tar (``./`` names, directory entries) is accepted."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar missing: cannot build the archive with it")
    key = Ed25519PrivateKey.generate()
    src = tmp_path / "greeter"
    shutil.copytree(EXAMPLES / "greeter", src, ignore=shutil.ignore_patterns("__pycache__"))
    files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    manifest = _manifest(files, "greeter")
    (src / "MANIFEST.json").write_bytes(manifest)
    (src / "MANIFEST.sig").write_bytes(_sig(manifest, key))
    out = tmp_path / "g.tar.gz"
    subprocess.run(["tar", "-C", str(src), "-czf", str(out), "."], check=True, timeout=30)
    trusted = [PublicKey(keyid(key.public_key()), key.public_key())]
    pkg = extract_archive(out, tmp_path / "v", trusted)
    assert pkg.meta.name == "greeter"


def test_mutated_archives_fail_cleanly(tmp_path: Path) -> None:
    """Random byte damage gives a typed refusal (or a harmless pass), never a crash or leftovers."""
    generate_keypair(tmp_path / "k")
    good = pack(EXAMPLES / "greeter", tmp_path / "k", tmp_path).read_bytes()
    trusted = [load_public_key(tmp_path / "k.pub")]
    raw = gzip.decompress(good)
    rng = random.Random(1234)
    for i in range(150):
        damaged = bytearray(raw if i % 2 else good)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        data = gzip.compress(bytes(damaged)) if i % 2 else bytes(damaged)
        archive = tmp_path / "m.tar.gz"
        archive.write_bytes(data)
        parent = tmp_path / f"p{i}"
        parent.mkdir()
        try:
            extract_archive(archive, parent / "d", trusted)
        except PlugvisorError:
            assert os.listdir(parent) == []
        check_archive(archive, trusted)  # never raises for a damaged archive
