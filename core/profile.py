"""Security profiles: the per-plugin limits and policy read from ``profiles/<name>.yaml``.

A profile is data (YAML, parsed with ``yaml.safe_load`` only) turned once, at the edge, into
a frozen :class:`SecurityProfile`. Every layer of the sandbox reads the same object: the OS
layer takes the limits (``memory_limit``, ``max_execution_time``) and the forbidden
operation classes, the in-process policy (``sandbox/policy.py``) takes the import
list and the audit rules, the static check at upload checks the AST against
``allows_call`` and the same operation classes.

``allowed_functions`` entries are one of:

* ``len`` — a builtin (names without a dot are builtins);
* ``str.upper`` / ``str.*`` — a method of a builtin type (the head is a builtin type name);
  informational for the in-process layer (methods of builtin values cannot be intercepted
  cheaply), checked by the static check;
* ``json.*`` — every public name of a module;
* ``time.time`` — one name of a module (the module is everything before the last dot, so
  ``os.path.join`` names ``join`` of ``os.path``).

Operation classes (``forbidden_operations``) and what enforces each are documented in
:data:`OPERATION_CLASSES`; :data:`ALWAYS_FORBIDDEN` lists the interpreter escapes that no
profile can allow.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugvisor.core.config import parse_size
from plugvisor.core.errors import ProfileError

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = [
    "ALWAYS_FORBIDDEN",
    "MIN_MEMORY_LIMIT",
    "OPERATION_CLASSES",
    "PROFILE_NAME",
    "OperationClass",
    "SecurityProfile",
    "bundled_profiles_dir",
    "load_profile",
    "parse_profile",
]

#: Profile names double as file names: no dots, slashes or other path tricks.
PROFILE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?$")
#: The interpreter needs ~24 MiB of address space to start (PLATFORM-NOTES); a lower
#: RLIMIT_AS can hang it retrying mmap, so such a profile is refused outright.
MIN_MEMORY_LIMIT = 24 * 1024**2
_KEYS = (
    "memory_limit",
    "max_execution_time",
    "max_files",
    "max_db_queries",
    "allowed_functions",
    "forbidden_operations",
)
_BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass(frozen=True)
class OperationClass:
    """One forbiddable class of operations and everything that realises it.

    ``audit_events`` are PEP 578 events the in-process hook blocks (a trailing ``.``
    means "every event with this prefix"); ``modules`` may not be imported and
    ``functions`` (``module.name`` or builtin names) may not be allowed by the same
    profile; ``enforced_by`` says which layers stop it, strongest first.
    """

    name: str
    description: str
    audit_events: frozenset[str]
    modules: frozenset[str]
    functions: frozenset[str]
    enforced_by: tuple[str, ...]


def _op(
    name: str,
    description: str,
    *,
    events: str,
    modules: str,
    functions: str,
    enforced_by: tuple[str, ...],
) -> OperationClass:
    return OperationClass(
        name,
        description,
        frozenset(events.split()),
        frozenset(modules.split()),
        frozenset(functions.split()),
        enforced_by,
    )


#: Every operation class a profile may forbid, mapped to what realises it and what enforces it.
OPERATION_CLASSES: Mapping[str, OperationClass] = {
    op.name: op
    for op in (
        _op(
            "file_write",
            "creating, writing, removing or re-permissioning files",
            # Plus the "open" event with a write mode, which the hook checks by mode.
            events="os.remove os.rename os.rmdir os.mkdir os.chmod os.chown os.link os.symlink "
            "os.truncate os.utime os.chflags os.lchflags os.setxattr os.removexattr "
            "os.mkfifo os.mknod shutil.copyfile shutil.copymode shutil.copystat "
            "shutil.copytree shutil.move shutil.rmtree shutil.make_archive "
            "shutil.unpack_archive",
            modules="shutil tempfile",
            functions="os.remove os.unlink os.rename os.replace os.rmdir os.mkdir os.makedirs "
            "os.chmod os.chown os.link os.symlink os.truncate os.utime",
            enforced_by=(
                "OS: Landlock read-only file system (data_dir writable only when allowed)",
                "audit hook: open() with a write mode, os.*/shutil.* file events",
                "static check: open(..., 'w'), os.remove & co",
            ),
        ),
        _op(
            "subprocess",
            "running programs, creating or signalling processes (the seed's `exec`)",
            events="subprocess.Popen os.system os.exec os.posix_spawn os.spawn os.fork "
            "os.forkpty os.kill os.killpg os.startfile pty.spawn",
            modules="subprocess _posixsubprocess pty multiprocessing",
            functions="os.system os.popen os.fork os.forkpty os.kill os.killpg os.execv "
            "os.execve os.execl os.execle os.execlp os.execlpe os.execvp os.execvpe "
            "os.posix_spawn os.posix_spawnp os.spawnv os.spawnve os.spawnl os.spawnle",
            enforced_by=(
                "OS: seccomp denies execve/fork, RLIMIT_NPROC, no-new-privileges",
                "audit hook: subprocess.Popen, os.system, os.exec, os.posix_spawn, os.fork",
                "static check: subprocess/os.system imports and calls",
            ),
        ),
        _op(
            "network",
            "opening sockets, resolving names, talking to other hosts",
            events="socket.__new__ socket.connect socket.bind socket.sendto socket.sendmsg "
            "socket.getaddrinfo socket.gethostbyname socket.gethostbyaddr socket.getnameinfo "
            "socket.gethostbyname_ex urllib.Request http.client.connect ftplib.connect "
            "smtplib.connect poplib.connect imaplib.open nntplib.connect telnetlib.Telnet.open",
            modules="socket _socket ssl _ssl http.client urllib.request ftplib smtplib poplib "
            "imaplib nntplib telnetlib asyncio select selectors",
            functions="",
            enforced_by=(
                "OS: seccomp refuses AF_INET/AF_INET6 sockets, Landlock denies TCP, private "
                "network namespace where available",
                "audit hook: socket.* events",
                "static check: socket/http/urllib.request imports",
            ),
        ),
        _op(
            "dynamic_code",
            "eval/exec/compile of strings, unpickling, building code objects",
            # exec/compile are refused only when their caller is plugin code: the import
            # system, dataclasses and namedtuple compile generated source legitimately.
            events="exec compile code.__new__ function.__new__ marshal.loads marshal.load "
            "pickle.find_class",
            modules="code codeop runpy pdb marshal pickle _pickle shelve importlib.util "
            "importlib.machinery importlib.abc importlib._bootstrap importlib._bootstrap_external",
            # importlib.import_module would bypass the import policy; importlib.resources is fine.
            functions="eval exec compile breakpoint __import__ importlib.import_module "
            "importlib.__import__",
            enforced_by=(
                "audit hook: exec/compile called from plugin code",
                "restricted builtins: no eval/exec/compile/breakpoint",
                "static check: eval/exec/compile calls",
            ),
        ),
        _op(
            "native_code",
            "ctypes, cffi, loading shared objects",
            events="ctypes.",  # every ctypes.* event: dlopen, dlsym, cdata, call_function, ...
            modules="ctypes _ctypes cffi _cffi_backend",
            functions="",
            enforced_by=(
                "OS: Landlock denies loading unlisted shared objects; seccomp",
                "audit hook: ctypes.* events; import policy refuses ctypes/cffi",
                "static check: ctypes/cffi imports",
            ),
        ),
    )
}

#: Escapes from the in-process policy itself, refused under every profile. Reported as the
#: pseudo operation class ``interpreter``; not accepted in ``forbidden_operations``.
ALWAYS_FORBIDDEN = _op(
    "interpreter",
    "escaping the in-process policy: audit/trace hooks, object-graph walking",
    events="sys.addaudithook sys.settrace sys.setprofile sys._getframe sys._current_frames "
    "sys.unraisablehook sys.excepthook gc.get_objects gc.get_referrers gc.get_referents "
    "cpython.PyInterpreterState_New",
    modules="sys gc inspect _testcapi _xxsubinterpreters",
    functions="",
    enforced_by=(
        "audit hook (cannot be removed once added)",
        "AST guard and restricted getattr/setattr/vars at plugin load",
        "OS layers bound whatever gets past",
    ),
)


def bundled_profiles_dir() -> Path:
    """The ``profiles/`` directory shipped inside the package."""
    import plugvisor  # noqa: PLC0415 -- at call time, so a frozen install resolves correctly

    return Path(plugvisor.__file__).parent / "profiles"


@dataclass(frozen=True)
class SecurityProfile:
    """A parsed, validated security profile (see the module docstring for entry syntax)."""

    name: str
    memory_limit: int
    max_execution_time: float
    max_files: int
    max_db_queries: int
    allowed_functions: tuple[str, ...]
    forbidden_operations: frozenset[str]
    # Derived indexes, computed once so that policy checks are set lookups.
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _wildcard: frozenset[str] = field(init=False, repr=False, compare=False)
    _modules: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {e for e in self.allowed_functions if not e.endswith(".*")}
        wild = {e[:-2] for e in self.allowed_functions if e.endswith(".*")}
        modules: set[str] = set()
        for entry in self.allowed_functions:
            mod = _module_of(entry)
            if mod is not None:
                modules.add(mod)
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_wildcard", frozenset(wild))
        object.__setattr__(self, "_modules", frozenset(modules))

    @property
    def writable_data_dir(self) -> bool:
        """True when the plugin's data_dir may be written (``file_write`` not forbidden)."""
        return "file_write" not in self.forbidden_operations

    @property
    def network_allowed(self) -> bool:
        """True when ``network`` is not forbidden."""
        return "network" not in self.forbidden_operations

    def allowed_modules(self) -> frozenset[str]:
        """Modules a plugin may import: the module of every ``mod.*`` / ``mod.func`` entry."""
        return self._modules

    def allowed_builtins(self) -> frozenset[str]:
        """Builtin names the profile allows (entries without a dot)."""
        return frozenset(e for e in self._exact if "." not in e)

    def module_names(self, module: str) -> frozenset[str] | None:
        """Names of ``module`` the plugin may use: ``None`` means all public names."""
        if module in self._wildcard:
            return None
        prefix = module + "."
        return frozenset(
            e[len(prefix) :]
            for e in self._exact
            if e.startswith(prefix) and "." not in e[len(prefix) :]
        )

    def allows_call(self, qualname: str) -> bool:
        """True when ``qualname`` (``len``, ``json.dumps``, ``str.upper``) is allowed."""
        if qualname in self._exact:
            return True
        head = qualname
        while "." in head:
            head = head.rpartition(".")[0]
            if head in self._wildcard:
                return True
        return False


