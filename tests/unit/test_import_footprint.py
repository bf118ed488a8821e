"""What each long-running process imports: no library it does not use.

Every module a process imports is resident memory for its whole life (the daemon's RSS
goal is 60 MB with 20 plugins) and, in the sandbox template, memory every plugin process
inherits. Each import below is checked in a fresh interpreter, as the process starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        # The daemon re-hashes trees but never checks signatures or unpacks archives, and
        # its logs are JSON: no cryptography, tarfile, rich (structlog's console extra).
        (
            "import plugvisor.daemon.main",
            {"cryptography", "tarfile", "rich", "pyseccomp", "celery", "flask", "bandit"},
        ),
        # The template's package import must not drag the parent side in.
        (
            "import plugvisor.sandbox.template",
            {"plugvisor.sandbox.host", "structlog", "psutil", "yaml", "pyseccomp"},
        ),
        # Logging set-up alone: structlog without rich.
        ("import plugvisor.core.log", {"rich", "pygments"}),
    ],
)
def test_process_imports_leave_out(statement: str, absent: set[str]) -> None:
    loaded = _modules_after(statement)
    assert sorted(absent & loaded) == []


def test_rich_is_importable_after_logging_is_set_up() -> None:
    """The scanner's Bandit imports rich after core.log: hiding it must not outlast the import."""
    loaded = _modules_after("import plugvisor.core.log\nimport rich.console")
    assert "rich.console" in loaded
