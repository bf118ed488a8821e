"""Static scan of an extracted plugin tree: Bandit's checks plus the profile's compliance check.

The seed's ``OWASPScanner`` is Bandit, driven through its Python API
(:class:`bandit.core.manager.BanditManager`), never re-implemented and never shelled
out to. The seed's ``ComplianceChecker`` is :class:`_ComplianceVisitor`: one walk over
each file's AST that checks it against the plugin's
:class:`~plugvisor.core.profile.SecurityProfile` (imports, calls, forbidden operation
classes, dunder escapes, obfuscation). Untrusted code is only ever *parsed* here (by
:func:`ast.parse` and by Bandit), never imported or executed.

Bandit's extension loading is the expensive part of a scan (~90 ms); it happens once per
process (module import, :func:`_bandit_config`), so a warm worker pays only for the
files it scans. A manager holds per-run results, so each scan builds a fresh (cheap)
manager over the shared config.
"""

from __future__ import annotations

import ast
import builtins
import enum
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugvisor.core.errors import StateError
from plugvisor.core.log import get_logger
from plugvisor.core.profile import ALWAYS_FORBIDDEN, OPERATION_CLASSES

if TYPE_CHECKING:
    from plugvisor.core.profile import SecurityProfile

__all__ = [
    "COMPLIANCE_RULES",
    "Finding",
    "ScanReport",
    "Severity",
    "owasp_category",
    "scan_tree",
]

_log = get_logger(__name__)


class Severity(enum.IntEnum):
    """Severity of a finding, ordered so ``>=`` compares with the review threshold."""

    LOW = 1  #: worth a look; never sends an upload to review under the default threshold
    MEDIUM = 2  #: the profile is broken or a risky API is used: review by default
    HIGH = 3  #: a forbidden operation, an escape attempt or obfuscated code

    @classmethod
    def parse(cls, value: str) -> Severity:
        """``"low"|"medium"|"high"`` (any case; Bandit's ``"UNDEFINED"`` counts as low)."""
        try:
            return cls[value.upper()]
        except KeyError:
            return cls.LOW

    def __str__(self) -> str:
        return self.name.lower()


#: Compliance rules: id -> (name, what it means). Ids sit beside Bandit's ``Bnnn``.
COMPLIANCE_RULES: Mapping[str, tuple[str, str]] = {
    "PV100": ("unparseable", "a Python file that does not parse cannot be checked"),
    "PV101": ("import_not_allowed", "import of a module outside the profile"),
    "PV102": ("call_not_allowed", "call of a function outside the profile's allowed_functions"),
    "PV103": ("forbidden_operation", "an operation class the profile forbids"),
    "PV104": ("dunder_escape", "attribute that leads out of the object graph"),
    "PV105": ("obfuscation", "encoded payload, computed import or computed dunder name"),
    "PV106": ("opaque_code", "compiled or native code shipped in the package"),
}

# OWASP Top 10 (2021) category of a CWE, for the audit report. CWEs not listed fall
# back to A04 (insecure design), the category for "dangerous construct" findings.
_OWASP_BY_CWE: Mapping[int, str] = {
    **dict.fromkeys((22, 73, 200, 276, 377, 378, 732), "A01:2021-Broken Access Control"),
    **dict.fromkeys((261, 319, 326, 327, 328, 330, 338), "A02:2021-Cryptographic Failures"),
    **dict.fromkeys((20, 77, 78, 79, 89, 94, 95, 96, 116), "A03:2021-Injection"),
    **dict.fromkeys((16, 611, 776, 1004), "A05:2021-Security Misconfiguration"),
    **dict.fromkeys((1104,), "A06:2021-Vulnerable and Outdated Components"),
    **dict.fromkeys((259, 295, 297, 798), "A07:2021-Identification and Authentication Failures"),
    **dict.fromkeys((114, 502, 506, 829, 913), "A08:2021-Software and Data Integrity Failures"),
    **dict.fromkeys((117, 223, 778), "A09:2021-Security Logging and Monitoring Failures"),
    **dict.fromkeys((918,), "A10:2021-Server-Side Request Forgery"),
}
_OWASP_DEFAULT = "A04:2021-Insecure Design"