def _module_of(entry: str) -> str | None:
    """The module an entry names, or None for builtins and builtin-type methods."""
    if "." not in entry:
        return None
    if entry.split(".", 1)[0] in _BUILTIN_NAMES:
        return None  # str.upper, dict.* -- methods of builtin types
    if entry.endswith(".*"):
        return entry[:-2]
    return entry.rpartition(".")[0]


def _fail(rule: str, message: str, name: str, fld: str | None) -> ProfileError:
    details: dict[str, Any] = {"profile": name}
    if fld is not None:
        details["field"] = fld
    where = f"profile {name}" + (f", field {fld}" if fld else "")
    return ProfileError(rule, f"{where}: {message}", **details)


def _number(data: Mapping[str, Any], key: str, name: str, *, integer: bool) -> Any:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail("invalid_value", f"{key} must be a number, got {value!r}", name, key)
    if integer and not isinstance(value, int):
        raise _fail("invalid_value", f"{key} must be a whole number, got {value!r}", name, key)
    if value <= 0:
        raise _fail("invalid_value", f"{key} must be > 0, got {value!r}", name, key)
    return value


def _string_list(data: Mapping[str, Any], key: str, name: str) -> list[str]:
    value = data[key]
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail("invalid_value", f"{key} must be a list of strings", name, key)
    seen: set[str] = set()
    for item in value:
        if item in seen:
            raise _fail("duplicate", f"{key} lists {item!r} twice", name, key)
        seen.add(item)
    return list(value)


