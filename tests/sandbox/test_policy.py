"""The in-process policy layer alone, in a real separate Python process, without the OS layers.

Each test writes a small plugin package, starts ``.venv/bin/python`` on a runner that
installs the policy (``install_policy``), loads the plugin and calls its ``handle`` once per
case inside ``begin_request``/``end_request``; the runner prints, per case, the result or
the error code and detail and the violations reported to the (fake) parent. Nothing here is
mocked: the audit hook, the import policy and the AST guard run as in the plugin child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

RUNNER = r"""
import json, os, sys, ctypes, socket, pathlib, importlib.machinery
from plugvisor.core.config import load_settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.profile import load_profile
from plugvisor.sandbox import policy as policy_module
from plugvisor.sandbox.policy import install_policy

root, profile_name, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data_dir = sys.argv[4] or None
reports = []
handle = install_policy(load_profile(profile_name, load_settings({})), root,
                        lambda kind, detail: reports.append([kind, detail]), data_dir=data_dir)
# What a hostile plugin would have if it found a way round the import policy: the audit
# hook must still refuse what these real modules do.
leaks = {"os": os, "socket": socket, "ctypes": ctypes, "pathlib": pathlib,
         "eval": eval, "import": __import__, "policy": policy_module,
         "importer": importlib.machinery.BuiltinImporter,
         "frozen": importlib.machinery.FrozenImporter}
out = {}
try:
    plugin = handle.load_plugin("probe:Plugin")(leaks)
except PlugvisorError as exc:
    out["__load__"] = {"error": exc.code, "detail": exc.message, "reports": reports}
    print(json.dumps(out))
    sys.exit(0)
for case in cases:
    del reports[:]
    handle.begin_request(case)
    try:
        out[case] = {"result": plugin.handle(case)}
    except PlugvisorError as exc:
        out[case] = {"error": exc.code, "detail": exc.message}
    except Exception as exc:
        out[case] = {"exception": type(exc).__name__, "detail": str(exc)}
    finally:
        out[case]["files"] = handle.files_opened
        handle.end_request()
    out[case]["reports"] = list(reports)
print(json.dumps(out, default=repr))
"""

PROBE = """
from __future__ import annotations

import json

class Plugin:
    def __init__(self, leaks):
        self.leaks = leaks

    def handle(self, case):
        return getattr(self, "case_" + case)()
