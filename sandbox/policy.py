"""The in-process policy layer, installed inside the already OS-locked plugin child.

The OS layers (rlimits, no-new-privileges, seccomp, Landlock, namespaces) are the
boundary; no Python-level mechanism is a sandbox on its own. This layer exists for
precise reporting and to close the common paths before they reach the kernel:

* a PEP 578 **audit hook** (``sys.addaudithook``; cannot be removed) that refuses the
  profile's forbidden operation classes (file writes, processes, sockets, ``ctypes``,
  ``exec``/``compile`` called from plugin code) and the interpreter escapes refused under
  every profile, and counts the files opened per request against ``max_files``;
* an **import policy**: plugin modules are loaded by :class:`_PluginLoader` (never from
  ``.pyc``: a shipped ``__pycache__`` could hold unchecked bytecode) with a restricted
  ``__builtins__`` whose ``__import__`` only admits the plugin's own package and
  ``profile.allowed_modules()``; every stdlib module is handed over as a read-only proxy
  exposing only the allowed names (and no module-valued attributes such as ``uuid.os``);
* an **object-graph guard**: an AST pass refuses, at load, attribute access to the names
  in :data:`BLOCKED_ATTRIBUTES` (naming file:line) and routes ``__dict__``, ``__self__``
  and ``__getattribute__`` through a run-time check; the restricted ``getattr``,
  ``setattr``, ``delattr``, ``hasattr``, ``vars`` and ``dir`` apply the same rules to
  names built at run time;
* **stdlib guards** (:func:`_guard_stdlib`) for the stdlib's own by-name routes:
  ``operator.attrgetter``/``methodcaller`` and ``string.Formatter`` are policy-owned
  (their types build nothing unchecked), ``functools.update_wrapper``, ``typing``'s
  string evaluation, ``dataclasses``' generated code, ``enum``'s module exports and the
  built-in/frozen importers refuse (or re-scope) what the plugin drives.

The hook's "busy" state lives in a closure, ``_Quiet`` serves policy code only, and no
plugin code runs while the hook is busy (str subclasses are read through ``str``).

Decisions: ``__class__``, ``__mro__``, ``__bases__``, ``__base__`` and ``mro()`` stay
available (``type(x).__name__`` and friends are ordinary introspection, and without
``__subclasses__`` or a type's ``__dict__`` they lead nowhere). ``__dict__``/``vars()``
work on instances but are refused on classes and modules (``vars(type)`` holds
``__subclasses__``). Attribution: an operation counts as the plugin's when the innermost
frame that is not standard library (nor generated ``<string>`` code) belongs to the
plugin, so stdlib work done for the plugin (``pathlib.Path.write_text``) is attributed to
it while the host runtime's own work is not; ``exec``/``compile`` and the
``object.__getattr__`` event are judged by their immediate caller only, because
``dataclasses``, ``namedtuple`` and ``traceback`` legitimately use them for the plugin.

Violations raise :class:`PolicyViolation` (``policy.forbidden``) or
:class:`BudgetExceeded` (``budget.files``) at the operation, in the plugin's frame (it may
catch them), and are reported to the parent through ``report(kind, detail)`` either way;
``detail`` reads ``"<operation class>: <what>, <file>:<line>"``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from plugvisor.core.errors import BudgetExceeded, PolicyViolation, SandboxError
from plugvisor.core.profile import ALWAYS_FORBIDDEN, OPERATION_CLASSES, SecurityProfile

__all__ = [
    "BLOCKED_ATTRIBUTES",
    "GUARDED_ATTRIBUTES",
    "PolicyHandle",
    "install_policy",
]

#: Attributes that lead out of the object graph (to globals, builtins, code and frames).
#: Refused at load when written literally, at run time through getattr & co.
BLOCKED_ATTRIBUTES = frozenset(
    {
        "__subclasses__",
        "__globals__",
        "__code__",
        "__builtins__",
        "__closure__",
        "__loader__",
        "__spec__",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "f_code",
        "f_trace",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "cr_code",
        "ag_frame",
        "ag_code",
        "tb_frame",
        "tb_next",
    }
)
_BLOCKED_WORD = re.compile(r"\b(?:" + "|".join(sorted(BLOCKED_ATTRIBUTES)) + r")\b")
_TYPING_FILE = os.path.join(os.path.dirname(os.__file__), "typing.py")
#: Builtins a type expression never calls.
_DANGEROUS_CALLS = frozenset(
    [
        "__import__",
        "eval",
        "exec",
        "compile",
        "open",
        "getattr",
        "setattr",
        "delattr",
        "vars",
        "globals",
        "locals",
        "breakpoint",
        "input",
        "__build_class__",
        "type",
        "super",
        "object",
    ]
)
#: Attributes allowed only after a run-time check of the object or the result.
GUARDED_ATTRIBUTES = frozenset({"__dict__", "__self__", "__getattribute__"})
_GUARD_FN = "__pv_attr__"

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_STDLIB = os.path.dirname(os.__file__) + os.sep
#: Frames that act on someone else's behalf: skipped when attributing an operation.
_TRANSPARENT = (_STDLIB, "<")
_IMPORTLIB = "<frozen importlib"
_MAX_REPORTS_PER_REQUEST = 50
_sys_getframe = sys._getframe
#: The stdlib's own path objects: os.fspath() on them runs no plugin code.
_PATH_TYPES = frozenset({pathlib.PurePath, pathlib.PurePosixPath, pathlib.Path, pathlib.PosixPath})
#: Py_TPFLAGS_HEAPTYPE: a class made by a class statement (not a static builtin type).
_HEAPTYPE = 1 << 9

#: The one installed policy (the audit hook cannot be removed, so there is at most one).
#: Kept in a module global rather than on objects the plugin can reach.
_ACTIVE: _Policy | None = None


def _getframe(depth: int) -> types.FrameType | None:
    """``sys._getframe(depth)`` as seen from the caller; None when the stack is shallower.

    Events also fire with no Python frame of interest above the hook (C code at the top
    level of ``python -c``, interpreter shutdown).
    """
    try:
        return _sys_getframe(depth + 1)
    except ValueError:
        return None


def _make_guards() -> tuple[type, Callable[[_Policy], Callable[[str, tuple[Any, ...]], None]]]:
    """The ``_Quiet`` context manager and the hook factory, sharing a hidden "busy" set.

    The set of busy threads lives in this closure only: no module global, attribute or
    thread-local leads to it, so code that reached this module could not mark its thread
    busy by assignment; and ``_Quiet`` honours only callers compiled from this file.
    """
    busy: set[int] = set()
    get_ident = threading.get_ident

    class Quiet:
        """Marks this thread busy: the hook ignores the events the policy's own work fires.

        Reading ``frame.f_code`` raises ``object.__getattr__`` and ``sys._getframe`` raises
        its own event on CPython 3.11; without this the hook would recurse into itself.
        """

        __slots__ = ("ident",)

        def __enter__(self) -> None:
            caller = _sys_getframe(1).f_code.co_filename
            if caller != _POLICY_FILE:
                # Only the policy's own code may silence its hook.
                raise SandboxError("policy_quiet", "the audit hook cannot be silenced from here")
            ident = get_ident()
            self.ident = None if ident in busy else ident
            busy.add(ident)

        def __exit__(self, *exc: object) -> None:
            if self.ident is not None:
                busy.discard(self.ident)

    def make_hook(policy: _Policy) -> Callable[[str, tuple[Any, ...]], None]:
        watched = policy.watched
        on_event = policy.on_event

        def hook(event: str, args: tuple[Any, ...]) -> None:
            # The hot path: every audit event of the process comes here. One set lookup
            # and out for the events the policy does not watch.
            if event not in watched and not event.startswith("ctypes."):
                return
            ident = get_ident()
            if ident in busy:
                return  # an event fired by the policy's own work
            busy.add(ident)
            try:
                on_event(event, args)
            finally:
                busy.discard(ident)

        return hook

    return Quiet, make_hook


_POLICY_FILE = _getframe.__code__.co_filename
_Quiet, _make_hook = _make_guards()


def _op_class_of_module(name: str) -> str:
    """The operation class that refuses importing ``name`` ("import" when none does)."""
    parts = name.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for op in OPERATION_CLASSES.values():
        if prefixes & op.modules:
            return op.name
    if prefixes & ALWAYS_FORBIDDEN.modules:
        return ALWAYS_FORBIDDEN.name
    return "import"


class _Policy:
    """Everything the hook and the restricted builtins consult; never reachable by plugins."""

    def __init__(
        self,
        profile: SecurityProfile,
        plugin_root: str,
        report: Callable[[str, str], None],
        data_dir: str | None,
    ) -> None:
        self.profile = profile
        # Not realpath: the host may hand over /proc/self/fd/N, which Landlock and the
        # sandbox user can reach while the resolved path may not be traversable.
        self.root = os.path.abspath(plugin_root).rstrip(os.sep) + os.sep
        self.report_fn = report
        self.data_dir = (
            os.path.abspath(data_dir).rstrip(os.sep) + os.sep if data_dir is not None else None
        )
        self.forbidden = profile.forbidden_operations
        self.allowed_modules = profile.allowed_modules()
        parents: set[str] = set()
        for mod in self.allowed_modules:
            parts = mod.split(".")
            parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
        self.parent_modules = frozenset(parents - self.allowed_modules)
        self.package: str | None = None
        self.request_id: str | None = None
        self.files_opened = 0
        # True while our loader reads the plugin's source (not one of the plugin's files).
        self.loading_source = False
        self.violations = 0
        self.reported: set[tuple[str, str]] = set()
        self.proxies: dict[str, _ReadOnlyModule] = {}
        self.proxy_source: dict[int, tuple[types.ModuleType, frozenset[str] | None]] = {}
        self.real_import = builtins.__import__
        # event -> operation class, for the events refused when the plugin is the origin.
        table: dict[str, str] = {}
        for op_name in self.forbidden:
            op = OPERATION_CLASSES[op_name]
            for event in op.audit_events:
                if not event.endswith("."):
                    table[event] = op_name
        for event in ALWAYS_FORBIDDEN.audit_events:
            table[event] = ALWAYS_FORBIDDEN.name
        # CPython's own object-graph events (func.__code__, tb_frame, gi_frame, f_code ...).
        for event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
            table[event] = ALWAYS_FORBIDDEN.name
        # Judged by the immediate caller only: the stdlib uses these legitimately for the
        # plugin (dataclasses/namedtuple exec generated code, enum and typing call
        # sys._getframe, traceback reads tb_frame, the import system compiles and
        # unmarshals), and the plugin cannot reach them itself without an escape.
        self.immediate_events = frozenset(
            e
            for e, op in table.items()
            if op in ("dynamic_code", ALWAYS_FORBIDDEN.name)
            and e not in ("sys.addaudithook", "cpython.PyInterpreterState_New")
        )
        # Read-only views: the tables the hook consults cannot be edited in place.
        self.event_table = types.MappingProxyType(table)
        self.watched = frozenset(table) | {"open", "import"}
        self.native_forbidden = "native_code" in self.forbidden
        self.builtins = _restricted_builtins(profile)

    # ---- attribution ------------------------------------------------------------------
    def plugin_frame(self, frame: types.FrameType | None) -> types.FrameType | None:
        """The plugin frame responsible for an operation starting at ``frame``, or None."""
        root = self.root
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(root):
                return frame
            if not filename.startswith(_TRANSPARENT):
                return None  # the host runtime (or a library it uses) is acting
            frame = frame.f_back
        return None

    def locate(self, frame: types.FrameType | None) -> types.FrameType | None:
        """The innermost plugin frame at or above ``frame`` (for reporting file:line)."""
        root = self.root
        with _Quiet():
            while frame is not None:
                if frame.f_code.co_filename.startswith(root):
                    return frame
                frame = frame.f_back
        return None

    def where(self, frame: types.FrameType | None) -> str:
        if frame is None:
            return "-"
        filename = frame.f_code.co_filename
        if filename.startswith(self.root):
            filename = filename[len(self.root) :]
        return f"{filename}:{frame.f_lineno}"

    # ---- violations ------------------------------------------------------------------
    def send(self, kind: str, detail: str, exc: BaseException) -> None:
        """Report once per request and kind/detail; a failing channel is noted on ``exc``."""
        self.violations += 1
        key = (kind, detail)
        if key in self.reported or len(self.reported) >= _MAX_REPORTS_PER_REQUEST:
            return
        self.reported.add(key)
        with _Quiet():  # the report itself may fire audit events (socket sends)
            try:
                self.report_fn(kind, detail)
            except Exception as report_exc:
                exc.add_note(f"reporting the violation failed: {report_exc!r}")

    def forbid(self, op: str, what: str, frame: types.FrameType | None) -> NoReturn:
        with _Quiet():
            detail = f"{op}: {what}, {self.where(frame)}"
        exc = PolicyViolation("forbidden", detail, operation=op)
        self.send("policy.forbidden", detail, exc)
        raise exc

    def over_files(self, path: object, frame: types.FrameType | None) -> NoReturn:
        with _Quiet():
            detail = (
                f"files: opened {self.files_opened} files, max_files is "
                f"{self.profile.max_files} (last: {_safe_repr(path)}), {self.where(frame)}"
            )
        exc = BudgetExceeded("files", detail, limit=self.profile.max_files)
        self.send("budget.files", detail, exc)
        raise exc

    # ---- the audit hook ----------------------------------------------------------------
    def on_event(self, event: str, args: tuple[Any, ...]) -> None:
        # Called by _audit_hook with this thread marked busy. Frame depths: 0 = this
        # method, 1 = _audit_hook, 2 = the code that fired the event.
        if event == "open":
            self.on_open(args)
            return
        op = self.event_table.get(event)
        if op is None:
            if event.startswith("ctypes.") and self.native_forbidden:
                frame = self.plugin_frame(_getframe(2))
                if frame is not None:
                    self.forbid("native_code", event, frame)
            elif event == "import":
                self.on_import(args)
            return
        if event in self.immediate_events:
            what = event
            if event.startswith("object."):
                name = args[1] if len(args) > 1 else ""
                if name not in BLOCKED_ATTRIBUTES:
                    return  # cheap exit first: tb_frame reads by traceback are common
                what = f"{event} {name}"
            caller = _getframe(2)
            if caller is not None and caller.f_code.co_filename.startswith(self.root):
                self.forbid(op, what, caller)
            if event == "compile" and caller is not None:
                self.check_compiled_source(args, caller)
            return
        frame = self.plugin_frame(_getframe(2))
        if frame is None:
            return
        if op == "file_write" and self.write_allowed(args[0] if args else None):
            return
        self.forbid(op, f"{event}{_describe_args(args)}", frame)

    def check_compiled_source(self, args: tuple[Any, ...], caller: types.FrameType) -> None:
        """Refuse strings the stdlib compiles for the plugin that would escape the guard.

        ``typing`` evaluates string annotations (``get_type_hints``, ``ForwardRef``) without
        the AST guard, and ``ForwardRef._evaluate`` with a bare globals dict even runs them
        with the real builtins. So: no compiled string may name an escape attribute
        (generated code of dataclasses/namedtuple/enum never does), and a string compiled
        by ``typing`` must be a type expression: no dunder names or attributes and no
        calls of the dangerous builtins.
        """
        # Plain str/bytes copies first: a subclass's methods (strip, decode) would run
        # plugin code while the hook ignores events.
        source: Any = args[0] if args else None
        kind = type(source)
        if issubclass(kind, bytes):
            source = bytes.__getitem__(source, slice(None)).decode("utf-8", "replace")
        elif issubclass(kind, str):
            source = str.__str__(source)
        else:
            return
        filename = caller.f_code.co_filename
        if filename.startswith(_IMPORTLIB):
            return
        match = _BLOCKED_WORD.search(source)
        what = match.group(0) if match is not None else None
        if what is None and filename == _TYPING_FILE:
            what = _type_expression_escape(source)
        if what is None:
            return
        frame = self.plugin_frame(caller)
        if frame is not None:
            self.forbid(
                ALWAYS_FORBIDDEN.name,
                f"compiled string names {what} (via {os.path.basename(filename)})",
                frame,
            )

    def write_allowed(self, path: object) -> bool:
        if "file_write" in self.forbidden:
            return False
        if self.data_dir is None:
            return True  # no data_dir given: the OS layer decides
        path = _plain_path(path)
        if path is None:
            return False  # an inherited descriptor (the channel, stdout) or an odd object
        full = os.path.abspath(path)
        return (full + os.sep).startswith(self.data_dir)

    def on_open(self, args: tuple[Any, ...]) -> None:
        path, mode, flags = args
        if issubclass(type(mode), str):
            mode = str.__str__(mode)  # a subclass's __contains__ must not run here
        if self.request_id is not None and not isinstance(path, int):
            frame = _getframe(3)
            caller = frame.f_code.co_filename if frame is not None else ""
            # The runtime's own reads (lazy .pyc through io.open_code, the plugin's source
            # read by our loader) are not the plugin's files.
            if not caller.startswith(_IMPORTLIB) and not self.loading_source:
                self.files_opened += 1
                if self.files_opened > self.profile.max_files:
                    self.over_files(path, self.plugin_frame(_getframe(3)))
        if isinstance(mode, str):
            write = "w" in mode or "a" in mode or "x" in mode or "+" in mode
        else:
            write = bool((flags or 0) & _WRITE_FLAGS)
        if not write or self.write_allowed(path):
            return
        frame = self.plugin_frame(_getframe(3))
        if frame is not None:
            what = f"open({_safe_repr(path)}, {_safe_repr(mode or flags)})"
            self.forbid("file_write", what, frame)

    def on_import(self, args: tuple[Any, ...]) -> None:
        # The restricted __import__ checks every import statement; this catches imports
        # that bypass it (a real __import__ reached through the object graph).
        frame: types.FrameType | None = _getframe(3)
        while frame is not None and frame.f_code.co_filename.startswith(_IMPORTLIB):
            frame = frame.f_back
        if frame is None or not frame.f_code.co_filename.startswith(self.root):
            return
        name = _safe_str(args[0])
        op = _op_class_of_module(name)
        # C code imports on the plugin's behalf with no frame of its own (datetime.strptime
        # imports _strptime), so only modules of a refused class are refused here.
        if op == "import" or self.import_allowed(name):
            return
        if op != ALWAYS_FORBIDDEN.name and op not in self.forbidden:
            return
        self.forbid(op, f"import {name}", frame)

    # ---- imports -----------------------------------------------------------------------
    def import_allowed(self, name: str) -> bool:
        if self.package is not None and (
            name == self.package or name.startswith(self.package + ".")
        ):
            return True
        return name in self.allowed_modules or name in self.parent_modules

    def restricted_import(
        self,
        name: str,
        globals_: dict[str, Any] | None,
        fromlist: Iterable[str] | None,
        level: int,
    ) -> Any:
        if type(fromlist) is list and level == 0:
            return self.import_for_c(name)
        fromlist = tuple(fromlist or ())
        if name == "__future__" and level == 0:
            # Compiler directives (``from __future__ import annotations``); data only.
            return self.real_import(name, None, None, fromlist, 0)
        if level > 0 or (self.package is not None and name.partition(".")[0] == self.package):
            # The plugin's own package; relative imports cannot climb above its top level.
            return self.real_import(name, globals_, None, fromlist, level)
        caller = self.locate(_getframe(2))
        if name not in self.allowed_modules:
            if name not in self.parent_modules or not fromlist:
                self.forbid(
                    _op_class_of_module(name),
                    f"import {name} (not allowed by profile {self.profile.name})",
                    caller,
                )
            names = self.profile.module_names(name) or frozenset()
            for item in fromlist:
                sub = f"{name}.{item}"
                if (
                    item not in names
                    and sub not in self.allowed_modules
                    and (sub not in self.parent_modules)
                ):
                    self.forbid(
                        _op_class_of_module(sub),
                        f"from {name} import {item} (not allowed by profile {self.profile.name})",
                        caller,
                    )
        for item in fromlist:
            # ``from X import y`` falls back to sys.modules["X.y"] when the proxy has no
            # ``y``: a submodule must be allowed itself.
            sub = f"{name}.{item}"
            if sub in sys.modules and not self.import_allowed(sub):
                self.forbid(
                    _op_class_of_module(sub),
                    f"from {name} import {item} (not allowed by profile {self.profile.name})",
                    caller,
                )
        self.real_import(name, None, None, (), 0)
        for item in fromlist:
            sub = f"{name}.{item}"
            if sub in self.allowed_modules and sub not in sys.modules:
                self.real_import(sub, None, None, (), 0)
        self.link(name)
        if fromlist:
            return self.proxy(name)
        return self.proxy(name.partition(".")[0])

    def import_for_c(self, name: str) -> None:
        """An import made by C code on the plugin's behalf (``PyImport_Import``).

        C code running in a plugin frame (``datetime.strptime`` importing ``_strptime``)
        imports through the frame's ``__builtins__.__import__`` with a *list* fromlist
        (import statements pass None or a tuple), ignores the result and takes the module
        from ``sys.modules``. So the module is imported unless its class is refused, and
        nothing is returned: a plugin calling ``__import__`` that way gets no module.
        """
        op = _op_class_of_module(name)
        if (
            op != "import"
            and not self.import_allowed(name)
            and (op == ALWAYS_FORBIDDEN.name or op in self.forbidden)
        ):
            self.forbid(op, f"import {name}", self.locate(_getframe(3)))
        self.real_import(name, None, None, (), 0)

    def link(self, name: str) -> None:
        """Make each parent proxy of ``name`` expose the child proxy (``os.path``)."""
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent, child = ".".join(parts[:i]), ".".join(parts[: i + 1])
            proxy = self.proxy(parent)
            if parts[i] not in proxy.__dict__:
                proxy.__dict__[parts[i]] = self.proxy(child)

    def proxy(self, name: str) -> _ReadOnlyModule:
        """The read-only proxy of module ``name`` (built once, cached)."""
        cached = self.proxies.get(name)
        if cached is not None:
            return cached
        real = sys.modules.get(name)
        if real is None:
            real = importlib.import_module(name)
        allowed = None if name in self.allowed_modules else frozenset[str]()
        if allowed is None:
            allowed = self.profile.module_names(name)
        proxy = _ReadOnlyModule(name, real.__doc__)
        self.proxies[name] = proxy  # before filling: module graphs have cycles
        self.proxy_source[id(proxy)] = (real, allowed)
        names = (
            [n for n in dir(real) if not n.startswith("_")] if allowed is None else sorted(allowed)
        )
        ns = proxy.__dict__
        for attr in names:
            try:
                value = getattr(real, attr)
            except AttributeError:
                continue
            value = self.filter_value(name, attr, value)
            if value is not _HIDDEN:
                ns[attr] = value
        for mod in self.allowed_modules | self.parent_modules:
            child = mod[len(name) + 1 :]
            if mod.startswith(name + ".") and "." not in child and mod in sys.modules:
                ns[child] = self.proxy(mod)
        exported = getattr(real, "__all__", None)
        if isinstance(exported, list | tuple):
            ns["__all__"] = [n for n in exported if n in ns]
        return proxy

    def filter_value(self, module: str, attr: str, value: Any) -> Any:
        override = _OVERRIDES.get((module, attr))
        if override is not None:
            return override
        if isinstance(value, types.ModuleType):
            sub = value.__name__
            if sub in self.allowed_modules or sub in self.parent_modules:
                return self.proxy(sub)
            return _HIDDEN
        return value

    def proxy_miss(self, proxy: _ReadOnlyModule, attr: str) -> Any:
        real, allowed = self.proxy_source[id(proxy)]
        name = proxy.__name__
        if attr.startswith("__") or not hasattr(real, attr):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        if allowed is None and not attr.startswith("_"):
            value = self.filter_value(name, attr, getattr(real, attr))
            if value is not _HIDDEN:
                return value
        self.forbid(
            _op_class_of_module(f"{name}.{attr}"),
            f"{name}.{attr} (not allowed by profile {self.profile.name})",
            self.locate(_getframe(2)),
        )

    # ---- namespaces the stdlib evaluates strings in for the plugin ---------------------
    def plugin_namespace(self, ns: Any, *, globals_: bool) -> Any:
        """``ns`` as a namespace to evaluate a plugin's string in, never an interpreter one.

        The plugin's own module namespaces (and mappings it made) pass; a namespace
        without ``__builtins__`` used as globals gets the plugin's builtins, not the real
        ones eval() would insert; a real module's namespace becomes what the plugin sees
        of that module through its proxy (nothing when the module is not allowed).
        """
        if ns is None:
            return {"__builtins__": self.builtins} if globals_ else None
        if not isinstance(ns, dict):
            return ns
        given = dict.get(ns, "__builtins__", _HIDDEN)
        if given is self.builtins:
            return ns
        name = dict.get(ns, "__name__")
        module = sys.modules.get(name) if isinstance(name, str) else None
        if module is not None and getattr(module, "__dict__", None) is ns:
            return self.module_view(module.__name__)
        if given is builtins or given is vars(builtins):
            return {"__builtins__": self.builtins}  # an interpreter namespace, unknown
        if given is _HIDDEN and globals_:
            return {**ns, "__builtins__": self.builtins}
        return ns

    def module_view(self, name: str) -> dict[str, Any]:
        """The public names the plugin's proxy of ``name`` holds, with the plugin's builtins."""
        if not self.import_allowed(name):
            # ForwardRef(module=...) or a class claiming the module in __module__: the
            # plugin asked for names of a module it may not import.
            self.forbid(
                _op_class_of_module(name),
                f"typing evaluation in module {name} (not allowed by profile {self.profile.name})",
                self.locate(_getframe(1)),
            )
        view = {k: v for k, v in self.proxy(name).__dict__.items() if not k.startswith("__")}
        view["__builtins__"] = self.builtins
        return view

    def check_module_target(self, module: object, how: str) -> None:
        """Refuse stdlib work on a module namespace named by the plugin, unless its own."""
        package = self.package
        if (
            isinstance(module, str)
            and package is not None
            and (module == package or module.startswith(package + "."))
        ):
            return
        what = f"{how} on module {_safe_repr(module)}"
        self.forbid("interpreter", what, self.locate(_getframe(1)))

    def dict_exposable(self, obj: Any) -> bool:
        """Whether ``obj.__dict__`` may be copied for the plugin (the rule of ``vars()``)."""
        if isinstance(obj, types.ModuleType) or _is_internal(obj):
            return False
        if isinstance(obj, type):
            # A class the plugin defined holds what the plugin put there; any other
            # class dict (vars(type), vars(object)) holds unchecked slot wrappers.
            module = vars(obj).get("__module__")
            return (
                bool(obj.__flags__ & _HEAPTYPE)
                and self.package is not None
                and isinstance(module, str)
                and (module == self.package or module.startswith(self.package + "."))
            )
        return True

    # ---- loading ----------------------------------------------------------------------
    def load(self, entrypoint: str) -> object:
        module_name, sep, attr = entrypoint.partition(":")
        parts = module_name.split(".")
        if not sep or not attr or not all(p.isidentifier() for p in [*parts, *attr.split(".")]):
            raise SandboxError(
                "bad_entrypoint", f"entrypoint {entrypoint!r} is not 'module:attribute'"
            )
        package = parts[0]
        if (
            package in sys.stdlib_module_names
            or package in sys.modules
            or package in ("plugvisor",)
        ):
            raise SandboxError(
                "bad_entrypoint",
                f"plugin package {package!r} would shadow an installed module",
                entrypoint=entrypoint,
            )
        base = os.path.join(self.root, package)
        if not (os.path.isdir(base) or os.path.isfile(base + ".py")):
            raise SandboxError(
                "bad_entrypoint", f"no package {package!r} under the plugin directory"
            )
        self.package = package
        sys.meta_path.insert(0, _PluginFinder(self.root, package))
        module = importlib.import_module(module_name)
        target: object = module
        for name in attr.split("."):
            target = getattr(target, name)
        return target


def _type_expression_escape(source: str) -> str | None:
    """What makes ``source`` more than a type expression (None when it is one)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return None  # compile() itself will refuse it
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            return node.id
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            return node.attr
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _DANGEROUS_CALLS
        ):
            return f"{node.func.id}()"
    return None


