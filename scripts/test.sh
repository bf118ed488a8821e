#!/usr/bin/env bash
# Install everything the tests need, then run ruff, mypy, import-linter and pytest.
#
# README's second command and what .ci/run runs (with CI=true). Installs Debian's
# rabbitmq-server for the RabbitMQ tests and postgresql for the PostgreSQL registry tests
# (the tests start their own broker and cluster on 127.0.0.1), and chromium +
# chromium-driver for the admin page's headless browser test.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

need=()
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# Debian's browser and its WebDriver for the admin page's end-to-end test (~30 s).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "test.sh: installing Debian packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # Debian's postinst tries to start the broker; the tests start their own on loopback.
        if command -v rabbitmqctl >/dev/null 2>&1; then
            rabbitmqctl -q stop >/dev/null 2>&1 || true
        fi
        # Likewise its "main" cluster on 5432: the tests initdb their own.
        if [[ " ${need[*]} " == *" postgresql "* ]]; then
            service postgresql stop >/dev/null 2>&1 || true
        fi
    else
        echo "test.sh: WARNING: not root, cannot install ${need[*]}; tests needing them will skip loudly" >&2
    fi
fi

# Every stage runs even when an earlier one fails, so one run reports every problem.
failed=()

echo "== ruff"
.venv/bin/ruff check . || failed+=("ruff check")
.venv/bin/ruff format --check . || failed+=("ruff format")

echo "== mypy"
# The repository root is the package `plugvisor`; mypy finds it through a symlink.
tc=$(mktemp -d)
trap 'rm -rf "$tc"' EXIT
ln -s "$(pwd)" "$tc/plugvisor"
MYPYPATH="$tc" .venv/bin/mypy -p plugvisor || failed+=("mypy")

echo "== import-linter"
# The layering of docs/ARCHITECTURE.md, held by the contracts in pyproject.toml.
.venv/bin/lint-imports --no-cache || failed+=("import-linter")

echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
fi
[ $rc -eq 0 ] || failed+=("pytest (exit $rc)")

echo "== bench --quick"
# Prints the benchmark table; a row short of its goal is information (timing is noisy on
# shared machines), only a crash fails this stage. PLUGVISOR_SKIP_BENCH=1 skips it.
if [ "${PLUGVISOR_SKIP_BENCH:-0}" = "1" ]; then
    echo "test.sh: bench skipped (PLUGVISOR_SKIP_BENCH=1)"
else
    .venv/bin/python -m bench --quick || failed+=("bench --quick (crashed)")
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