def owasp_category(cwe: int) -> str:
    """The OWASP Top 10 (2021) category a CWE id belongs to (A04 when unmapped)."""
    return _OWASP_BY_CWE.get(cwe, _OWASP_DEFAULT)


@dataclass(frozen=True, order=True)
class Finding:
    """One scan finding; ``rule`` is Bandit's test id (``B602``) or a compliance id (``PV103``)."""

    file: str  # relative to the scanned root, POSIX
    line: int
    rule: str
    name: str  # the rule's readable name (Bandit's test name or COMPLIANCE_RULES' name)
    severity: Severity
    confidence: Severity
    message: str
    cwe: int
    owasp: str
    tool: str  # "bandit" or "compliance"

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in the registry's version report and shown by the audit."""
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": str(self.severity),
            "confidence": str(self.confidence),
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "cwe": self.cwe,
            "owasp": self.owasp,
            "tool": self.tool,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(
            file=str(data["file"]),
            line=int(data["line"]),
            rule=str(data["rule"]),
            name=str(data.get("name", "")),
            severity=Severity.parse(str(data["severity"])),
            confidence=Severity.parse(str(data.get("confidence", "high"))),
            message=str(data["message"]),
            cwe=int(data.get("cwe", 0)),
            owasp=str(data.get("owasp", owasp_category(int(data.get("cwe", 0))))),
            tool=str(data.get("tool", "")),
        )


@dataclass(frozen=True)
class ScanReport:
    """What :func:`scan_tree` found: findings (sorted), the files scanned, and how long it took."""

    findings: tuple[Finding, ...]
    files: tuple[str, ...]
    duration: float
    profile: str = ""
    tools: Mapping[str, str] = field(default_factory=dict)

    def at_or_above(self, severity: Severity | str) -> tuple[Finding, ...]:
        """Findings whose severity is at least ``severity``."""
        floor = severity if isinstance(severity, Severity) else Severity.parse(severity)
        return tuple(f for f in self.findings if f.severity >= floor)

    @property
    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def counts(self) -> dict[str, int]:
        """Number of findings per severity name."""
        out = {str(s): 0 for s in Severity}
        for f in self.findings:
            out[str(f.severity)] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored as the version's report."""
        return {
            "findings": [f.to_dict() for f in self.findings],
            "files": list(self.files),
            "duration": round(self.duration, 6),
            "profile": self.profile,
            "tools": dict(self.tools),
            "counts": self.counts(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            findings=tuple(Finding.from_dict(f) for f in data.get("findings", ())),
            files=tuple(str(f) for f in data.get("files", ())),
            duration=float(data.get("duration", 0.0)),
            profile=str(data.get("profile", "")),
            tools=dict(data.get("tools", {})),
        )


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------

#: Files that would run without being scannable as source (bytecode, native extensions).
_OPAQUE_SUFFIXES = frozenset({".pyc", ".pyo", ".so", ".pyd", ".dylib", ".dll"})
#: Largest Python source scanned; the archive limits (10 MiB) already bound the total.
_MAX_SOURCE_BYTES = 4 * 1024**2


def scan_tree(root: Path, profile: SecurityProfile) -> ScanReport:
    """Scan every file under ``root`` (an extracted plugin version) against ``profile``.

    ``.py`` files go through Bandit and the compliance walk; compiled or native files
    are findings in themselves (PV106). Raises ``StateError("scan_root", ...)`` when
    ``root`` is not a directory. Symlinks are neither followed nor scanned (the archive
    rules refuse them; a tree that has one anyway gets a PV106 finding).
    """
    started = time.perf_counter()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise StateError("scan_root", f"scan root {root} is not a directory", path=str(root))
    sources: list[Path] = []
    findings: list[Finding] = []
    rel_files: list[str] = []
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        rel_files.append(rel)
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode) or path.suffix in _OPAQUE_SUFFIXES:
            # Symlinks, FIFOs (reading one would block the scan) and compiled code are
            # refused by the archive rules; a tree that has one anyway is a finding.
            kind = f"{path.suffix} file" if stat.S_ISREG(mode) else "special file or link"
            findings.append(
                _compliance("PV106", rel, 1, f"{kind} {rel} cannot be checked as source", 506)
            )
        elif path.suffix == ".py":
            sources.append(path)
    own = _own_top_level(root)
    for path in sources:
        rel = path.relative_to(root).as_posix()
        findings.extend(_check_file(path, rel, profile, own))
    findings.extend(_run_bandit(root, sources))
    report = ScanReport(
        findings=tuple(sorted(set(findings))),
        files=tuple(sorted(rel_files)),
        duration=time.perf_counter() - started,
        profile=profile.name,
        tools={"bandit": _bandit_version(), "compliance": "1"},
    )
    _log.info(
        "scan.done", root=str(root), files=len(report.files), findings=len(report.findings),
        duration_ms=round(report.duration * 1000, 2),
    )  # fmt: skip
    return report


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            yield base / name
        for name in dirnames:
            if (base / name).is_symlink():
                yield base / name


