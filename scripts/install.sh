#!/usr/bin/env bash
# Install plugvisor and its dependencies into ./.venv.
#
# The virtual environment is built from Debian's /usr/bin/python3 on purpose: plugin
# processes drop to an unprivileged user, who must be able to read the interpreter
# and the standard library (a pyenv interpreter under /root is not readable).
# Set PLUGVISOR_PYTHON to use another interpreter (3.11+).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PLUGVISOR_PYTHON:-/usr/bin/python3}
if [ ! -x "$PY" ]; then PY=$(command -v python3); fi

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: need Debian packages: $* (run as root or install them)" >&2
        return 1
    fi
    if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
# libseccomp backs the seccomp layer of the sandbox (loaded through ctypes).
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then apt_install libseccomp2; fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "plugvisor installed in $(pwd)/.venv ($(.venv/bin/python --version))"