#: Statements and expressions the code dataclasses generates never holds.
_NOT_GENERATED = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.Import,
    ast.ImportFrom, ast.Global, ast.Nonlocal, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom, ast.Delete,
    ast.For, ast.While, ast.With, ast.Try,
)  # fmt: skip


def _generated_code_escape(source: object) -> str | None:
    """What makes ``source`` more than one function made by ``dataclasses._create_fn``.

    The shape is fixed: ``def __create_fn__(<names>):`` holding one ``def <name>(...)``
    (defaults and annotations plain names) and ``return <name>``; field names are
    identifiers in it, so any other statement came from a field name carrying source.
    """
    if not isinstance(source, str):
        return "not source text"
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "invalid syntax"
    outer = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(outer, ast.FunctionDef) or outer.name != "__create_fn__":
        return "statements around __create_fn__"
    if outer.decorator_list or outer.returns or _has_defaults_or_annotations(outer.args):
        return "__create_fn__ signature"
    inner = outer.body[0] if len(outer.body) == 2 else None
    ret = outer.body[-1]
    if (
        not isinstance(inner, ast.FunctionDef)
        or not isinstance(ret, ast.Return)
        or not isinstance(ret.value, ast.Name)
        or ret.value.id != inner.name
        or inner.decorator_list
    ):
        return "statements in __create_fn__"
    args = inner.args
    for value in [*args.defaults, *args.kw_defaults, inner.returns]:
        if value is not None and not isinstance(value, ast.Name):
            return "a default or return annotation that is not a name"
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if (
            arg is not None
            and arg.annotation is not None
            and not isinstance(arg.annotation, ast.Name)
        ):
            return "an annotation that is not a name"
    for stmt in inner.body:
        for node in ast.walk(stmt):
            if isinstance(node, _NOT_GENERATED):
                return type(node).__name__
    return None


