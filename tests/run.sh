#!/usr/bin/env bash
# The test command (README: "Test it"). On a fresh Debian machine it installs what is
# missing -- a venv at .venv with the pinned dependencies, and redis-server, wrk (the HTTP
# benchmark's load generator) and chromium (the console's browser tests) from Debian's
# packages -- then runs the linters, the type checker, the import layering check and the
# whole test suite.
# Extra arguments go to pytest (e.g. `tests/run.sh tests/broker -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# The console's browser tests (tests/console) drive Debian's chromium through Playwright;
# `playwright install` (a downloaded browser) is never run.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/run.sh: ${missing[*]} missing; installing Debian's packages" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    # Debian's redis-server starts a service on :6379 where systemd runs; the tests never
    # use it.
fi

PYTHON="${PYTHON:-python3}"
VENV=".venv"
stamp="$VENV/.installed-$(cat pyproject.toml deployment/constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "tests/run.sh: installing dependencies into $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c deployment/constraints.txt -e '.[dev]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# promtool (checks the Prometheus config and the services' metrics): only the binary, taken
# out of Debian's prometheus package without installing it (no service, no dependencies).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$VENV/bin/promtool" ]; then
    echo "tests/run.sh: promtool missing; extracting it from Debian's prometheus package" >&2
    deb_dir="$(mktemp -d)"
    if ! (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null)
    fi
    dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
    cp "$deb_dir/root/usr/bin/promtool" "$VENV/bin/promtool"
    rm -rf "$deb_dir"
fi
export PATH="$PWD/$VENV/bin:$PATH"

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache  # the package layering (pyproject.toml [tool.importlinter])
exec "$VENV/bin/python" -m pytest "$@"
