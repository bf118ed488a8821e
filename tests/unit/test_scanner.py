"""The static scan: Bandit through its API plus the profile compliance walk (scan/scanner.py)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from plugvisor.core.config import load_settings
from plugvisor.core.errors import StateError
from plugvisor.core.profile import SecurityProfile, load_profile
from plugvisor.scan.scanner import Finding, ScanReport, Severity, scan_tree


@pytest.fixture(scope="module")
def default_profile(tmp_path_factory: pytest.TempPathFactory) -> SecurityProfile:
    settings = load_settings({"state_dir": str(tmp_path_factory.mktemp("state"))}, env={})
    return load_profile("default", settings)


@pytest.fixture(scope="module")
def trusted_profile(tmp_path_factory: pytest.TempPathFactory) -> SecurityProfile:
    settings = load_settings({"state_dir": str(tmp_path_factory.mktemp("state"))}, env={})
    return load_profile("trusted", settings)


def _plugin(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def _compliance(report: ScanReport) -> list[Finding]:
    return [f for f in report.findings if f.tool == "compliance"]


# Each case: code whose LAST line is the offending one, the rule expected there, and a
# fragment of the message. Line 1 is always a harmless statement so lines are not trivial.
RULE_CASES = [
    ("import os", "PV101", "import of os"),
    ("from shelve import open as sopen", "PV103", "dynamic_code"),
    ("import subprocess", "PV103", "'subprocess'"),
    ("import socket", "PV103", "'network'"),
    ("import ctypes", "PV103", "'native_code'"),
    ("from cffi import FFI", "PV103", "'native_code'"),
    ("import shutil", "PV103", "'file_write'"),
    ("import sys", "PV104", "interpreter internals"),
    ("fh = open('out.txt', 'w')", "PV103", "write mode 'w'"),
    ("fh = open('out.txt', mode='ab')", "PV103", "write mode 'ab'"),
    ("fh = open('out.txt', 'r+')", "PV103", "write mode 'r+'"),
    ("m = 'w'\nfh = open('out.txt', m)", "PV103", "computed mode"),
    ("import pathlib\npathlib.Path('x').write_text('y')", "PV103", "write_text"),
    ("value = eval('1 + 1')", "PV103", "call of eval()"),
    ("exec('x = 1')", "PV103", "call of exec()"),
    ("code = compile('1', 'f', 'eval')", "PV103", "call of compile()"),
    ("import json\nmod = __import__('json')", "PV103", "__import__('json')"),
    ("name = 'o' + 's'\nmod = __import__(name)", "PV105", "computed module name"),
    ("import importlib\nname = 'x'\nm = importlib.import_module(name)", "PV105", "computed"),
    ("x = ().__class__.__base__.__subclasses__()", "PV104", "__subclasses__"),
    ("def f():\n    pass\ng = f.__globals__", "PV104", "__globals__"),
    ("def f():\n    pass\nc = f.__code__", "PV104", "__code__"),
    ("b = __builtins__", "PV104", "__builtins__"),
    ("def gen():\n    yield 1\nfr = gen().gi_frame", "PV104", "gi_frame"),
    ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    g = e.__traceback__.tb_frame", "PV104",
     "tb_frame"),
    ("g = vars(object)['__globals__']", "PV104", "__globals__"),
    ("def f():\n    pass\ng = getattr(f, '__globals__')", "PV104", "__globals__"),
    ("def f():\n    pass\ng = getattr(f, '__glo' + 'bals__')", "PV105", "__globals__"),
    ("def f(n):\n    return getattr(f, f'__{n}__')", "PV105", "computed dunder"),
    ("import operator\nget = operator.attrgetter('__globals__')", "PV104", "__globals__"),
    ("import operator\nget = operator.attrgetter('a.__code__')", "PV104", "__code__"),
    ("def f():\n    pass\ns = '{0.__globals__}'.format(f)", "PV104", "format string"),
    ("g = getattr\nsub = g(object, '__subclasses__')", "PV104", "escape attribute"),
    ("g = getattr\nsub = g(object, '__subc' + 'lasses__')", "PV105", "spell '__subclasses__'"),
    ("def probe(x: 'getattr'): pass", "PV105", "string annotation"),
    ("def probe() -> 'eval': pass", "PV105", "string annotation"),
    ("y: '__import__(\"os\")' = 1", "PV105", "string annotation"),
    ("def f():\n    pass\ns = 'x {0.a.__code__!r}'.format(f)", "PV104", "format string"),
    ("import base64\nexec(base64.b64decode('cHJpbnQoMSk=' * 4).decode())", "PV105",
     "decoded payload"),
    ("def g():\n    pass\nimport os.path\ny = os.path.exists('x')", "PV102",
     "os.path.exists() is not in allowed_functions"),
    ("x = input()", "PV102", "input() is not in allowed_functions"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "rule", "fragment"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_compliance_rule_is_found_on_its_line(
    tmp_path: Path, default_profile: SecurityProfile, code: str, rule: str, fragment: str
) -> None:
    source = "counter = 0\n" + code + "\n"
    last = source.rstrip("\n").count("\n") + 1
    _plugin(tmp_path, {"plug/__init__.py": source})
    report = scan_tree(tmp_path, default_profile)
    hits = [f for f in _compliance(report) if f.rule == rule and f.line == last]
    assert hits, f"no {rule} on line {last}: {[f.to_dict() for f in report.findings]}"
    assert any(fragment in f.message for f in hits), [f.message for f in hits]
    hit = hits[0]
    assert hit.file == "plug/__init__.py"
    assert hit.cwe > 0
    assert hit.owasp.startswith("A")
    assert hit.severity >= Severity.MEDIUM


HONEST = '''
"""An honest plugin using the pure-computation standard library."""
from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import heapq
import html
import io
import ipaddress
import itertools
import json
import math
import re
import statistics
import string
import textwrap
import time
import typing
import unicodedata
import urllib.parse
import uuid
import zoneinfo
from collections import Counter, defaultdict
from contextlib import suppress
from importlib import resources

from . import util
from .util import helper
from plug import util as same_util

PATTERN = re.compile(r"^[a-z]+$")


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    price: decimal.Decimal


class Plugin:
    def setup(self, ctx):
        self.ctx = ctx
        self.counts: Counter[str] = Counter()
        self.data = resources.files(__package__).joinpath("data.json").read_text()
        with open(__file__) as fh:   # reading its own file: allowed
            self.source = fh.read()

    def handle(self, request):
        if not isinstance(request, dict):
            raise ValueError("request must be an object")
        words = re.findall(r"\\w+", str(request.get("text", "")))
        self.counts.update(w.lower() for w in words)
        tz = zoneinfo.ZoneInfo("Europe/Paris")
        now = datetime.datetime.now(tz)
        total = sum(decimal.Decimal(str(p)) for p in request.get("prices", []))
        buf = io.StringIO()
        csv.writer(buf).writerow(sorted(self.counts))
        grouped = defaultdict(list)
        for key, group in itertools.groupby(sorted(words), key=len):
            grouped[key].extend(group)
        with suppress(KeyError):
            del grouped[0]
        time.sleep(0.001)
        out = {
            "n": len(words),
            "top": heapq.nlargest(3, self.counts.items(), key=lambda kv: kv[1]),
            "mean": statistics.mean([len(w) for w in words]) if words else 0,
            "sqrt": math.sqrt(16),
            "total": str(total),
            "at": now.isoformat(),
            "digest": hashlib.sha256(b"x").hexdigest(),
            "b64": base64.b64encode(b"hi").decode(),
            "id": str(uuid.uuid4()),
            "url": urllib.parse.quote("a b"),
            "net": str(ipaddress.ip_address("127.0.0.1")),
            "html": html.escape("<b>"),
            "wrap": textwrap.shorten("hello world", 8),
            "name": unicodedata.name("a"),
            "kind": type(request).__name__,
            "fields": [f.name for f in dataclasses.fields(Item)],
            "keys": dict.fromkeys(["a", "b"], 0),
            "joined": ", ".join(string.ascii_lowercase[:3]),
            "json": json.loads(json.dumps({"a": 1})),
            "csv": buf.getvalue(),
            "color": Color.RED.name,
            "helper": helper(getattr(self, "counts")),
            "hint": typing.get_type_hints(Item) is not None,
            "cached": _cached(3),
        }
        return out


@functools.lru_cache(maxsize=8)
def _cached(n: int) -> int:
    return n * 2
'''

UTIL = """
def helper(value):
    return len(value)