def _has_defaults_or_annotations(args: ast.arguments) -> bool:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return bool(args.defaults or any(args.kw_defaults)) or any(
        a is not None and a.annotation is not None for a in every
    )


class _HiddenType:
    pass


_HIDDEN = _HiddenType()


class _ReadOnlyModule(types.ModuleType):
    """A stdlib module as the plugin sees it: only the allowed names, read-only."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only in the sandbox")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only in the sandbox")

    def __getattr__(self, name: str) -> Any:
        policy = _ACTIVE
        if policy is None:
            raise AttributeError(name)
        return policy.proxy_miss(self, name)


def _describe_args(args: tuple[Any, ...]) -> str:
    # Runs with the hook busy: it must not run plugin code (type() checks, no isinstance
    # on plugin objects whose __class__ may be a property, no repr of their subclasses).
    if not args:
        return ""
    first = args[0] if args[0] is not None or len(args) < 2 else args[1]
    if type(first) in (list, tuple) and first:
        return f"({_safe_repr(first[0])}, ...)"
    shown = _safe_repr(first)
    return "" if shown == "<object>" else f"({shown})"


def _safe_str(value: Any) -> str:
    """``value`` as a plain str, never calling a subclass's methods."""
    if issubclass(type(value), str):
        return str.__str__(value)
    return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    """``repr(value)`` for the plain types, a placeholder for anything else.

    Called while the hook ignores events: a plugin's ``__repr__`` (of a str subclass, a
    path-like) must not run then.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is int or kind is bool or value is None:
        return repr(value)
    if issubclass(kind, str):
        return repr(str.__str__(value))
    if issubclass(kind, bytes):
        return repr(bytes.__getitem__(value, slice(None)))
    if issubclass(kind, int):
        return int.__repr__(value)
    if kind in _PATH_TYPES:
        return repr(os.fspath(value))
    return "<object>"


def _plain_path(path: Any) -> str | None:
    """A str path for ``path`` without running plugin code; None for descriptors and others."""
    kind = type(path)
    if kind in _PATH_TYPES:
        path = os.fspath(path)
        kind = type(path)
    if issubclass(kind, str):
        return str.__str__(path)
    if issubclass(kind, bytes):
        return os.fsdecode(bytes.__getitem__(path, slice(None)))
    return None


# ---- the plugin's builtins ------------------------------------------------------------


def _active() -> _Policy:
    policy = _ACTIVE
    if policy is None:  # pragma: no cover -- plugins are only loaded under a policy
        raise SandboxError("no_policy", "no policy installed")
    return policy


def _refuse_attr(name: str, how: str) -> NoReturn:
    policy = _active()
    policy.forbid("interpreter", f"{how} {name}", policy.locate(_getframe(1)))


def _exact_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"attribute name must be string, not {type(name).__name__!r}")
    # A str subclass could lie in __eq__/__hash__; check the plain string it stands for.
    return str.__str__(name)


def _is_internal(obj: object) -> bool:
    module = getattr(type(obj), "__module__", "") or ""
    return module == "plugvisor" or module.startswith("plugvisor.")


def _guarded_attr(obj: Any, name: str) -> Any:
    """``obj.<name>`` for the names in :data:`GUARDED_ATTRIBUTES`, checked."""
    if name == "__dict__":
        if isinstance(obj, type | types.ModuleType) or _is_internal(obj):
            _refuse_attr(name, f"{type(obj).__name__}.")
        return obj.__dict__
    if name == "__self__":
        value = obj.__self__
        if isinstance(value, types.ModuleType) or _is_internal(value):
            _refuse_attr(name, f"{type(obj).__name__}.")
        return value
    if name == "__getattribute__":
        inner = obj.__getattribute__

        def checked(*args: Any) -> Any:
            if (
                args
                and isinstance(args[-1], str)
                and (
                    _exact_name(args[-1]) in BLOCKED_ATTRIBUTES
                    or _exact_name(args[-1]) in GUARDED_ATTRIBUTES
                )
            ):
                _refuse_attr(args[-1], "__getattribute__")
            return inner(*args)

        return checked
    return getattr(obj, name)


def _pv_getattr(obj: Any, name: Any, *default: Any) -> Any:
    name = _exact_name(name)
    if name in BLOCKED_ATTRIBUTES:
        _refuse_attr(name, "getattr")
    if name in GUARDED_ATTRIBUTES:
        try:
            return _guarded_attr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            raise
    return getattr(obj, name, *default)


def _pv_hasattr(obj: Any, name: Any) -> bool:
    name = _exact_name(name)
    if name in BLOCKED_ATTRIBUTES:
        _refuse_attr(name, "hasattr")
    return hasattr(obj, name)


def _pv_setattr(obj: Any, name: Any, value: Any) -> None:
    name = _exact_name(name)
    if name in BLOCKED_ATTRIBUTES:
        _refuse_attr(name, "setattr")
    setattr(obj, name, value)


def _pv_delattr(obj: Any, name: Any) -> None:
    name = _exact_name(name)
    if name in BLOCKED_ATTRIBUTES:
        _refuse_attr(name, "delattr")
    delattr(obj, name)


def _pv_vars(*args: Any) -> dict[str, Any]:
    if not args:
        frame = _getframe(1)
        return frame.f_locals if frame is not None else {}
    (obj,) = args
    return _guarded_attr(obj, "__dict__")  # type: ignore[no-any-return]


def _pv_dir(*args: Any) -> list[str]:
    if not args:
        frame = _getframe(1)
        return sorted(frame.f_locals) if frame is not None else []
    return [n for n in dir(*args) if n not in BLOCKED_ATTRIBUTES]


def _pv_import(
    name: str,
    globals: dict[str, Any] | None = None,
    locals: Any = None,
    fromlist: Iterable[str] | None = (),
    level: int = 0,
) -> Any:
    return _active().restricted_import(name, globals, fromlist, level)


def _refusing_stub(name: str, op: str) -> Callable[..., NoReturn]:
    """A builtin the profile does not allow: calling it is a reported violation."""

    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        policy = _active()
        policy.forbid(
            op,
            f"{name}() (not allowed by profile {policy.profile.name})",
            policy.locate(_getframe(1)),
        )

    refused.__name__ = refused.__qualname__ = name
    return refused


_REPLACED: dict[str, Callable[..., Any]] = {
    "getattr": _pv_getattr,
    "hasattr": _pv_hasattr,
    "setattr": _pv_setattr,
    "delattr": _pv_delattr,
    "vars": _pv_vars,
    "dir": _pv_dir,
}
#: Never handed over, whatever the profile says: they read stdin or start a debugger.
_NEVER = frozenset({"breakpoint", "input", "help", "__import__", "__loader__", "__spec__"})
_DYNAMIC = ("eval", "exec", "compile")


def _restricted_builtins(profile: SecurityProfile) -> dict[str, Any]:
    real = vars(builtins)
    out: dict[str, Any] = {
        name: value
        for name, value in real.items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    out.update(
        {
            "__name__": "builtins",
            "__build_class__": real["__build_class__"],
            "__debug__": real["__debug__"],
            "None": None,
            "Ellipsis": Ellipsis,
            "NotImplemented": NotImplemented,
            "__import__": _pv_import,
            _GUARD_FN: _guarded_attr,
        }
    )
    dynamic_forbidden = "dynamic_code" in profile.forbidden_operations
    for name in profile.allowed_builtins():
        if name in _NEVER or name not in real:
            continue
        if name in _DYNAMIC and dynamic_forbidden:
            continue
        out[name] = _REPLACED.get(name, real[name])
    # Builtin functions the profile leaves out are present but refusing, so calling one is
    # reported with file:line rather than surfacing as a NameError. (Left-out types stay
    # undefined: a stub would break isinstance() in a more confusing way.)
    for name, value in real.items():
        if name in out or name.startswith("_") or not isinstance(value, types.BuiltinFunctionType):
            continue
        op = "dynamic_code" if name in _DYNAMIC and dynamic_forbidden else "builtin"
        out[name] = _refusing_stub(name, op)
    return out


# ---- guarded replacements for stdlib names that dereference attributes by name --------
#
# Each hands the plugin only policy-owned objects: a real ``operator.attrgetter`` would
# let ``type(getter)("__subclasses__")`` build getters nobody checked, and a subclass of
# the real ``string.Formatter`` would leave the unchecked ``get_field`` one ``__mro__``
# away.


def _unsafe_name(name: str) -> bool:
    return name in BLOCKED_ATTRIBUTES or name in GUARDED_ATTRIBUTES


def _checked_path(path: object, how: str) -> tuple[str, ...]:
    """The parts of a dotted attribute path, refused when one of them is unsafe."""
    parts = tuple(_exact_name(path).split("."))
    for part in parts:
        if _unsafe_name(part):
            _refuse_attr(part, how)
    return parts


class _AttrGetter:
    """``operator.attrgetter`` as the plugin gets it: names checked at creation and call.

    Checked at each call too: the instance's state is plain attributes the plugin could
    replace with ``object.__setattr__``.
    """

    __slots__ = ("_paths",)

    def __init__(self, attr: str, /, *attrs: str) -> None:
        self._paths = tuple(_checked_path(a, "attrgetter") for a in (attr, *attrs))

    def __call__(self, obj: Any, /) -> Any:
        values = []
        for path in self._paths:
            value = obj
            for part in path:
                name = _exact_name(part)
                if _unsafe_name(name):
                    _refuse_attr(name, "attrgetter")
                value = getattr(value, name)
            values.append(value)
        return values[0] if len(values) == 1 else tuple(values)

    def __repr__(self) -> str:
        names = ", ".join(repr(".".join(p)) for p in self._paths)
        return f"operator.attrgetter({names})"


class _MethodCaller:
    """``operator.methodcaller`` as the plugin gets it: the name checked at creation and call."""

    __slots__ = ("_args", "_kwargs", "_name")

    def __init__(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        self._name = _exact_name(name)
        if _unsafe_name(self._name):
            _refuse_attr(self._name, "methodcaller")
        self._args = args
        self._kwargs = kwargs

    def __call__(self, obj: Any, /) -> Any:
        name = _exact_name(self._name)
        if _unsafe_name(name):
            _refuse_attr(name, "methodcaller")
        return getattr(obj, name)(*self._args, **self._kwargs)

    def __repr__(self) -> str:
        args = [repr(self._name), *map(repr, self._args)]
        args += [f"{k}={v!r}" for k, v in self._kwargs.items()]
        return f"operator.methodcaller({', '.join(args)})"


for _cls, _name in ((_AttrGetter, "attrgetter"), (_MethodCaller, "methodcaller")):
    _cls.__module__ = "operator"
    _cls.__name__ = _cls.__qualname__ = _name


def _formatter_getattr(obj: Any, name: Any, *default: Any) -> Any:
    name = _exact_name(name)
    if _unsafe_name(name):
        _refuse_attr(name, "string.Formatter")
    return getattr(obj, name, *default)


def _guarded_formatter() -> type:
    """``string.Formatter`` rebuilt from its own functions, with a checking ``getattr``.

    Not a subclass: the real class (and its unchecked ``get_field``) must not be in the
    plugin's reach through ``__mro__``. The copies run in a copy of ``string``'s globals
    whose builtins hold the checking ``getattr`` (``get_field`` resolves fields with it).
    """
    import string  # noqa: PLC0415 -- the real module, not the plugin's proxy

    env = dict(vars(string))
    env["__builtins__"] = {**vars(builtins), "getattr": _formatter_getattr}
    namespace: dict[str, Any] = {"__module__": "string", "__doc__": string.Formatter.__doc__}
    for name, value in vars(string.Formatter).items():
        if isinstance(value, types.FunctionType):
            fn = types.FunctionType(
                value.__code__, env, value.__name__, value.__defaults__, value.__closure__
            )
            fn.__qualname__, fn.__doc__ = value.__qualname__, value.__doc__
            fn.__kwdefaults__ = value.__kwdefaults__
            namespace[name] = fn
    return type("Formatter", (), namespace)


_OVERRIDES: dict[tuple[str, str], Any] = {
    ("operator", "attrgetter"): _AttrGetter,
    ("operator", "methodcaller"): _MethodCaller,
    ("string", "Formatter"): _guarded_formatter(),
}


def _plugin_is_origin(policy: _Policy, depth: int) -> bool:
    """Whether the plugin is behind the call ``depth`` frames above the caller."""
    with _Quiet():
        return policy.plugin_frame(_getframe(depth + 1)) is not None


def _guard_stdlib(policy: _Policy) -> None:
    """Close the stdlib's by-name routes that reach past the proxies, in the real modules.

    Each replacement passes everything through unchanged unless the plugin is behind the
    call, so the runtime's own use of these modules is not affected.
    """
    import functools  # noqa: PLC0415 -- the real modules
    import typing  # noqa: PLC0415

    real_eval = builtins.eval

    def typing_eval(source: Any, globalns: Any = None, localns: Any = None) -> Any:
        # typing evaluates string annotations (get_type_hints, ForwardRef._evaluate) with
        # eval(): a namespace without __builtins__ gets the real builtins, and
        # ForwardRef(module=...) or a class's __module__ picks any module's namespace.
        if _plugin_is_origin(policy, 1):
            globalns = policy.plugin_namespace(globalns, globals_=True)
            if localns is not None:
                localns = policy.plugin_namespace(localns, globals_=False)
        return real_eval(source, globalns, localns)

    vars(typing)["eval"] = typing_eval

    real_update_wrapper = functools.update_wrapper

    def update_wrapper(
        wrapper: Any,
        wrapped: Any,
        assigned: Iterable[str] = functools.WRAPPER_ASSIGNMENTS,
        updated: Iterable[str] = functools.WRAPPER_UPDATES,
    ) -> Any:
        # update_wrapper copies attributes by name (assigned) and a __dict__ (updated)
        # from ``wrapped`` onto ``wrapper``; lru_cache, wraps and singledispatch call it.
        if _plugin_is_origin(policy, 1):
            assigned = tuple(_exact_name(n) for n in assigned)
            updated = tuple(_exact_name(n) for n in updated)
            for name in (*assigned, *updated):
                # __dict__ as vars() allows it; __self__ and __getattribute__ never.
                if _unsafe_name(name) and (
                    name != "__dict__" or not policy.dict_exposable(wrapped)
                ):
                    _refuse_attr(name, "functools.update_wrapper")
        return real_update_wrapper(wrapper, wrapped, assigned, updated)

    update_wrapper.__doc__ = real_update_wrapper.__doc__
    vars(functools)["update_wrapper"] = update_wrapper

    # enum exports members into sys.modules[cls.__module__] (global_enum) and builds
    # enums from, and into, any named module (EnumType._convert_): with a forged
    # __module__ that rewrites real modules (this one's tables included) or reads them.
    import enum  # noqa: PLC0415

    real_global_enum = enum.global_enum
    real_convert = vars(enum.EnumType)["_convert_"]

    def global_enum(cls: Any, update_str: bool = False) -> Any:
        if _plugin_is_origin(policy, 1):
            policy.check_module_target(getattr(cls, "__module__", None), "enum.global_enum")
        return real_global_enum(cls, update_str)

    def convert(cls: Any, name: str, module: str, *args: Any, **kwargs: Any) -> Any:
        if _plugin_is_origin(policy, 1):
            policy.check_module_target(module, "Enum._convert_")
        return real_convert(cls, name, module, *args, **kwargs)

    global_enum.__doc__ = real_global_enum.__doc__
    convert.__name__ = convert.__qualname__ = "_convert_"
    vars(enum)["global_enum"] = global_enum
    type.__setattr__(enum.EnumType, "_convert_", convert)

    # dataclasses exec()s generated text with field names in it verbatim, in the globals
    # of sys.modules[cls.__module__]: a name carrying source, or a claimed module, would
    # run code the AST guard never saw in a namespace the plugin does not own.
    import dataclasses  # noqa: PLC0415

    real_exec = builtins.exec

    def dataclasses_exec(source: Any, globalns: Any = None, localns: Any = None) -> None:
        if _plugin_is_origin(policy, 1):
            what = _generated_code_escape(source)
            if what is not None:
                policy.forbid(
                    "interpreter",
                    f"dataclass code altered by a field name ({what})",
                    policy.locate(_getframe(1)),
                )
            globalns = policy.plugin_namespace(globalns, globals_=True)
        real_exec(source, globalns, localns)

    vars(dataclasses)["exec"] = dataclasses_exec

    # The importers of built-in and frozen modules hand out real modules (sys) whatever
    # sys.modules holds, with no "import" event for a module already loaded; only the
    # import system calls them, never plugin code.
    for importer in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter):
        for method in ("find_spec", "find_module", "create_module", "exec_module", "load_module"):
            real = vars(importer).get(method)
            if real is not None:
                setattr(importer, method, _guarded_importer_method(policy, importer, method, real))


def _guarded_importer_method(policy: _Policy, importer: type, method: str, real: Any) -> Any:
    """``importer.method`` refusing plugin code as its caller (the import system passes)."""
    wrapper_kind = type(real)  # classmethod or staticmethod
    fn = real.__func__
    label = f"{importer.__name__}.{method}"

    def checked(*args: Any, **kwargs: Any) -> Any:
        with _Quiet():
            caller = _getframe(1)
            while caller is not None and not caller.f_code.co_filename.startswith(policy.root):
                if caller.f_code.co_filename.startswith(_IMPORTLIB):
                    caller = None  # the import system is calling
                    break
                caller = caller.f_back
        if caller is not None:
            shown = args[1:] if wrapper_kind is classmethod else args
            policy.forbid("interpreter", f"{label}{_describe_args(shown)}", caller)
        return fn(*args, **kwargs)

    checked.__name__ = method
    checked.__qualname__ = f"{importer.__name__}.{method}"
    checked.__doc__ = fn.__doc__
    return wrapper_kind(checked)


# ---- loading plugin code ----------------------------------------------------------------


class _Guard(ast.NodeTransformer):
    """Refuses escape attributes at load and routes guarded ones through ``__pv_attr__``."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr in BLOCKED_ATTRIBUTES:
            _load_refusal(node, f"attribute {node.attr}", self.filename)
        if node.attr in GUARDED_ATTRIBUTES and isinstance(node.ctx, ast.Load):
            call = ast.Call(
                func=ast.Name(id=_GUARD_FN, ctx=ast.Load()),
                args=[node.value, ast.Constant(node.attr)],
                keywords=[],
            )
            return ast.copy_location(call, node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        # Only the dunder names are module globals worth refusing (``__builtins__``); a
        # local variable called ``f_code`` is harmless.
        if node.id in BLOCKED_ATTRIBUTES and node.id.startswith("__"):
            _load_refusal(node, f"name {node.id}", self.filename)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        for alias in node.names:
            if alias.name in BLOCKED_ATTRIBUTES:
                _load_refusal(node, f"import of {alias.name}", self.filename)
        return node

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        self.generic_visit(node)
        for attr in node.kwd_attrs:
            if attr in BLOCKED_ATTRIBUTES or attr in GUARDED_ATTRIBUTES:
                _load_refusal(node, f"match pattern attribute {attr}", self.filename)
        return node


def _load_refusal(node: ast.AST, what: str, filename: str) -> NoReturn:
    policy = _active()
    detail = f"interpreter: {what}, {filename}:{getattr(node, 'lineno', 0)}"
    exc = PolicyViolation("forbidden", detail, operation="interpreter")
    policy.send("policy.forbidden", detail, exc)
    raise exc


class _PluginLoader(importlib.machinery.SourceFileLoader):
    """Loads plugin modules from source only, through the AST guard, with restricted builtins."""

    def get_code(self, fullname: str) -> types.CodeType:
        policy = _active()
        policy.loading_source = True
        try:
            source = self.get_data(self.path)
        finally:
            policy.loading_source = False
        return self.source_to_code(source, self.path)

    def source_to_code(  # type: ignore[override]
        self, data: bytes, path: str, *, _optimize: int = -1
    ) -> types.CodeType:
        policy = _active()
        tree = ast.parse(data, filename=path)
        rel = path[len(policy.root) :] if path.startswith(policy.root) else path
        tree = ast.fix_missing_locations(_Guard(rel).visit(tree))
        code: types.CodeType = compile(tree, path, "exec", dont_inherit=True)
        return code

    def exec_module(self, module: types.ModuleType) -> None:
        code = self.get_code(module.__name__)
        module.__dict__["__builtins__"] = _active().builtins
        exec(code, module.__dict__)  # noqa: S102 -- the guarded plugin module itself

    def set_data(self, path: str, data: Any, *, _mode: int = 0o666) -> None:
        return None  # never write bytecode caches


class _NamespaceLoader(importlib.machinery.SourceFileLoader):
    """A plugin sub-directory without ``__init__.py``: an empty package."""

    def get_code(self, fullname: str) -> types.CodeType:
        code: types.CodeType = compile("", self.path, "exec", dont_inherit=True)
        return code

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = _active().builtins


class _PluginFinder:
    """Finds the plugin's package (and only it) under the plugin root; claims every name in it."""

    def __init__(self, root: str, package: str) -> None:
        self.root = root
        self.package = package

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.package and not fullname.startswith(self.package + "."):
            return None
        base = os.path.join(self.root, *fullname.split("."))
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(
                fullname, init, loader=_PluginLoader(fullname, init),
                submodule_search_locations=[base],
            )  # fmt: skip
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(
                fullname, base + ".py", loader=_PluginLoader(fullname, base + ".py")
            )
        if os.path.isdir(base):
            return importlib.util.spec_from_file_location(
                fullname, base, loader=_NamespaceLoader(fullname, base),
                submodule_search_locations=[base],
            )  # fmt: skip
        # Claim the name: no other finder may load it (a shipped .so, a same-named module).
        raise ModuleNotFoundError(f"No module named {fullname!r} in the plugin", name=fullname)

    def invalidate_caches(self) -> None:
        return None


# ---- the public handle ------------------------------------------------------------------


class PolicyHandle:
    """What the plugin host holds: request bracketing, the file count, plugin loading."""

    def __init__(self, policy: _Policy) -> None:
        self._policy = policy

    def begin_request(self, request_id: str) -> None:
        """Start counting files (and deduplicating reports) for one request."""
        p = self._policy
        p.files_opened = 0
        p.violations = 0
        p.reported = set()
        p.request_id = request_id

    def end_request(self) -> None:
        """Stop counting; opens outside a request are not budgeted."""
        self._policy.request_id = None

    @property
    def files_opened(self) -> int:
        """Files opened in the current (or last) request."""
        return self._policy.files_opened

    @property
    def violations(self) -> int:
        """Violations raised in the current (or last) request, reported or deduplicated."""
        return self._policy.violations

    @property
    def request_id(self) -> str | None:
        return self._policy.request_id

    def load_plugin(self, entrypoint: str) -> object:
        """Import ``module:attribute`` from the plugin root under the policy; the attribute."""
        return self._policy.load(entrypoint)


def install_policy(
    profile: SecurityProfile,
    plugin_root: str,
    report: Callable[[str, str], None],
    *,
    data_dir: str | None = None,
) -> PolicyHandle:
    """Install the audit hook and the import policy for ``profile``; once per process.

    ``data_dir`` (optional) is where writes are allowed when the profile does not forbid
    ``file_write``; without it such a profile's writes are left to the OS layer.
    """
    global _ACTIVE  # noqa: PLW0603 -- one policy per process, by design
    if _ACTIVE is not None:
        raise SandboxError("policy_installed", "a policy is already installed in this process")
    policy = _Policy(profile, plugin_root, report, data_dir)
    _ACTIVE = policy
    _guard_stdlib(policy)
    # The hook holds the policy in its closure: rebinding _ACTIVE does not switch it off.
    sys.addaudithook(_make_hook(policy))
    return PolicyHandle(policy)
