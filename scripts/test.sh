#!/usr/bin/env bash
# Set up and run the linter and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check .
python -m pytest "$@"
