#!/usr/bin/env bash
# Installs what fieldlink needs on a fresh Debian machine: server binaries (apt) and a venv.
#   scripts/setup.sh runtime   -> mosquitto + venv with the package
#   scripts/setup.sh test      -> also redis-server, PostgreSQL, Chromium, Node.js + npm, the dev
#                                 extras and the Node.js test clients (npm ci in tests/node)
# Tests start their own servers on free ports; the packaged services are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-runtime}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || need+=(mosquitto)
if [ "$mode" = test ]; then
  have chromium || need+=(chromium)
  have redis-server || need+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  have node || need+=(nodejs)
  have npm || need+=(npm)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged mosquitto service on 1883; fieldlink runs its own, so leave theirs alone.
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
if [ "$mode" = test ]; then
  "$VENV/bin/pip" install -q -e ".[dev]"
else
  "$VENV/bin/pip" install -q -e .
fi

# The Node.js clients the tests run (socket.io-client, the protocol compliance suites' mocha),
# exactly as locked. npm writes node_modules/.package-lock.json on every install: reinstall only
# when that is missing or older than the lock file.
if [ "$mode" = test ]; then
  node_dir=tests/node
  if [ ! -f "$node_dir/node_modules/.package-lock.json" ] \
      || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
    echo "setup: installing the Node.js test clients (npm ci in $node_dir)" >&2
    npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
