"""The two documents of a plugin package: ``plugin.yaml`` and ``MANIFEST.json`` (SPEC §3).

Both are parsed once, at the edge, into frozen objects; every refusal is a
``ManifestError(rule, message, field=...)`` whose ``field`` names what is wrong
(``version``, ``requires.formatter``, ``files[3].sha256``). YAML is read with
``yaml.safe_load`` only, after refusing anchors and aliases: a handful of aliases can
expand into an exponentially large ``config`` once it is serialised for the plugin.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from plugvisor.core.errors import ManifestError, VersionError
from plugvisor.core.semver import Version, VersionRange, parse_range, parse_version

__all__ = [
    "MANIFEST_NAME",
    "MAX_PATH_BYTES",
    "MAX_PLUGIN_YAML_BYTES",
    "NAME_RE",
    "PLUGIN_YAML",
    "SIGNATURE_NAME",
    "SUPPORTED_API",
    "FileEntry",
    "Manifest",
    "PluginMeta",
    "canonical_json",
    "check_member_path",
    "parse_manifest",
    "parse_plugin_yaml",
]

#: Plugin API versions this host implements (plugin.yaml ``api``).
SUPPORTED_API: Final = frozenset({1})
#: Plugin and profile names: ``^[a-z][a-z0-9_-]{0,63}$``.
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PLUGIN_YAML: Final = "plugin.yaml"
MANIFEST_NAME: Final = "MANIFEST.json"
SIGNATURE_NAME: Final = "MANIFEST.sig"
#: Longest member path accepted (bytes); components are limited to 255 like most file systems.
MAX_PATH_BYTES: Final = 1024
#: plugin.yaml is a small descriptor; anything bigger is refused before parsing.
MAX_PLUGIN_YAML_BYTES: Final = 64 * 1024
_MAX_DESCRIPTION: Final = 4096
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PLUGIN_KEYS: Final = frozenset(
    {"name", "version", "api", "entrypoint", "profile", "requires", "description", "config"}
)
_MANIFEST_KEYS: Final = frozenset({"name", "version", "files"})
_FILE_KEYS: Final = frozenset({"path", "sha256", "size"})


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of SPEC §3 (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def check_member_path(path: str) -> str | None:
    """Why ``path`` is not a relative, normalised POSIX path inside the root, or None."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if "\x00" in path:
        return "NUL in path"
    parts = path.split("/")
    if ".." in parts:
        return "'..' component"
    if any(p in ("", ".") for p in parts):
        return "not a normalised path (empty or '.' component)"
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or any(
        len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts
    ):
        return f"too long (at most {MAX_PATH_BYTES} bytes, 255 per component)"
    return None


def _is_identifier_path(text: str) -> bool:
    return all(p.isidentifier() and not keyword.iskeyword(p) for p in text.split("."))


