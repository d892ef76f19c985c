#!/usr/bin/env bash
# Overload, open loop: Poisson arrivals at multiples of the measured
# capacity, governor on (the default) vs off (benchmarks/governor/
# governor-off.yaml: fixed limit, no shedding). Clients follow Retry-After
# once. Capacity: completed requests per second of a closed loop of 32
# streams with the same requests (2.5 minutes), unless CAPACITY (req/s) is
# given. RATES: the multiples (default "0.5 1 1.5 2"); CONFIGS: "on off"
# (another name runs with benchmarks/governor/<name>.yaml);
# DURATION: seconds per run (default 300); SUFFIX: appended to the
# results folder's name (a second run on one commit). About 45 minutes for all.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir "overload${SUFFIX:-}")
GIVEN_CAPACITY=${CAPACITY:-}
PORT=${PORT:-8384}
URL="http://127.0.0.1:$PORT"
DURATION=${DURATION:-300}
REQUEST=(--api chat --prompt-words 115 --prompt-spread 20 --max-tokens 128 --ignore-eos
  --temperature 0.7 --slo ttft=10s,itl=2s)

if [ -z "${CAPACITY:-}" ]; then
  start_server "$PORT" "$OUT/capacity.server.log" --config benchmarks/governor/governor-off.yaml
  "$BENCH" run --url "$URL" "${REQUEST[@]}" --concurrency 32 --duration 150 --warmup 30 \
    --name capacity --out "$OUT"
  stop_server
  CAPACITY=$(python3 - "$OUT/capacity.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
done = [r for r in report["requests"] if not r["warmup"] and r["status"] == 200 and r["done"]]
ends = [r["start_seconds"] + r["e2e_seconds"] for r in done]
starts = [r["start_seconds"] for r in done]
print(f"{len(done) / (max(ends) - min(starts)):.4f}")
PY
)
fi
echo "capacity: $CAPACITY req/s"

REPORTS=()
for multiple in ${RATES:-0.5 1 1.5 2}; do
  rate=$(python3 -c "print(round($multiple * $CAPACITY, 4))")
  for config in ${CONFIGS:-on off}; do
    governor_config "$config"
    name="open-${multiple}x-$GOVERNOR_NAME"
    start_server "$PORT" "$OUT/$name.server.log" "${GOVERNOR_FLAGS[@]}"
    "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --scrape-gauge sluice:governor_active_limit \
      "${REQUEST[@]}" --rate "$rate" --max-in-flight 512 --duration "$DURATION" --warmup 30 \
      --follow-retry-after --seed 7 --name "$name" --out "$OUT"
    curl -fs "$URL/metrics" | grep -E '^sluice:(request_rejected|admission_wait_prediction_error_seconds_(sum|count)|governor_active_limit)' \
      >"$OUT/$name.metrics.txt" || true
    stop_server
    REPORTS+=("$OUT/$name.json")
  done
done

{
  echo "# Overload, open loop: governor on (default) vs off"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: ${GIVEN_CAPACITY:+CAPACITY=$GIVEN_CAPACITY }${CONFIGS:+CONFIGS=\"$CONFIGS\" }${RATES:+RATES=\"$RATES\" }${DURATION:+DURATION=$DURATION }${SUFFIX:+SUFFIX=$SUFFIX }benchmarks/overload/run.sh"
  echo
  benchmarks/overload/summarize.py "$CAPACITY" "${REPORTS[@]}" 2>"$OUT/summary.json"
} >"$OUT/summary.md"
# Per-request server lines (admission wait, engine queue, TTFT) beside the
# client's view; the rest of the logs goes.
for log in "$OUT"/*.server.log; do
  grep ' request ' "$log" | gzip >"${log%.server.log}.requests.log.gz" || true
done
rm -f "$OUT"/*.server.log
gzip -f "$OUT"/*.json 2>/dev/null || true
gunzip -f "$OUT/summary.json.gz" 2>/dev/null || true
cat "$OUT/summary.md"
