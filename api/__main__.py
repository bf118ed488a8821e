"""``python -m plugvisor.api``: the API on Flask's development server (its own entry point).

For development and ``plugvisor up`` on one machine only; ``plugvisor api`` execs this.
Production runs gunicorn: ``gunicorn "plugvisor.api:create_app()"``
(systemd/plugvisor-api.service).
"""

from __future__ import annotations

import argparse
import sys

from plugvisor.api.app import create_app
from plugvisor.core.config import load_settings
from plugvisor.core.entrypoint import run_process
from plugvisor.messaging.preflight import preflight


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m plugvisor.api", description=__doc__)
    parser.add_argument("--state-dir", default=None, help="state directory")
    parser.add_argument("--host", default=None, help="address (default: setting api_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: api_port)")
    args = parser.parse_args()
    settings = load_settings({"state_dir": args.state_dir})
    preflight(settings)  # an unreachable registry or broker: refused, naming the setting
    app = create_app(settings)
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    sys.stderr.write(
        f"plugvisor API on http://{host}:{port} (development server; production: "
        'gunicorn "plugvisor.api:create_app()")\n'
    )
    app.run(host=host, port=port, threaded=True, use_reloader=False, debug=False)
    return 0


if __name__ == "__main__":
    run_process(main)