@dataclass(frozen=True)
class PluginMeta:
    """plugin.yaml, validated."""

    name: str
    version: Version
    api: int
    entrypoint: str
    profile: str = "default"
    requires: Mapping[str, VersionRange] = field(default_factory=dict)
    description: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def entry_module(self) -> str:
        """The dotted module part of ``entrypoint``."""
        return self.entrypoint.partition(":")[0]

    @property
    def entry_attribute(self) -> str:
        """The attribute part of ``entrypoint``."""
        return self.entrypoint.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible form (versions and ranges as strings)."""
        return {
            "name": self.name,
            "version": str(self.version),
            "api": self.api,
            "entrypoint": self.entrypoint,
            "profile": self.profile,
            "requires": {k: str(v) for k, v in self.requires.items()},
            "description": self.description,
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class FileEntry:
    """One regular-file member of the archive as MANIFEST.json lists it."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """MANIFEST.json: the name, version and every file (sorted by path) of a package."""

    name: str
    version: Version
    files: tuple[FileEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": str(self.version),
            "files": [f.to_dict() for f in self.files],
        }

    def to_bytes(self) -> bytes:
        """The canonical MANIFEST.json bytes (what is signed)."""
        return canonical_json(self.to_dict())

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}


# ---- plugin.yaml -----------------------------------------------------------------


def _load_yaml(data: bytes) -> Any:
    if len(data) > MAX_PLUGIN_YAML_BYTES:
        raise ManifestError(
            "too_large",
            f"plugin.yaml is {len(data)} bytes, more than {MAX_PLUGIN_YAML_BYTES}",
            field=PLUGIN_YAML,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            "not_yaml", f"plugin.yaml is not UTF-8: {exc}", field=PLUGIN_YAML
        ) from exc
    try:
        # Tokenising builds no objects, so refusing aliases here is safe and cheap.
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
                raise ManifestError(
                    "not_yaml",
                    "plugin.yaml must not use YAML anchors or aliases",
                    field=PLUGIN_YAML,
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(
            "not_yaml", f"plugin.yaml is not valid YAML: {exc}", field=PLUGIN_YAML
        ) from exc
    except RecursionError as exc:  # absurdly deep nesting
        raise ManifestError("not_yaml", "plugin.yaml nests too deeply", field=PLUGIN_YAML) from exc


def _require_str(doc: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    if key not in doc:
        if required:
            raise ManifestError("missing_field", f"plugin.yaml: {key} is required", field=key)
        return None
    value = doc[key]
    if not isinstance(value, str):
        raise ManifestError(
            "invalid_field",
            f"plugin.yaml: {key} must be a string, not {type(value).__name__} ({value!r})",
            field=key,
        )
    return value


def _check_name(value: str, fld: str) -> str:
    if not NAME_RE.match(value):
        raise ManifestError(
            "invalid_field",
            f"plugin.yaml: {fld} {value!r} must match {NAME_RE.pattern}",
            field=fld,
        )
    return value


def _parse_requires(raw: Any, own_name: str) -> dict[str, VersionRange]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(
            "invalid_field",
            "plugin.yaml: requires must be a mapping of plugin name to version range",
            field="requires",
        )
    out: dict[str, VersionRange] = {}
    for dep, rng in raw.items():
        fld = f"requires.{dep}"
        if not isinstance(dep, str) or not NAME_RE.match(dep):
            raise ManifestError(
                "invalid_field",
                f"plugin.yaml: requires key {dep!r} must be a plugin name ({NAME_RE.pattern})",
                field=fld,
            )
        if dep == own_name:
            raise ManifestError(
                "invalid_field", "plugin.yaml: a plugin cannot require itself", field=fld
            )
        if not isinstance(rng, str):
            raise ManifestError(
                "invalid_field",
                f"plugin.yaml: {fld} must be a quoted range string such as '>=1.0,<2', not {rng!r}",
                field=fld,
            )
        try:
            out[dep] = parse_range(rng)
        except VersionError as exc:
            raise ManifestError(
                "invalid_field", f"plugin.yaml: {fld}: {exc.message}", field=fld
            ) from exc
    return out


def _parse_config(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ManifestError(
            "invalid_field",
            "plugin.yaml: config must be a mapping with string keys",
            field="config",
        )
    try:
        # The plugin receives config as JSON: dates, NaN and non-string keys would not survive.
        json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ManifestError(
            "invalid_field", f"plugin.yaml: config must be JSON-compatible: {exc}", field="config"
        ) from exc
    return dict(raw)


def parse_plugin_yaml(data: bytes) -> PluginMeta:
    """Parse and validate plugin.yaml; every error names its field."""
    doc = _load_yaml(data)
    if not isinstance(doc, dict):
        raise ManifestError(
            "not_mapping", "plugin.yaml must be a mapping of fields", field=PLUGIN_YAML
        )
    for key in doc:
        if key not in _PLUGIN_KEYS:
            raise ManifestError(
                "unknown_field",
                f"plugin.yaml: unknown field {key!r} (known: {', '.join(sorted(_PLUGIN_KEYS))})",
                field=str(key),
            )
    name = _check_name(_require_str(doc, "name") or "", "name")
    version_text = _require_str(doc, "version") or ""
    try:
        version = parse_version(version_text)
    except VersionError as exc:
        raise ManifestError(
            "invalid_field", f"plugin.yaml: version: {exc.message}", field="version"
        ) from exc
    if "api" not in doc:
        raise ManifestError("missing_field", "plugin.yaml: api is required", field="api")
    api = doc["api"]
    if not isinstance(api, int) or isinstance(api, bool):
        raise ManifestError(
            "invalid_field", f"plugin.yaml: api must be an integer, not {api!r}", field="api"
        )
    if api not in SUPPORTED_API:
        raise ManifestError(
            "unsupported_api",
            f"plugin.yaml: api {api} is not supported by this host "
            f"(supported: {', '.join(map(str, sorted(SUPPORTED_API)))}); "
            "build the plugin against a supported API or upgrade plugvisor",
            field="api",
        )
    entrypoint = _require_str(doc, "entrypoint") or ""
    module, sep, attr = entrypoint.partition(":")
    if not sep or not _is_identifier_path(module) or not _is_identifier_path(attr) or "." in attr:
        raise ManifestError(
            "invalid_field",
            f"plugin.yaml: entrypoint {entrypoint!r} must be 'module:attribute' "
            "(dotted module, one attribute, Python identifiers)",
            field="entrypoint",
        )
    profile = _check_name(_require_str(doc, "profile", required=False) or "default", "profile")
    description = _require_str(doc, "description", required=False) or ""
    if len(description) > _MAX_DESCRIPTION:
        raise ManifestError(
            "invalid_field",
            f"plugin.yaml: description is longer than {_MAX_DESCRIPTION} characters",
            field="description",
        )
    return PluginMeta(
        name=name,
        version=version,
        api=api,
        entrypoint=entrypoint,
        profile=profile,
        requires=_parse_requires(doc.get("requires"), name),
        description=description,
        config=_parse_config(doc.get("config")),
    )


# ---- MANIFEST.json ---------------------------------------------------------------


def _file_entry(raw: Any, index: int) -> FileEntry:
    where = f"files[{index}]"
    if not isinstance(raw, dict):
        raise ManifestError(
            "invalid_field", f"MANIFEST.json: {where} must be an object", field=where
        )
    for key in _FILE_KEYS:
        if key not in raw:
            raise ManifestError(
                "missing_field", f"MANIFEST.json: {where}.{key} is required", field=f"{where}.{key}"
            )
    for key in raw:
        if key not in _FILE_KEYS:
            raise ManifestError(
                "unknown_field",
                f"MANIFEST.json: unknown field {where}.{key}",
                field=f"{where}.{key}",
            )
    path, digest, size = raw["path"], raw["sha256"], raw["size"]
    if not isinstance(path, str) or (why := check_member_path(path)) is not None:
        raise ManifestError(
            "invalid_field",
            f"MANIFEST.json: {where}.path {path!r} must be a relative POSIX path inside the "
            f"root without './' ({why if isinstance(path, str) else 'not a string'})",
            field=f"{where}.path",
        )
    if path in (MANIFEST_NAME, SIGNATURE_NAME):
        raise ManifestError(
            "invalid_field",
            f"MANIFEST.json: {where}.path must not list {path}",
            field=f"{where}.path",
        )
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ManifestError(
            "invalid_field",
            f"MANIFEST.json: {where}.sha256 must be 64 lower-case hex digits",
            field=f"{where}.sha256",
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(
            "invalid_field",
            f"MANIFEST.json: {where}.size must be a non-negative integer",
            field=f"{where}.size",
        )
    return FileEntry(path, digest, size)


def parse_manifest(data: bytes) -> Manifest:
    """Parse MANIFEST.json, which must be canonical JSON with files sorted by path."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(
            "not_json", f"MANIFEST.json is not UTF-8 JSON: {exc}", field=MANIFEST_NAME
        ) from exc
    if not isinstance(doc, dict):
        raise ManifestError(
            "not_mapping", "MANIFEST.json must be a JSON object", field=MANIFEST_NAME
        )
    for key in _MANIFEST_KEYS:
        if key not in doc:
            raise ManifestError("missing_field", f"MANIFEST.json: {key} is required", field=key)
    for key in doc:
        if key not in _MANIFEST_KEYS:
            raise ManifestError("unknown_field", f"MANIFEST.json: unknown field {key!r}", field=key)
    name = doc["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(
            "invalid_field",
            f"MANIFEST.json: name {name!r} must match {NAME_RE.pattern}",
            field="name",
        )
    if not isinstance(doc["version"], str):
        raise ManifestError(
            "invalid_field", "MANIFEST.json: version must be a string", field="version"
        )
    try:
        version = parse_version(doc["version"])
    except VersionError as exc:
        raise ManifestError(
            "invalid_field", f"MANIFEST.json: version: {exc.message}", field="version"
        ) from exc
    if not isinstance(doc["files"], list):
        raise ManifestError("invalid_field", "MANIFEST.json: files must be a list", field="files")
    files = tuple(_file_entry(raw, i) for i, raw in enumerate(doc["files"]))
    for i in range(1, len(files)):
        if files[i - 1].path >= files[i].path:
            rule = "duplicate path" if files[i - 1].path == files[i].path else "not sorted"
            raise ManifestError(
                "invalid_field",
                f"MANIFEST.json: files[{i}].path {files[i].path!r}: {rule} (paths must be "
                "unique and sorted)",
                field=f"files[{i}].path",
            )
    manifest = Manifest(name=name, version=version, files=tuple(files))
    if manifest.to_bytes() != data:
        # One byte string per manifest: no duplicate keys, whitespace or key order games.
        raise ManifestError(
            "not_canonical",
            "MANIFEST.json is not canonical JSON (sorted keys, no spaces, UTF-8, no newline)",
            field=MANIFEST_NAME,
        )
    return manifest