"""


def test_honest_stdlib_code_has_no_compliance_finding(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    _plugin(tmp_path, {"plug/__init__.py": HONEST, "plug/util.py": UTIL, "plug/data.json": "{}"})
    report = scan_tree(tmp_path, default_profile)
    assert _compliance(report) == [], [f.to_dict() for f in _compliance(report)]
    assert not report.at_or_above(Severity.MEDIUM), [f.to_dict() for f in report.findings]
    assert report.files == ("plug/__init__.py", "plug/data.json", "plug/util.py")


def test_bandit_findings_are_reported_with_cwe_and_owasp(
    tmp_path: Path, trusted_profile: SecurityProfile
) -> None:
    _plugin(
        tmp_path,
        {
            "plug/__init__.py": """
            import subprocess

            def run(cmd):
                return subprocess.call(cmd, shell=True)

            def calc(expr):
                return eval(expr)
            """
        },
    )
    report = scan_tree(tmp_path, trusted_profile)
    bandit = {(f.rule, f.line): f for f in report.findings if f.tool == "bandit"}
    assert ("B602", 4) in bandit, sorted(bandit)
    assert ("B307", 7) in bandit, sorted(bandit)
    b602 = bandit[("B602", 4)]
    assert b602.cwe == 78
    assert b602.owasp == "A03:2021-Injection"
    assert b602.severity is Severity.HIGH
    assert b602.name == "subprocess_popen_with_shell_equals_true"
    assert bandit[("B307", 7)].severity is Severity.MEDIUM


def test_unparseable_and_opaque_files_are_findings(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    _plugin(tmp_path, {"plug/__init__.py": "x = 1\ndef broken(:\n", "plug/fast.py": "y = 2\n"})
    (tmp_path / "plug" / "_speedups.so").write_bytes(b"\x7fELF")
    (tmp_path / "plug" / "cached.pyc").write_bytes(b"\x00")
    os.mkfifo(tmp_path / "plug" / "pipe.py")  # would block a scan that reads it
    (tmp_path / "plug" / "link.py").symlink_to("/etc/passwd")
    report = scan_tree(tmp_path, default_profile)
    rules = {(f.rule, f.file, f.line) for f in report.findings}
    assert ("PV100", "plug/__init__.py", 2) in rules
    assert ("PV106", "plug/_speedups.so", 1) in rules
    assert ("PV106", "plug/cached.pyc", 1) in rules
    assert ("PV106", "plug/pipe.py", 1) in rules
    assert ("PV106", "plug/link.py", 1) in rules
    assert all(f.severity is Severity.HIGH for f in report.findings if f.rule in ("PV100", "PV106"))


def test_import_from_own_package_and_allowed_submodule(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    _plugin(
        tmp_path,
        {
            "plug/__init__.py": "from plug.util import helper\nimport plug.util\n"
            "from os.path import join\nfrom collections.abc import Mapping\n",
            "plug/util.py": "def helper():\n    return 1\n",
        },
    )
    assert _compliance(scan_tree(tmp_path, default_profile)) == []


def test_long_encoded_literal_alone_is_low(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    blob = "QUJD" * 20
    _plugin(tmp_path, {"plug/__init__.py": f"import base64\nDATA = base64.b64decode('{blob}')\n"})
    found = [f for f in _compliance(scan_tree(tmp_path, default_profile)) if f.rule == "PV105"]
    assert [(f.line, f.severity) for f in found] == [(2, Severity.LOW)]


def test_profile_that_allows_an_operation_class_does_not_flag_it(
    tmp_path: Path, trusted_profile: SecurityProfile, default_profile: SecurityProfile
) -> None:
    assert "file_write" not in trusted_profile.forbidden_operations
    _plugin(tmp_path, {"plug/__init__.py": "fh = open('x', 'w')\n"})
    assert not [f for f in _compliance(scan_tree(tmp_path, trusted_profile)) if f.rule == "PV103"]
    assert [f.rule for f in _compliance(scan_tree(tmp_path, default_profile))] == ["PV103"]


def test_report_round_trips_through_json(tmp_path: Path, default_profile: SecurityProfile) -> None:
    _plugin(tmp_path, {"plug/__init__.py": "import subprocess\n"})
    report = scan_tree(tmp_path, default_profile)
    again = ScanReport.from_dict(report.to_dict())
    assert again.findings == report.findings
    assert again.files == report.files
    assert report.to_dict()["counts"]["high"] >= 1
    assert report.max_severity is Severity.HIGH


def test_scanning_never_imports_the_plugin(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    marker = tmp_path / "imported"
    _plugin(tmp_path, {"plug/__init__.py": f"open({str(marker)!r}, 'w').write('x')\n"})
    report = scan_tree(tmp_path, default_profile)
    assert not marker.exists()
    assert any(f.rule == "PV103" for f in report.findings)


def test_missing_root_is_a_state_error(tmp_path: Path, default_profile: SecurityProfile) -> None:
    with pytest.raises(StateError) as info:
        scan_tree(tmp_path / "nope", default_profile)
    assert info.value.code == "state.scan_root"


def test_pathologically_nested_code_is_a_finding_not_a_crash(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    # Deep enough to exhaust a recursive visitor, shallow enough for CPython's parser.
    depth = 5000
    deep = "x = " + "-" * depth + "1\n"
    _plugin(tmp_path, {"plug/__init__.py": deep, "plug/ok.py": "import subprocess\n"})
    report = scan_tree(tmp_path, default_profile)
    rules = {(f.rule, f.file) for f in report.findings}
    assert ("PV100", "plug/__init__.py") in rules
    assert ("PV103", "plug/ok.py") in rules  # the other files are still checked


SANDBOX_PLUGINS = Path(__file__).resolve().parents[1] / "sandbox" / "plugins"


def test_honest_plugins_of_the_sandbox_suite_pass_the_compliance_check(tmp_path: Path) -> None:
    """The static check must not refuse what the runtime sandbox lets honest plugins do."""
    honest = sorted(SANDBOX_PLUGINS.glob("ok_*")) if SANDBOX_PLUGINS.is_dir() else []
    if not honest:
        pytest.skip(f"no honest plugins under {SANDBOX_PLUGINS} (sandbox suite missing)")
    settings = load_settings({"state_dir": str(tmp_path / "state")}, env={})
    refused = {}
    for plugin in honest:
        meta = (plugin / "plugin.yaml").read_text() if (plugin / "plugin.yaml").exists() else ""
        name = next(
            (ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("profile:")),
            "default",
        )
        found = _compliance(scan_tree(plugin, load_profile(name, settings)))
        if found:
            refused[plugin.name] = [f.to_dict() for f in found]
    assert refused == {}


def test_nosec_comments_of_the_uploader_hide_nothing(
    tmp_path: Path, default_profile: SecurityProfile
) -> None:
    """The code and its comments are the uploader's: ``# nosec`` must not drop a finding."""
    root = _plugin(tmp_path / "p", {
        "p/__init__.py": """
            import hashlib
            def weak(data):
                return hashlib.md5(data).hexdigest()  # nosec
            def weak_too(data):
                return hashlib.md5(data).hexdigest()  # nosec B324
            """,
    })  # fmt: skip
    report = scan_tree(root, default_profile)
    md5_lines = sorted(f.line for f in report.findings if f.tool == "bandit" and f.rule == "B324")
    assert md5_lines == [3, 5]
