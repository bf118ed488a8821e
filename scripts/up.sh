#!/usr/bin/env bash
# README's first command: install plugvisor into ./.venv, then start the whole stack
# (daemon, one worker, API) on the embedded SQLite broker with the demo plugin active.
# State lives in ./var (or $PLUGVISOR_STATE_DIR). Extra arguments go to `plugvisor up`
# (e.g. --port 8470). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/plugvisor up "$@"