def _conflicts(entry: str, op: OperationClass) -> bool:
    mod = _module_of(entry)
    if mod is not None:
        parts = mod.split(".")
        # The module itself or any package above it (ctypes.util is native_code too).
        if any(".".join(parts[:i]) in op.modules for i in range(1, len(parts) + 1)):
            return True
    if entry in op.functions:
        return True
    # "os.*" allows os.system: a wildcard conflicts when the class forbids any of its names.
    return entry.endswith(".*") and any(f.startswith(entry[:-1]) for f in op.functions)


def parse_profile(data: bytes, name: str) -> SecurityProfile:
    """Parse and validate a profile's YAML bytes; every error names the field."""
    if not PROFILE_NAME.match(name):
        raise _fail("invalid_name", f"name must match {PROFILE_NAME.pattern}", name, None)
    # Imported here, not at the top: the sandbox template unpickles profiles and must not
    # carry PyYAML into every plugin process. libyaml's safe loader when PyYAML has it:
    # the same rules as yaml.SafeLoader, ~10x faster.
    import yaml  # noqa: PLC0415

    try:
        raw = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        raise _fail("invalid_yaml", str(exc), name, None) from exc
    if not isinstance(raw, dict):
        raise _fail("invalid_yaml", "top level must be a mapping", name, None)
    for key in raw:
        if key not in _KEYS:
            raise _fail("unknown_key", f"unknown key {key!r}", name, str(key))
    for key in _KEYS:
        if key not in raw:
            raise _fail("missing_key", f"{key} is required", name, key)

    try:
        memory = parse_size(raw["memory_limit"])
    except (TypeError, ValueError) as exc:
        raise _fail("invalid_value", f"memory_limit: {exc}", name, "memory_limit") from exc
    if isinstance(raw["memory_limit"], bool) or memory < MIN_MEMORY_LIMIT:
        raise _fail(
            "invalid_value",
            f"memory_limit must be at least {MIN_MEMORY_LIMIT // 1024**2}M "
            "(the interpreter cannot start below it)",
            name,
            "memory_limit",
        )
    max_time = float(_number(raw, "max_execution_time", name, integer=False))
    max_files = int(_number(raw, "max_files", name, integer=True))
    max_db = int(_number(raw, "max_db_queries", name, integer=True))

    functions = _string_list(raw, "allowed_functions", name)
    for entry in functions:
        if not _ENTRY.match(entry):
            raise _fail(
                "invalid_value",
                f"allowed_functions entry {entry!r} is not 'name', 'module.name' or 'module.*'",
                name,
                "allowed_functions",
            )
    forbidden = _string_list(raw, "forbidden_operations", name)
    for op_name in forbidden:
        if op_name not in OPERATION_CLASSES:
            raise _fail(
                "unknown_operation",
                f"unknown operation class {op_name!r} (known: "
                f"{', '.join(sorted(OPERATION_CLASSES))})",
                name,
                "forbidden_operations",
            )
    # A profile that allows what it forbids is a mistake, not a policy: refuse it.
    for op_name in forbidden:
        op = OPERATION_CLASSES[op_name]
        for entry in functions:
            if _conflicts(entry, op):
                raise _fail(
                    "conflict",
                    f"allowed_functions entry {entry!r} realises forbidden operation {op_name}",
                    name,
                    "allowed_functions",
                )
    return SecurityProfile(
        name=name,
        memory_limit=memory,
        max_execution_time=max_time,
        max_files=max_files,
        max_db_queries=max_db,
        allowed_functions=tuple(functions),
        forbidden_operations=frozenset(forbidden),
    )


#: Parsed profiles keyed by name and file content: an edited file is parsed again, an
#: unchanged one is not (profiles are frozen, so sharing them is safe).
_PARSED: dict[tuple[str, bytes], SecurityProfile] = {}
_PARSED_MAX = 64


def _parse_cached(data: bytes, name: str) -> SecurityProfile:
    key = (name, data)
    profile = _PARSED.get(key)
    if profile is None:
        profile = parse_profile(data, name)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = profile
    return profile


def load_profile(name: str, settings: Settings) -> SecurityProfile:
    """Load ``<name>.yaml`` from ``settings.profiles_dir`` (if set), then the bundled profiles."""
    if not PROFILE_NAME.match(name):
        raise _fail("invalid_name", f"name must match {PROFILE_NAME.pattern}", name, None)
    dirs = [Path(settings.profiles_dir)] if settings.profiles_dir else []
    dirs.append(bundled_profiles_dir())
    for directory in dirs:
        path = directory / f"{name}.yaml"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _fail("unreadable", f"{path}: {exc}", name, None) from exc
        return _parse_cached(data, name)
    raise _fail(
        "not_found",
        f"no {name}.yaml in {', '.join(str(d) for d in dirs)}",
        name,
        None,
    )