def _own_top_level(root: Path) -> frozenset[str]:
    """Top-level module names the plugin itself provides (its package and modules)."""
    names = set()
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name.isidentifier():
            names.add(entry.name)
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names.add(entry.stem)
    return frozenset(names)


# ---------------------------------------------------------------------------------------
# Bandit, kept warm per process
# ---------------------------------------------------------------------------------------

_bandit_lock = threading.Lock()


class _OptionalFormatterFilter(logging.Filter):
    """Drops stevedore's error about Bandit's optional SARIF formatter (``sarif_om``).

    Bandit loads its report formatters at import; the scan uses none of them, so a
    missing optional one is not an error worth an operator's attention. Any other
    plugin that fails to load (a Bandit *test*) is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and isinstance(record.args, tuple) and record.args[0] == "sarif")


@lru_cache(maxsize=1)
def _bandit_config() -> Any:
    """Bandit's default config (all tests), built once per process."""
    stevedore_log = logging.getLogger("stevedore.extension")
    quiet = _OptionalFormatterFilter()
    stevedore_log.addFilter(quiet)
    try:
        from bandit.core import config as b_config  # noqa: PLC0415 -- slow: paid once
        from bandit.core import manager as _  # noqa: F401, PLC0415 -- loads the plugins
    finally:
        stevedore_log.removeFilter(quiet)
    return b_config.BanditConfig()


@lru_cache(maxsize=1)
def _bandit_version() -> str:
    import bandit  # noqa: PLC0415

    return str(getattr(bandit, "__version__", "unknown"))


def warm_up() -> None:
    """Load Bandit's config and plugins now (worker start-up) instead of on the first scan."""
    _bandit_config()


def _run_bandit(root: Path, sources: list[Path]) -> list[Finding]:
    if not sources:
        return []
    config = _bandit_config()  # first: it imports Bandit with the log filter in place
    from bandit.core import manager as b_manager  # noqa: PLC0415 -- imported by the above

    # Bandit's node visitor keeps module-level state in its test set; one scan at a time
    # per process (worker pools are processes, so this never serialises two workers).
    with _bandit_lock:
        # ignore_nosec: the code is the uploader's, so are its comments -- a "# nosec"
        # must not hide a finding from the review it is meant to face.
        mgr = b_manager.BanditManager(config, "file", quiet=True, ignore_nosec=True)
        mgr.files_list = [str(p) for p in sources]
        mgr.run_tests()
        issues = list(mgr.get_issue_list())
        skipped = list(mgr.get_skipped())
    out: list[Finding] = []
    for issue in issues:
        rel = Path(os.path.abspath(issue.fname)).relative_to(root).as_posix()
        cwe = int(getattr(issue.cwe, "id", 0) or 0)
        out.append(
            Finding(
                file=rel,
                line=int(issue.lineno),
                rule=str(issue.test_id),
                name=str(issue.test),
                severity=Severity.parse(str(issue.severity)),
                confidence=Severity.parse(str(issue.confidence)),
                message=str(issue.text),
                cwe=cwe,
                owasp=owasp_category(cwe),
                tool="bandit",
            )
        )
    for fname, reason in skipped:
        # Syntax errors are already PV100 findings of the compliance pass; anything else
        # Bandit could not check must not pass silently.
        if "syntax" not in str(reason):
            rel = Path(os.path.abspath(fname)).relative_to(root).as_posix()
            out.append(_compliance("PV100", rel, 1, f"Bandit could not scan {rel}: {reason}", 0))
    return out


