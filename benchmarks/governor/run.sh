#!/usr/bin/env bash
# Governor benchmarks: chat-c32 and capacity-c75 with the governor off and on,
# the burst-then-idle step profile (limit following load), and tenant
# fairness (a light tenant's TTFT alone and beside a flooding tenant).
# About 35 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir governor)
PORT=${PORT:-8383}
URL="http://127.0.0.1:$PORT"
REPORTS=()

scenario_args() {
  ARGS=()
  # shellcheck source=/dev/null
  source "benchmarks/streaming/$1.scenario"
}

# run_scenario NAME SCENARIO [serve flags...]
run_scenario() {
  local name=$1 scenario=$2
  shift 2
  scenario_args "$scenario"
  start_server "$PORT" "$OUT/$name.server.log" "$@"
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" "${ARGS[@]}" --name "$name" --out "$OUT"
  curl -fs "$URL/metrics" | grep -E '^sluice:(governor|request_rejected|num_requests)' >"$OUT/$name.metrics.txt" || true
  stop_server
  REPORTS+=("$OUT/$name.json")
}

run_scenario chat-c32-governor-off chat-c32 --config benchmarks/governor/governor-off.yaml
run_scenario chat-c32-governor-on chat-c32 --config benchmarks/governor/governor-on.yaml
run_scenario capacity-c75-governor-off capacity-c75 --config benchmarks/governor/governor-off.yaml
run_scenario capacity-c75-governor-on capacity-c75 --config benchmarks/governor/governor-on.yaml
run_scenario burst-then-idle-governor-on burst-then-idle --config benchmarks/governor/governor-on.yaml

# Fairness: the light tenant alone, then beside a flood of 48 streams.
LIGHT=(--api chat --concurrency 2 --requests 12 --prompt-words 60 --prompt-spread 10 --max-tokens 32 --temperature 0.7 --api-key sk-light)
start_server "$PORT" "$OUT/fairness.server.log" --config benchmarks/governor/tenants.yaml
"$BENCH" run --url "$URL" "${LIGHT[@]}" --name fairness-light-alone --out "$OUT"
"$BENCH" run --url "$URL" --api chat --concurrency 48 --duration 120 --prompt-words 60 --prompt-spread 10 \
  --max-tokens 64 --temperature 0.7 --api-key sk-flood --name fairness-flood --out "$OUT" &
FLOOD=$!
sleep 45 # let the flood fill the server before the light tenant arrives
"$BENCH" run --url "$URL" "${LIGHT[@]}" --name fairness-light-beside-flood --out "$OUT"
wait "$FLOOD"
stop_server
REPORTS+=("$OUT/fairness-light-alone.json" "$OUT/fairness-light-beside-flood.json" "$OUT/fairness-flood.json")

{
  echo "# Governor: off vs on, step profile, fairness"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/governor/run.sh"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
