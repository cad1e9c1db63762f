#!/usr/bin/env bash
# Set up and run the linter and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests run local stand-ins of Azure (cosmosdb-server, azurite) from the npm registry.
if ! command -v npm >/dev/null 2>&1; then
  echo "test: Node.js 18+ with npm is required for the Azure stand-ins (package.json)" >&2
  exit 1
fi
[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --silent
source scripts/env.sh
ruff check .
python -m pytest "$@"