"""


def _python() -> str:
    venv = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_plugin(
    tmp_path: Path,
    methods: str,
    cases: list[str],
    *,
    profile: str = "default",
    extra: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the probe plugin (``methods`` are its ``case_*`` methods), run ``cases``."""
    pkg = tmp_path / "root" / "probe"
    pkg.mkdir(parents=True)
    body = textwrap.indent(textwrap.dedent(methods), "    ")
    (pkg / "__init__.py").write_text(PROBE + "\n" + body)
    for name, source in (extra or {}).items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(source))
    proc = subprocess.run(
        [_python(), "-c", RUNNER, str(pkg.parent), profile, json.dumps(cases), str(data_dir or "")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


HONEST = """
def case_json(self):
    return json.loads(json.dumps({"a": [1, 2.5, None]}))

def case_text(self):
    import re, string, textwrap, difflib, unicodedata, html, base64, binascii
    from urllib.parse import quote, urlsplit
    t = string.Template("$x!").substitute(x="hi")
    return [re.sub(r"\\d+", "#", "a1b22"), t, textwrap.shorten("a b c d e f", 7),
            difflib.SequenceMatcher(None, "abc", "abd").ratio(),
            unicodedata.name("A"), html.escape("<&>"), base64.b64encode(b"x").decode(),
            binascii.hexlify(b"x").decode(), quote("a b"), urlsplit("http://h/p").path,
            "{0} {1:>3}".format("a", 1), "up".upper(),
            string.Formatter().format("{0[k]}-{1.real}", {"k": "v"}, 3)]

def case_numbers(self):
    import math, cmath, decimal, fractions, statistics, random, array, struct
    from decimal import Decimal
    return [math.sqrt(16), abs(cmath.sqrt(-1)), str(Decimal("1.1") + Decimal("2.2")),
            str(fractions.Fraction(1, 3) * 3), statistics.mean([1, 2, 3]),
            random.Random(4).randint(1, 6) > 0, list(array.array("i", [1, 2])),
            struct.unpack("<I", struct.pack("<I", 7))[0]]

def case_dates(self):
    import datetime, calendar, time, zoneinfo
    from zoneinfo import ZoneInfo
    d = datetime.datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    t0 = time.monotonic()
    time.sleep(0.01)
    return [d.utcoffset().total_seconds(), calendar.isleap(2024), time.time() > 0,
            time.monotonic() > t0, datetime.datetime.strptime("2024-01-02", "%Y-%m-%d").day,
            datetime.date(2024, 1, 1).isoformat()]

def case_collections(self):
    import collections, itertools, functools, operator, heapq, bisect, copy, enum, typing
    from collections import Counter, OrderedDict, defaultdict, namedtuple, deque
    from collections.abc import Mapping
    from dataclasses import dataclass, asdict, field
    P = namedtuple("P", "x y")

    @dataclass(frozen=True)
    class D:
        a: int
        b: list = field(default_factory=list)

    class Color(enum.Enum):
        RED = 1

    h = [3, 1, 2]
    heapq.heapify(h)
    dd = defaultdict(int)
    dd["k"] += 1
    return [Counter("aab").most_common(1)[0][0], list(OrderedDict(a=1)), dd["k"], P(1, 2).y,
            asdict(D(1)), Color.RED.name, heapq.heappop(h), bisect.bisect([1, 3], 2),
            copy.deepcopy({"a": [1]}), list(itertools.chain([1], [2])),
            functools.reduce(operator.add, [1, 2, 3]), operator.attrgetter("name")(Color.RED),
            isinstance({}, Mapping), typing.cast(int, 3), list(deque([1, 2], maxlen=1))]

def case_crypto(self):
    import hashlib, hmac, uuid, secrets
    return [hashlib.sha256(b"x").hexdigest()[:8], hmac.new(b"k", b"m", "sha256").hexdigest()[:8],
            len(str(uuid.uuid4())), len(secrets.token_hex(4))]

def case_io(self):
    import csv, io, ipaddress, contextlib, traceback, os.path
    buf = io.StringIO()
    csv.writer(buf).writerow(["a", "b"])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    try:
        raise ValueError("boom")
    except ValueError:
        tb = traceback.format_exc()
    with contextlib.suppress(KeyError):
        {}["x"]
    return [rows, str(ipaddress.ip_address("10.0.0.1") + 1), "boom" in tb,
            os.path.join("a", "b")]

def case_type_hints(self):
    import typing
    from dataclasses import dataclass, fields

    @dataclass
    class P:
        name: str
        tags: list[str]

    return [sorted(typing.get_type_hints(P)), [f.name for f in fields(P)]]

def case_introspection(self):
    class Box:
        def __init__(self):
            self.v = 1
    b = Box()
    return [type(b).__name__, isinstance(b, Box), getattr(b, "v"), hasattr(b, "w"),
            vars(b), b.__dict__, type(b).__mro__[-1].__name__, "v" in dir(b),
            b.__class__.__name__, callable(len)]

def case_resources(self):
    import importlib.resources
    from . import helper
    own = importlib.resources.files("probe").joinpath("data.txt").read_text()
    with open(__file__.replace("__init__.py", "data.txt")) as f:
        direct = f.read()
    return [own.strip(), direct.strip(), helper.double(21)]
"""


HONEST_CASES = ["json", "text", "numbers", "dates", "collections", "crypto", "io",
                "introspection", "resources", "type_hints"]  # fmt: skip


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_plugin(
        tmp_path_factory.mktemp("honest"),
        HONEST,
        HONEST_CASES,
        extra={"data.txt": "hello\n", "helper.py": "def double(x):\n    return 2 * x\n"},
    )


@pytest.mark.parametrize("case", HONEST_CASES)
def test_honest_stdlib_work_passes(honest: dict[str, Any], case: str) -> None:
    res = honest[case]
    assert "result" in res, res
    assert res["reports"] == []


def test_honest_results_are_right(honest: dict[str, Any]) -> None:
    assert honest["json"]["result"] == {"a": [1, 2.5, None]}
    assert honest["dates"]["result"][0] == 7200.0  # Paris in July: UTC+2, from zoneinfo data
    assert honest["resources"]["result"] == ["hello", "hello", 42]
    assert honest["introspection"]["result"][0] == "Box"
    assert honest["collections"]["result"][5] == "RED"


FORBIDDEN = """
def case_write(self):
    open("/tmp/plugvisor-policy-test-write", "w")

def case_write_caught(self):
    try:
        open("/tmp/plugvisor-policy-test-write", "a")
    except Exception as exc:
        return type(exc).__name__

def case_write_pathlib(self):
    self.leaks["pathlib"].Path("/tmp/plugvisor-policy-test-write").write_text("x")

def case_os_open_write(self):
    os = self.leaks["os"]
    os.open("/tmp/plugvisor-policy-test-write", os.O_WRONLY | os.O_CREAT)

def case_remove(self):
    self.leaks["os"].remove("/tmp/plugvisor-policy-test-nonexistent")

def case_system(self):
    return self.leaks["os"].system("true")

def case_socket(self):
    return self.leaks["socket"].socket()

def case_ctypes(self):
    return self.leaks["ctypes"].CDLL(None)

def case_real_eval(self):
    return self.leaks["eval"]("1 + 1")

def case_real_import(self):
    return self.leaks["import"]("pty")

def case_globals(self):
    return globals()

def case_eval(self):
    return eval("1 + 1")

def case_exec(self):
    exec("x = 1")

def case_import_os(self):
    import os

def case_import_subprocess(self):
    import subprocess

def case_import_ctypes(self):
    import ctypes

def case_import_sys(self):
    import sys

def case_from_os_import_system(self):
    from os import system

def case_time_not_listed(self):
    import time
    return time.ctime()

def case_hidden_submodule(self):
    import uuid
    return uuid.os.system("true")  # uuid.os is the os proxy of os.path.* entries: path only

def case_getattr_globals(self):
    return getattr(self.handle, "__glo" + "bals__")

def case_getattr_subclasses(self):
    return getattr(object, "__subcl" + "asses__")()

def case_vars_type(self):
    return vars(type)["__subclasses__"](object)

def case_builtin_self(self):
    return len.__self__

def case_format_code(self):
    return "{0.__code__}".format(self.handle.__func__)

def case_formatter(self):
    import string
    return string.Formatter().format("{0.__globals__}", self.handle.__func__)

def case_attrgetter(self):
    import operator
    return operator.attrgetter("__globals__")(self.handle)

def case_getattribute(self):
    return object.__getattribute__(self.handle, "__glo" + "bals__")

def case_subclasses_module(self):
    from . import esc_subclasses

def case_frames_module(self):
    from . import esc_frames

def case_type_hints(self):
    import typing

    class A:
        x: "().__class__.__base__.__subclasses__()"

    return typing.get_type_hints(A)

def case_forward_ref(self):
    import typing
    ref = typing.ForwardRef("__import__('os').system('true')")
    return ref._evaluate({}, {}, frozenset())

def case_files(self):
    n = 0
    for _ in range(60):
        with open(__file__) as f:
            n += len(f.read(1))
    return n

def case_files_ok(self):
    for _ in range(10):
        with open(__file__) as f:
            f.read(1)
    return True
"""

ESCAPES = {
    "esc_subclasses.py": "x = ().__class__.__base__.__subclasses__()\n",
    "esc_frames.py": "def f():\n    yield 1\n\n\ng = f().gi_frame.f_back\n",
}


@pytest.fixture(scope="module")
def forbidden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cases = [line.split("case_")[1].split("(")[0] for line in FORBIDDEN.splitlines()
             if line.startswith("def case_")]  # fmt: skip
    return run_plugin(tmp_path_factory.mktemp("forbidden"), FORBIDDEN, cases, extra=ESCAPES)


@pytest.mark.parametrize(
    ("case", "operation"),
    [
        ("write", "file_write"),
        ("write_pathlib", "file_write"),
        ("os_open_write", "file_write"),
        ("remove", "file_write"),
        ("system", "subprocess"),
        ("socket", "network"),
        ("ctypes", "native_code"),
        ("real_eval", "dynamic_code"),
        ("real_import", "subprocess"),
        ("eval", "dynamic_code"),
        ("globals", "builtin"),
        ("exec", "dynamic_code"),
        ("import_os", "import"),
        ("import_subprocess", "subprocess"),
        ("import_ctypes", "native_code"),
        ("import_sys", "interpreter"),
        ("from_os_import_system", "import"),
        ("time_not_listed", "import"),
        ("hidden_submodule", "import"),
        ("getattr_globals", "interpreter"),
        ("getattr_subclasses", "interpreter"),
        ("vars_type", "interpreter"),
        ("builtin_self", "interpreter"),
        ("format_code", "interpreter"),
        ("attrgetter", "interpreter"),
        ("formatter", "interpreter"),
        ("getattribute", "interpreter"),
        ("subclasses_module", "interpreter"),
        ("frames_module", "interpreter"),
        ("type_hints", "interpreter"),
        ("forward_ref", "interpreter"),
    ],
)
def test_forbidden_operation_is_refused_and_reported(
    forbidden: dict[str, Any], case: str, operation: str
) -> None:
    res = forbidden[case]
    assert res.get("error") == "policy.forbidden", res
    assert res["detail"].startswith(operation + ": "), res
    # Named where it happened: the plugin file and line.
    assert "probe/" in res["detail"] or "__init__.py:" in res["detail"], res
    assert res["reports"] == [["policy.forbidden", res["detail"]]]


def test_caught_violation_is_still_reported(forbidden: dict[str, Any]) -> None:
    res = forbidden["write_caught"]
    assert res["result"] == "PolicyViolation"
    assert len(res["reports"]) == 1 and res["reports"][0][1].startswith("file_write: ")
    assert not Path("/tmp/plugvisor-policy-test-write").exists()


def test_load_time_refusal_names_file_and_line(forbidden: dict[str, Any]) -> None:
    assert forbidden["subclasses_module"]["detail"] == (
        "interpreter: attribute __subclasses__, probe/esc_subclasses.py:1"
    )
    assert "probe/esc_frames.py:5" in forbidden["frames_module"]["detail"]


def test_file_budget_counts_reads(forbidden: dict[str, Any]) -> None:
    res = forbidden["files"]
    assert res["error"] == "budget.files", res
    assert res["files"] == 51  # the 51st open was refused
    assert [r[0] for r in res["reports"]] == ["budget.files"]
    ok = forbidden["files_ok"]
    assert ok["result"] is True and ok["files"] == 10 and ok["reports"] == []


def test_trusted_profile_allows_writes_and_sockets(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    methods = f"""
    def case_write(self):
        with open({str(target)!r}, "w") as f:
            f.write("ok")
        return True

    def case_socket(self):
        import socket
        a, b = socket.socketpair()
        a.close(); b.close()
        return True

    def case_system(self):
        return self.leaks["os"].system("true")
    """
    res = run_plugin(tmp_path, methods, ["write", "socket", "system"], profile="trusted")
    assert res["write"]["result"] is True and target.read_text() == "ok"
    assert res["socket"]["result"] is True
    assert res["system"]["error"] == "policy.forbidden"  # still forbidden under trusted


def test_trusted_writes_only_inside_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside.txt"
    methods = f"""
    def case_inside(self):
        import pathlib
        pathlib.Path({str(data)!r}, "notes.txt").write_text("kept")
        return True

    def case_outside(self):
        with open({str(outside)!r}, "w") as f:
            f.write("no")
    """
    res = run_plugin(tmp_path, methods, ["inside", "outside"], profile="trusted", data_dir=data)
    assert res["inside"]["result"] is True and (data / "notes.txt").read_text() == "kept"
    assert res["outside"]["error"] == "policy.forbidden"
    assert res["outside"]["detail"].startswith("file_write: open(")
    assert not outside.exists()


def test_strict_profile_refuses_what_default_allows(tmp_path: Path) -> None:
    methods = """
    def case_json(self):
        import re
        return json.dumps({"n": len(re.findall("a", "banana"))})

    def case_open(self):
        return open(__file__).read(1)

    def case_zoneinfo(self):
        import zoneinfo
    """
    res = run_plugin(tmp_path, methods, ["json", "open", "zoneinfo"], profile="strict")
    assert res["json"]["result"] == '{"n": 3}'
    assert res["open"]["error"] == "policy.forbidden"
    assert res["open"]["detail"].startswith("builtin: open() (not allowed by profile strict)")
    assert res["zoneinfo"]["detail"].startswith("import: import zoneinfo")


def test_importers_refuse_plugin_callers(tmp_path: Path) -> None:
    """The built-in/frozen importers hand out real modules: only the import system may call."""
    methods = """
    def case_load_sys(self):
        return self.leaks["importer"].load_module("sys")

    def case_find_spec(self):
        return self.leaks["importer"].find_spec("sys")

    def case_frozen(self):
        return self.leaks["frozen"].find_spec("os")

    def case_honest_import(self):
        import math, itertools  # built-in modules, through the import system
        return math.floor(2.5) + len(list(itertools.repeat(0, 2)))
    """
    res = run_plugin(tmp_path, methods, ["load_sys", "find_spec", "frozen", "honest_import"])
    for case, label in [
        ("load_sys", "BuiltinImporter.load_module('sys')"),
        ("find_spec", "BuiltinImporter.find_spec('sys')"),
        ("frozen", "FrozenImporter.find_spec('os')"),
    ]:
        assert res[case].get("error") == "policy.forbidden", res[case]
        assert res[case]["detail"].startswith(f"interpreter: {label}, "), res[case]
        assert res[case]["reports"] == [["policy.forbidden", res[case]["detail"]]]
    assert res["honest_import"]["result"] == 4


def test_policy_cannot_be_silenced_from_its_module(tmp_path: Path) -> None:
    """Holding the policy's own module is not enough to switch the audit hook off.

    The hook's "busy" state lives in a closure (no module global or thread-local to set),
    ``_Quiet`` serves the policy's own code only, and the hook holds the policy itself, so
    clearing the module's ``_ACTIVE`` changes nothing either.
    """
    methods = """
    def case_quiet(self):
        self.leaks["policy"]._Quiet().__enter__()

    def case_silenced_system(self):
        policy = self.leaks["policy"]
        try:
            policy._Quiet().__enter__()
        except Exception:
            pass
        for name in ("_local", "_ACTIVE"):
            try:
                setattr(policy, name, None)
            except Exception:
                pass
        return self.leaks["os"].system("true")
    """
    res = run_plugin(tmp_path, methods, ["quiet", "silenced_system"])
    assert res["quiet"].get("error") == "sandbox.policy_quiet", res["quiet"]
    system = res["silenced_system"]
    assert system.get("error") == "policy.forbidden", system
    assert system["detail"].startswith("subprocess: os.system(b'true')"), system
    assert system["reports"] == [["policy.forbidden", system["detail"]]]


def test_plugin_code_never_runs_while_the_hook_is_quiet(tmp_path: Path) -> None:
    """The policy's checks call no plugin method: it would run with the hook ignoring it.

    A str subclass as the open mode (``"w" in mode``) or as a string typing compiles
    (``source.strip()``) would get its method called while the hook is busy, and a write
    there would go through unseen (no OS layers here, so it would land on disk).
    """
    canary = tmp_path / "canary"
    outer = tmp_path / "outer"
    methods = f"""
    def _write(self):
        try:
            with open({str(canary)!r}, "w") as f:
                f.write("unwatched")
        except Exception:
            pass

    def case_str_mode(self):
        plugin = self

        class Mode(str):
            def __contains__(self, item):
                plugin._write()
                return str.__contains__(self, item)

        open({str(outer)!r}, Mode("w"))

    def case_compile_source(self):
        import typing
        plugin = self

        class Source(str):
            def strip(self, *args):
                plugin._write()
                return str.strip(self, *args)

        return str(typing.ForwardRef(Source("int")))
    """
    res = run_plugin(tmp_path, methods, ["str_mode", "compile_source"])
    assert res["str_mode"].get("error") == "policy.forbidden", res["str_mode"]
    assert res["compile_source"]["result"] == "ForwardRef('int')", res["compile_source"]
    assert not canary.exists(), "plugin code ran while the audit hook was quiet"
    assert not outer.exists()


def test_plugin_cannot_shadow_a_stdlib_module(tmp_path: Path) -> None:
    pkg = tmp_path / "json"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("class Plugin: pass\n")
    code = (
        "from plugvisor.core.config import load_settings\n"
        "from plugvisor.core.profile import load_profile\n"
        "from plugvisor.sandbox.policy import install_policy\n"
        "from plugvisor.core.errors import SandboxError\n"
        f"h = install_policy(load_profile('default', load_settings({{}})), {str(tmp_path)!r},"
        " lambda k, d: None)\n"
        "try:\n    h.load_plugin('json:Plugin')\nexcept SandboxError as e:\n    print(e.code)\n"
    )
    proc = subprocess.run([_python(), "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "sandbox.bad_entrypoint", proc.stderr
