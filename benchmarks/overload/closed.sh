#!/usr/bin/env bash
# Closed loop with the new default (governor on, deadline shedding) vs off:
# chat-c32 and capacity-c75 (benchmarks/streaming/*.scenario), the whole
# run (cold burst included) and its steady part as the report gives them.
# Clients follow Retry-After once (`--follow-retry-after`), as an OpenAI
# client with retries does; without it a shed closed-loop client would
# send its next request at once. About 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir overload-closed)
PORT=${PORT:-8386}
URL="http://127.0.0.1:$PORT"
REPORTS=()
for scenario in ${SCENARIOS:-chat-c32 capacity-c75}; do
  ARGS=()
  # shellcheck source=/dev/null
  source "benchmarks/streaming/$scenario.scenario"
  for config in ${CONFIGS:-on off}; do
    name="$scenario-governor-$config"
    flags=()
    [ "$config" = off ] && flags=(--config benchmarks/governor/governor-off.yaml)
    start_server "$PORT" "$OUT/$name.server.log" "${flags[@]}"
    "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --scrape-gauge sluice:governor_active_limit \
      "${ARGS[@]}" --follow-retry-after --name "$name" --out "$OUT"
    stop_server
    REPORTS+=("$OUT/$name.json")
  done
done

{
  echo "# Closed loop: governor on (default) vs off"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: ${SCENARIOS:+SCENARIOS=\"$SCENARIOS\" }benchmarks/overload/closed.sh"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
  echo
  echo "With a shed request's retry counted as the request (TTFT of the attempt admitted):"
  echo
  benchmarks/overload/summarize.py "${CAPACITY:-0.6881}" "${REPORTS[@]}" 2>"$OUT/summary.json"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
gzip -f "$OUT"/*.json 2>/dev/null || true
cat "$OUT/summary.md"
