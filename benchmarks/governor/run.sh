#!/usr/bin/env bash
# Governor benchmarks: chat-c32 and capacity-c75 with the governor off and on,
# and the burst-then-idle step profile with the server's limit scraped over
# time. About 75 minutes on 2 cores for all runs (RUNS picks some). Tenant fairness is fairness.sh.
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
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --scrape-gauge "$GAUGE" \
    "${ARGS[@]}" --name "$name" --out "$OUT"
  curl -fs "$URL/metrics" | grep -E '^sluice:(governor|request_rejected|num_requests)' >"$OUT/$name.metrics.txt" || true
  stop_server
  REPORTS+=("$OUT/$name.json")
}

# RUNS picks a subset, e.g. RUNS="capacity-c75-governor-off burst-then-idle-governor-on".
ALL_RUNS=(
  "chat-c32-governor-off chat-c32 governor-off sluice:governor_step_token_budget"
  "chat-c32-budget-only chat-c32 budget-only sluice:governor_step_token_budget"
  "chat-c32-governor-on chat-c32 governor-on sluice:governor_active_limit"
  "chat-c32-governor-slo chat-c32 governor-slo-c32 sluice:governor_step_token_budget"
  "capacity-c75-governor-off capacity-c75 governor-off sluice:governor_step_token_budget"
  "capacity-c75-budget-only capacity-c75 budget-only sluice:governor_step_token_budget"
  "capacity-c75-governor-on capacity-c75 governor-on sluice:governor_active_limit"
  "capacity-c75-steady-governor-off capacity-c75-steady governor-off sluice:governor_step_token_budget"
  "capacity-c75-steady-budget-only capacity-c75-steady budget-only sluice:governor_step_token_budget"
  "capacity-c75-steady-governor-on capacity-c75-steady governor-on sluice:governor_active_limit"
  "capacity-c75-steady-governor-slo capacity-c75-steady governor-slo sluice:governor_step_token_budget"
  "capacity-c75-long-governor-slo capacity-c75-long governor-slo sluice:governor_step_token_budget"
  "burst-then-idle-governor-on burst-then-idle governor-on sluice:governor_active_limit"
)
for run in "${ALL_RUNS[@]}"; do
  read -r name scenario config GAUGE <<<"$run"
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then
    continue
  fi
  run_scenario "$name" "$scenario" --config "benchmarks/governor/$config.yaml"
done

{
  echo "# Governor: off vs on, step profile"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: ${RUNS:+RUNS=\"$RUNS\" }benchmarks/governor/run.sh"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