# ---------------------------------------------------------------------------------------
# Compliance: one AST walk per file
# ---------------------------------------------------------------------------------------

# Operation classes come from core/profile.py (one place for the fact); the static check
# adds what the import policy refuses anyway as unlisted modules but that deserves the
# sharper "forbidden operation" verdict here (third-party HTTP clients, server modules).
_EXTRA_OP_MODULES: Mapping[str, str] = {
    "concurrent.futures.process": "subprocess",
    "socketserver": "network",
    "http.server": "network",
    "xmlrpc": "network",
    "requests": "network",
    "urllib3": "network",
    "httpx": "network",
    "aiohttp": "network",
}
_EXTRA_OP_CALLS: Mapping[str, str] = {
    "asyncio.create_subprocess_exec": "subprocess",
    "asyncio.create_subprocess_shell": "subprocess",
    "os.removedirs": "file_write",
    "os.renames": "file_write",
    "os.lchown": "file_write",
    "os.mkfifo": "file_write",
    "os.mknod": "file_write",
    "os.ftruncate": "file_write",
    "builtins.eval": "dynamic_code",
    "builtins.exec": "dynamic_code",
    "builtins.compile": "dynamic_code",
    "types.FunctionType": "dynamic_code",
    "types.CodeType": "dynamic_code",
}
_OP_MODULES: Mapping[str, str] = {
    **{mod: op.name for op in OPERATION_CLASSES.values() for mod in op.modules},
    **_EXTRA_OP_MODULES,
}
_OP_CALLS: Mapping[str, str] = {
    **{fn: op.name for op in OPERATION_CLASSES.values() for fn in op.functions},
    **_EXTRA_OP_CALLS,
}
#: Modules no profile allows (interpreter internals): importing one is an escape attempt.
_INTERPRETER_MODULES = ALWAYS_FORBIDDEN.modules

# Write-capable methods whose receiver type is unknown but whose names are unambiguous.
_WRITE_METHODS = frozenset({"write_text", "write_bytes"})
_OPENERS = frozenset({"open", "io.open", "builtins.open", "codecs.open", "os.open"})

# Attributes that lead from an object to interpreter internals (SPEC §5).
_ESCAPE_ATTRS = frozenset(
    {
        "__subclasses__", "__globals__", "__builtins__", "__code__",
        "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace",
        "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code",
        "tb_frame", "co_code",
    }
)  # fmt: skip
# Frame access by call rather than attribute.
_FRAME_CALLS = frozenset(
    {"sys._getframe", "sys._current_frames", "inspect.currentframe", "inspect.stack",
     "inspect.trace", "inspect.getouterframes", "inspect.getinnerframes", "sys.settrace",
     "sys.setprofile", "sys.addaudithook", "gc.get_referrers", "gc.get_objects"}
)  # fmt: skip
# Functions that turn an encoded literal into bytes/text.
_DECODERS = frozenset(
    {"base64.b64decode", "base64.b32decode", "base64.b16decode", "base64.a85decode",
     "base64.b85decode", "base64.standard_b64decode", "base64.urlsafe_b64decode",
     "base64.decodebytes", "binascii.unhexlify", "binascii.a2b_hex", "binascii.a2b_base64",
     "bytes.fromhex", "bytearray.fromhex", "codecs.decode", "zlib.decompress",
     "gzip.decompress", "bz2.decompress", "lzma.decompress", "marshal.loads", "pickle.loads"}
)  # fmt: skip
_EXECUTORS = frozenset({"eval", "exec", "compile", "builtins.eval", "builtins.exec"})
_IMPORTERS = frozenset({"__import__", "builtins.__import__", "importlib.import_module",
                        "importlib.__import__"})  # fmt: skip
_ATTR_BY_NAME = frozenset({"getattr", "setattr", "delattr", "hasattr", "builtins.getattr",
                           "object.__getattribute__", "operator.attrgetter"})  # fmt: skip
