#!/usr/bin/env bash
# Closed loop with the new default (governor on, deadline shedding) vs off:
# chat-c32 and capacity-c75 (benchmarks/streaming/*.scenario), the whole
# run (cold burst included) and its steady part as the report gives them.
# Clients follow Retry-After once (`--follow-retry-after`), as an OpenAI
# client with retries does; without it a shed closed-loop client would
# send its next request at once. The cold bursts are set against their
# bound (cold_burst.py) at the prefill rate measured first. About 20
# minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir "overload-closed${SUFFIX:-}")
PORT=${PORT:-8386}
URL="http://127.0.0.1:$PORT"
# The engine's best prefill rate, for the cold burst's bound: one long
# prompt alone, prefilled in full steps.
start_server "$PORT" "$OUT/prefill-rate.server.log"
"$BENCH" run --url "$URL" --api chat --concurrency 1 --requests 2 --prompt-words 600 \
  --prompt-spread 0 --max-tokens 1 --name prefill-rate --out "$OUT"
stop_server
PREFILL_RATE=$(python3 - "$OUT/prefill-rate.json" <<'PY'
import json, sys
last = json.load(open(sys.argv[1]))["requests"][-1]
print(f"{last['usage_prompt_tokens'] / last['ttft_seconds']:.1f}")
PY
)

REPORTS=()
for scenario in ${SCENARIOS:-chat-c32 capacity-c75}; do
  ARGS=()
  # shellcheck source=/dev/null
  source "benchmarks/streaming/$scenario.scenario"
  # e.g. EXTRA_ARGS=--ignore-eos: every admitted request the same length,
  # so output tok/s compares the serving, not the sampled lengths.
  read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
  ARGS+=("${EXTRA[@]}")
  for config in ${CONFIGS:-on off}; do
    governor_config "$config"
    name="$scenario-$GOVERNOR_NAME"
    start_server "$PORT" "$OUT/$name.server.log" "${GOVERNOR_FLAGS[@]}"
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
  echo "- command: ${CAPACITY:+CAPACITY=$CAPACITY }${CONFIGS:+CONFIGS=\"$CONFIGS\" }${SCENARIOS:+SCENARIOS=\"$SCENARIOS\" }${EXTRA_ARGS:+EXTRA_ARGS=$EXTRA_ARGS }benchmarks/overload/closed.sh"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
  echo
  echo "With a shed request's retry counted as the request (TTFT of the attempt admitted):"
  echo
  benchmarks/overload/summarize.py "${CAPACITY:-0.6881}" "${REPORTS[@]}" 2>"$OUT/summary.json"
  echo
  benchmarks/overload/cold_burst.py "$PREFILL_RATE" "${REPORTS[@]}"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
gzip -f "$OUT"/*.json 2>/dev/null || true
cat "$OUT/summary.md"
