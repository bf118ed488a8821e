"""``python -m plugvisor.daemon [--state-dir DIR]``: the supervisor daemon's own entry point.

``plugvisor daemon`` execs this (systemd: ``Type=notify`` from the same pid). Settings
come from the environment and the config file, as everywhere; SIGHUP re-reads them.
"""

from __future__ import annotations

import argparse

from plugvisor.core.config import load_settings
from plugvisor.core.entrypoint import run_process
from plugvisor.daemon.main import run_daemon


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m plugvisor.daemon", description=__doc__)
    parser.add_argument("--state-dir", default=None, help="state directory")
    state_dir = parser.parse_args().state_dir
    settings = load_settings({"state_dir": state_dir})
    return run_daemon(settings, reload=lambda: load_settings({"state_dir": state_dir}))


if __name__ == "__main__":
    run_process(main)
