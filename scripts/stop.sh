#!/usr/bin/env bash
# Stop the Dagster UI and the API that start.sh left running.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
for name in dagster api; do
  pid_file="$RECO_DATA_DIR/run/$name.pid"
  [ -f "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pid_file"
done