_ENCODED = re.compile(r"^(?:[A-Za-z0-9+/=_\-\s]{40,}|(?:[0-9a-fA-F]{2}|\\x[0-9a-fA-F]{2}){20,})$")
_BUILTIN_NAMES = frozenset(dir(builtins))
# Builtins a string annotation has no business naming (it would be evaluated with them).
_ANNOTATION_TRAPS = frozenset(
    {"getattr", "setattr", "delattr", "eval", "exec", "compile", "__import__", "open", "vars",
     "globals", "locals", "breakpoint", "input", "__builtins__"}
)  # fmt: skip
# A str.format replacement field ("{0.a.b}", "{x[k].attr!r}") and the attributes in it.
_FORMAT_FIELD = re.compile(r"\{([^{}]*)\}")
_FIELD_ATTR = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)")
_WRITE_MODE = re.compile(r"[wax+]")

_CWE_BY_OP: Mapping[str, int] = {
    "subprocess": 78,
    "network": 918,
    "file_write": 73,
    "dynamic_code": 95,
    "native_code": 114,
}


def _compliance(rule: str, file: str, line: int, message: str, cwe: int) -> Finding:
    name, _ = COMPLIANCE_RULES[rule]
    severity = {
        "PV100": Severity.HIGH,
        "PV101": Severity.MEDIUM,
        "PV102": Severity.MEDIUM,
        "PV103": Severity.HIGH,
        "PV104": Severity.HIGH,
        "PV105": Severity.HIGH,
        "PV106": Severity.HIGH,
    }[rule]
    return Finding(
        file=file,
        line=line,
        rule=rule,
        name=name,
        severity=severity,
        confidence=Severity.HIGH,
        message=message,
        cwe=cwe,
        owasp=owasp_category(cwe),
        tool="compliance",
    )


def _check_file(
    path: Path, rel: str, profile: SecurityProfile, own: frozenset[str]
) -> list[Finding]:
    try:
        size = path.stat().st_size
        if size > _MAX_SOURCE_BYTES:
            return [
                _compliance("PV100", rel, 1, f"{rel} is larger than {_MAX_SOURCE_BYTES} B", 400)
            ]
        tree = ast.parse(path.read_bytes(), filename=rel)
    except SyntaxError as exc:
        return [_compliance("PV100", rel, exc.lineno or 1, f"{rel} does not parse: {exc.msg}", 0)]
    except (OSError, ValueError) as exc:  # ValueError: null bytes in source
        return [_compliance("PV100", rel, 1, f"{rel} cannot be read as Python: {exc}", 0)]
    except (RecursionError, MemoryError):
        return [_compliance("PV100", rel, 1, f"{rel} is nested too deeply to check", 674)]
    visitor = _ComplianceVisitor(rel, profile, own)
    try:
        visitor.visit(tree)
    except RecursionError:
        # Nesting no honest plugin needs, built to exhaust a checker's stack: a finding,
        # never a crashed scan that lets the file through unchecked.
        return [_compliance("PV100", rel, 1, f"{rel} is nested too deeply to check", 674)]
    return visitor.finish()


def _module_allowed(module: str, allowed: frozenset[str]) -> bool:
    """``a.b.c`` is allowed when it or one of its parents is an allowed module."""
    parts = module.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def _op_class_of_module(module: str) -> str | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        op = _OP_MODULES.get(".".join(parts[:i]))
        if op:
            return op
    return None


