#!/usr/bin/env bash
# Set up and run the linter and the whole test suite (what CI runs): the fast tier first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Servers the tests start from Debian's packages: PostgreSQL (Dagster's production storage)
# and Chromium with its driver (the UI test).
wanted=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || wanted+=(postgresql)
command -v chromedriver >/dev/null 2>&1 || wanted+=(chromium chromium-driver)
if [ ${#wanted[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null) \
      || echo "test: could not install ${wanted[*]}; the tests that need them will say so" >&2
  else
    echo "test: please install ${wanted[*]} (Debian packages) for the tests that need them" >&2
  fi
fi
# The tests run local stand-ins of Azure (cosmosdb-server, azurite) from the npm registry.
if ! command -v npm >/dev/null 2>&1; then
  echo "test: Node.js 18+ with npm is required for the Azure stand-ins (package.json)" >&2
  exit 1
fi
[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --silent
source scripts/env.sh
ruff check .
ruff format --check .
# The fast tier first, then the end-to-end tests (marked slow); "no tests" is no failure.
python -m pytest -m "not slow" "$@" || [ $? = 5 ]
python -m pytest -m slow "$@" || [ $? = 5 ]
