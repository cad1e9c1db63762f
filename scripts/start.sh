#!/usr/bin/env bash
# Set up, put MovieLens 100K in an empty landing zone, materialize the batch job, and leave
# the Dagster UI and the API running. Stop them with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

ui_port=${RECO_DAGSTER_PORT:-3000}
export RECO_API_PORT=${RECO_API_PORT:-8000}
run_dir="$RECO_DATA_DIR/run"
mkdir -p "$run_dir"
bash scripts/stop.sh >/dev/null 2>&1 || true

python -m reco_dagster.datasets movielens-100k --if-empty
echo "start: materializing batch_retrain (every event: the Dagster UI, Runs)"
dagster job execute -m reco_dagster.definitions -j batch_retrain -c scripts/start-run.yaml
echo "start: batch_retrain done"

# Each server in its own session, so that stop.sh can end it with its children by PID.
setsid dagster dev -w workspace.yaml -h 127.0.0.1 -p "$ui_port" \
  >"$run_dir/dagster.log" 2>&1 < /dev/null &
echo $! >"$run_dir/dagster.pid"
setsid reco-api >"$run_dir/api.log" 2>&1 < /dev/null &
echo $! >"$run_dir/api.pid"

wait_for() {
  for _ in $(seq 1 120); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 1
  done
  echo "start: $1 did not answer; see the logs in $run_dir" >&2
  return 1
}
wait_for "http://127.0.0.1:$ui_port/server_info"
wait_for "http://127.0.0.1:$RECO_API_PORT/health"
cat <<MSG

Dagster UI:  http://127.0.0.1:$ui_port   (logs: $run_dir/dagster.log)
API:         http://127.0.0.1:$RECO_API_PORT/users/196/recommendations?k=10
             http://127.0.0.1:$RECO_API_PORT/schema   (logs: $run_dir/api.log)
Data:        $RECO_DATA_DIR
Stop both:   bash scripts/stop.sh
MSG