def _fold_str(node: ast.AST) -> str | None:
    """The value of a string expression built only from constants, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold_str(node.left), _fold_str(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = [_fold_str(v) for v in node.values]
        return None if any(p is None for p in parts) else "".join(p or "" for p in parts)
    if (  # "".join(["__", "globals", "__"])
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.List | ast.Tuple)
    ):
        sep = _fold_str(node.func.value)
        items = [_fold_str(e) for e in node.args[0].elts]
        if sep is not None and all(i is not None for i in items):
            return sep.join(i or "" for i in items)
    return None


def _str_fragments(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


@dataclass
class _PendingCall:
    chain: tuple[str, ...]  # Name then attributes: ("json", "dumps")
    line: int
    node: ast.Call


class _ComplianceVisitor(ast.NodeVisitor):
    """The profile check: one walk records facts; :meth:`finish` resolves names once.

    Name resolution needs every import and binding of the file, which may come after
    the use (a function body that uses a module imported at the bottom), so calls are
    recorded during the walk and judged at the end instead of walking the tree twice.
    """

    def __init__(self, rel: str, profile: SecurityProfile, own: frozenset[str]) -> None:
        self.rel = rel
        self.profile = profile
        self.forbidden = frozenset(profile.forbidden_operations)
        self.allowed_modules = frozenset(profile.allowed_modules())
        self.own = own
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> qualified module or module.attr
        self.bound: set[str] = set()  # every name the file binds (shadows builtins)
        self.calls: list[_PendingCall] = []
        self.escape_strings: list[Finding] = []

    # ---- helpers ---------------------------------------------------------------------
    def _add(self, rule: str, node: ast.AST, message: str, cwe: int) -> None:
        line = int(getattr(node, "lineno", 1) or 1)
        self.findings.append(_compliance(rule, self.rel, line, message, cwe))

    def _forbid(self, op: str | None, node: ast.AST, what: str) -> bool:
        """Report ``what`` as a forbidden operation when ``op`` is forbidden; True if so."""
        if op is not None and op in self.forbidden:
            self._add(
                "PV103", node, f"{what}: operation class {op!r} is forbidden by profile "
                f"{self.profile.name!r}", _CWE_BY_OP.get(op, 693),
            )  # fmt: skip
            return True
        return False

    def _check_import(self, module: str, node: ast.AST) -> None:
        top = module.split(".", maxsplit=1)[0]
        # __future__ imports are compiler directives, not code the plugin can reach.
        if top in self.own or top == "__future__":
            return
        if self._forbid(_op_class_of_module(module), node, f"import of {module}"):
            return
        if _module_allowed(module, _INTERPRETER_MODULES):
            self._add("PV104", node, f"import of {module} reaches interpreter internals", 913)
            return
        if not _module_allowed(module, self.allowed_modules):
            self._add(
                "PV101", node, f"import of {module} is outside profile {self.profile.name!r} "
                "(allowed_functions names no entry of that module)", 829,
            )  # fmt: skip

    # ---- imports and bindings --------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_import(alias.name, node)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative import: the plugin's own package
            for alias in node.names:
                self.bound.add(alias.asname or alias.name)
            return
        module = node.module or ""
        for alias in node.names:
            local = alias.asname or alias.name
            if alias.name == "*":
                self._check_import(module, node)
                continue
            # `from os import path` may import a module, `from json import dumps` a
            # function: checking the qualified name covers both (a parent allows it).
            qual = f"{module}.{alias.name}"
            self._check_import(qual, node)
            if module.split(".")[0] not in self.own:
                self.aliases[local] = qual
            else:
                self.bound.add(local)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.bound.add(node.id)
        elif node.id == "__builtins__":
            self._add("PV104", node, "reference to __builtins__", 913)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def _bind_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.bound.add(node.name)
        if not isinstance(node, ast.ClassDef):
            self._check_annotation(node.returns)
        self.generic_visit(node)

    visit_FunctionDef = _bind_def
    visit_AsyncFunctionDef = _bind_def
    visit_ClassDef = _bind_def

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.bound.update(node.names)

    # ---- attribute and subscript escapes ---------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _ESCAPE_ATTRS:
            self._add("PV104", node, f"access to .{node.attr} leads out of the object graph", 913)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str):
            return
        if node.value in _ESCAPE_ATTRS:
            # The name as data, e.g. handed to an alias of getattr the check cannot see.
            self._escape_string("PV104", node, f"string {node.value!r} names an escape attribute")
        # "{0.__globals__}".format(f): str.format walks attributes named in the string.
        if "{" in node.value:
            for fmt_field in _FORMAT_FIELD.findall(node.value):
                for attr in _FIELD_ATTR.findall(fmt_field):
                    if attr in _ESCAPE_ATTRS:
                        self._add("PV104", node, f"format string reaches .{attr}", 913)

    def _spelled(self, node: ast.BinOp | ast.JoinedStr) -> None:
        value = _fold_str(node)
        if value is not None and value in _ESCAPE_ATTRS:
            self._escape_string("PV105", node, f"string built to spell {value!r}")
            return  # its pieces are not findings of their own
        self.generic_visit(node)

    visit_BinOp = _spelled
    visit_JoinedStr = _spelled

    def _escape_string(self, rule: str, node: ast.AST, message: str) -> None:
        """Kept apart: reported in finish() only where no more specific finding exists."""
        line = int(getattr(node, "lineno", 1) or 1)
        self.escape_strings.append(_compliance(rule, self.rel, line, message, 913))

    def _check_annotation(self, ann: ast.AST | None) -> None:
        """A string annotation naming getattr & co: typing.get_type_hints() evaluates it
        with the interpreter's real builtins, past any restricted ones."""
        if not (isinstance(ann, ast.Constant) and isinstance(ann.value, str)):
            return
        try:
            parsed = ast.parse(ann.value.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError):
            return
        for sub in ast.walk(parsed):
            if isinstance(sub, ast.Call) or (
                isinstance(sub, ast.Name) and sub.id in _ANNOTATION_TRAPS
            ):
                self._add("PV105", ann, f"string annotation {ann.value!r} evaluates code "
                          "with the real builtins (typing.get_type_hints)", 95)  # fmt: skip
                return

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = _fold_str(node.slice)
        if key is not None and key in _ESCAPE_ATTRS:
            self._add("PV104", node, f"subscript [{key!r}] reaches interpreter internals", 913)
        self.generic_visit(node)

    # ---- calls -----------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        chain = _chain(node.func)
        if chain is not None:
            self.calls.append(_PendingCall(chain, node.lineno, node))
        elif isinstance(node.func, ast.Attribute) and node.func.attr in _WRITE_METHODS:
            self._forbid("file_write", node, f".{node.func.attr}() writes a file")
        self.generic_visit(node)

    # ---- resolution ------------------------------------------------------------------
    def _qualify(self, chain: tuple[str, ...]) -> str | None:
        """Fully qualified name of a call target, or None when not statically knowable."""
        head, rest = chain[0], chain[1:]
        if head in self.aliases:
            return ".".join((self.aliases[head], *rest))
        if head in self.bound:
            return None  # a local function, variable or own-package name
        if head in _BUILTIN_NAMES:
            return ".".join(chain) if rest else head
        return None

    def finish(self) -> list[Finding]:
        """Judge the recorded calls now that every import and binding is known."""
        for call in self.calls:
            qual = self._qualify(call.chain)
            if qual is None:
                # Attribute calls on locals: only write methods are knowable.
                if call.chain[-1] in _WRITE_METHODS:
                    self._forbid("file_write", call.node, f".{call.chain[-1]}() writes a file")
                continue
            self._judge_call(qual, call.node)
        flagged = {f.line for f in self.findings if f.rule in ("PV104", "PV105")}
        for found in self.escape_strings:
            if found.line not in flagged:
                self.findings.append(found)
                flagged.add(found.line)
        return self.findings

    def _judge_call(self, qual: str, node: ast.Call) -> None:
        if qual in _FRAME_CALLS:
            self._add("PV104", node, f"{qual}() reaches interpreter frames or hooks", 913)
            return
        if qual in _IMPORTERS:
            self._judge_dynamic_import(qual, node)
            return
        if qual in _ATTR_BY_NAME:
            self._judge_getattr(qual, node)
        if qual in _EXECUTORS and self._runs_encoded(node):
            self._add("PV105", node, f"{qual}() runs a decoded payload", 506)
            return
        if qual in _DECODERS:
            self._judge_decoder(qual, node)
        if qual in _OPENERS:
            self._judge_open(qual, node)
            return
        op = _OP_CALLS.get(qual) or _op_class_of_module(qual.rpartition(".")[0] or qual)
        if self._forbid(op, node, f"call of {qual}()"):
            return
        if qual.split(".", maxsplit=1)[0] in self.own or self._harmless_builtin(qual):
            return
        if not self.profile.allows_call(qual):
            self._add(
                "PV102", node, f"call of {qual}() is not in allowed_functions of profile "
                f"{self.profile.name!r}", 749,
            )  # fmt: skip

    def _harmless_builtin(self, qual: str) -> bool:
        """Builtin exception classes, and methods of an allowed builtin type.

        Raising ``ValueError(...)`` is not a capability; and ``dict.fromkeys`` is as safe
        as the ``dict`` the profile allows when the profile lists no ``dict.*`` entry.
        """
        head, _, rest = qual.partition(".")
        obj = getattr(builtins, head, None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return True
        return bool(rest) and isinstance(obj, type) and self.profile.allows_call(head)

    def _judge_dynamic_import(self, qual: str, node: ast.Call) -> None:
        name = _fold_str(node.args[0]) if node.args else None
        if name is None:
            self._add("PV105", node, f"{qual}() with a computed module name", 829)
        elif not self._forbid(_OP_CALLS.get(qual), node, f"{qual}({name!r})"):
            self._check_import(name, node)

    def _judge_getattr(self, qual: str, node: ast.Call) -> None:
        position = 0 if qual == "operator.attrgetter" else 1  # attrgetter(name), getattr(o, name)
        if len(node.args) <= position:
            return
        name_node = node.args[position]
        folded = _fold_str(name_node)
        if folded is not None:
            # attrgetter("a.__globals__") walks a dotted path: any part may escape.
            if any(part in _ESCAPE_ATTRS for part in folded.split(".")):
                kind = "PV104" if isinstance(name_node, ast.Constant) else "PV105"
                self._add(kind, node, f"{qual}() of {folded!r} reaches interpreter internals", 913)
            return
        if any(f.startswith("__") or f.endswith("__") for f in _str_fragments(name_node)):
            self._add("PV105", node, f"{qual}() with a computed dunder name", 913)

    def _judge_decoder(self, qual: str, node: ast.Call) -> None:
        if any(_is_encoded_literal(a) for a in node.args):
            # Embedded data is legitimate on its own (images, fixtures); low unless run.
            self.findings.append(
                Finding(
                    file=self.rel,
                    line=node.lineno,
                    rule="PV105",
                    name="obfuscation",
                    severity=Severity.LOW,
                    confidence=Severity.MEDIUM,
                    message=f"{qual}() of a long encoded literal",
                    cwe=506,
                    owasp=owasp_category(506),
                    tool="compliance",
                )
            )

    def _runs_encoded(self, node: ast.Call) -> bool:
        """True when an eval/exec argument decodes something (a decoder call or .decode())."""
        for arg in node.args[:1]:
            for sub in ast.walk(arg):
                if not isinstance(sub, ast.Call):
                    continue
                chain = _chain(sub.func)
                if chain is None:
                    continue
                qual = self._qualify(chain) or ".".join(chain)
                if qual in _DECODERS or chain[-1] in {"decode", "fromhex", "unhexlify"}:
                    return True
        return False

    def _judge_open(self, qual: str, node: ast.Call) -> None:
        if qual == "os.open":
            self._forbid("file_write", node, "os.open()")
            return
        mode_node: ast.AST | None = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "mode":
                mode_node = kw.value
        if mode_node is None:
            return  # read-only text mode
        mode = _fold_str(mode_node)
        if mode is None:
            self._forbid("file_write", node, f"{qual}() with a computed mode")
        elif _WRITE_MODE.search(mode):
            self._forbid("file_write", node, f"{qual}() with write mode {mode!r}")


def _chain(node: ast.AST) -> tuple[str, ...] | None:
    """``a.b.c`` as ("a", "b", "c") when the expression is a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return tuple(reversed(parts))
    return None


def _is_encoded_literal(node: ast.AST) -> bool:
    value: Any = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return isinstance(value, str) and bool(_ENCODED.match(value))


def findings_summary(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """Short JSON rows (rule, severity, file, line) for logs and job results."""
    return [
        {"rule": f.rule, "severity": str(f.severity), "file": f.file, "line": f.line}
        for f in findings
    ]
