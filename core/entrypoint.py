"""How every plugvisor process ends on an error: a message naming the rule, an exit code.

The CLI (``plugvisor ...``) and the process entry points (``python -m plugvisor.daemon``,
``plugvisor.workers``, ``plugvisor.api``, which the CLI's ``daemon``/``worker``/``api``
commands exec) render a :class:`~plugvisor.core.errors.PlugvisorError` the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import NoReturn

from plugvisor.core.errors import PlugvisorError

__all__ = ["exit_with", "run_process"]


def exit_with(err: PlugvisorError, as_json: bool = False) -> NoReturn:
    """Print ``err`` (``error: ...`` on stderr, or the JSON envelope on stdout); exit."""
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": err.to_dict()}, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"error: {err}\n")
    sys.exit(err.exit_code)


def run_process(main: Callable[[], int]) -> NoReturn:
    """Run a process's ``main`` and exit with its code; a PlugvisorError ends it cleanly."""
    try:
        code = main()
    except PlugvisorError as err:
        exit_with(err)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
