"""``python -m plugvisor.workers``: a Celery worker for the job queue (its own entry point).

``plugvisor worker`` execs this with its options; settings come from the environment and
the config file.
"""

from __future__ import annotations

import argparse

from plugvisor.core.config import load_settings
from plugvisor.core.entrypoint import run_process
from plugvisor.core.log import configure_logging
from plugvisor.workers.app import run_worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m plugvisor.workers", description=__doc__)
    parser.add_argument("--state-dir", default=None, help="state directory")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks run at once")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork")
    parser.add_argument("--hostname", default=None, help="worker node name")
    args = parser.parse_args()
    settings = load_settings({"state_dir": args.state_dir})
    configure_logging(settings.log_level, settings.log_format, component="worker")
    return run_worker(
        settings, concurrency=args.concurrency, pool=args.pool, hostname=args.hostname
    )


if __name__ == "__main__":
    run_process(main)
