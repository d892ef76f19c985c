#!/usr/bin/env bash
# Priority: interactive requests at 0.3× capacity alone, then beside a batch
# flood at 2× capacity (`priority: batch`), both open loop from two clients.
# CAPACITY (req/s, from run.sh's closed loop) is required; DURATION seconds
# per run (default 180); CONFIG: a benchmarks/governor/<name>.yaml both
# servers run with (default: the default config). About 7 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

: "${CAPACITY:?give CAPACITY in req/s (benchmarks/overload/run.sh measures it)}"
build_release
OUT=$(result_dir priority)
PORT=${PORT:-8385}
URL="http://127.0.0.1:$PORT"
DURATION=${DURATION:-180}
REQUEST=(--api chat --prompt-words 115 --prompt-spread 20 --max-tokens 128 --ignore-eos
  --temperature 0.7 --slo ttft=10s,itl=2s --max-in-flight 512 --warmup 20)
interactive_rate=$(python3 -c "print(round(0.3 * $CAPACITY, 4))")
batch_rate=$(python3 -c "print(round(2 * $CAPACITY, 4))")

governor_config "${CONFIG:-on}"
start_server "$PORT" "$OUT/alone.server.log" "${GOVERNOR_FLAGS[@]}"
"$BENCH" run --url "$URL" "${REQUEST[@]}" --rate "$interactive_rate" --duration "$DURATION" \
  --seed 11 --name interactive-alone --out "$OUT"
stop_server

start_server "$PORT" "$OUT/mixed.server.log" "${GOVERNOR_FLAGS[@]}"
"$BENCH" run --url "$URL" "${REQUEST[@]}" --rate "$batch_rate" --duration "$DURATION" \
  --priority batch --seed 12 --name batch-beside --out "$OUT" >"$OUT/batch.log" 2>&1 &
batch=$!
"$BENCH" run --url "$URL" "${REQUEST[@]}" --rate "$interactive_rate" --duration "$DURATION" \
  --seed 11 --name interactive-beside-batch --out "$OUT"
wait "$batch" || true
stop_server

{
  echo "# Priority: interactive at 0.3× capacity alone and beside a batch flood at 2×"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: CAPACITY=$CAPACITY ${CONFIG:+CONFIG=$CONFIG }${DURATION:+DURATION=$DURATION }benchmarks/overload/priority.sh"
  echo
  benchmarks/overload/summarize.py "$CAPACITY" "$OUT/interactive-alone.json" \
    "$OUT/interactive-beside-batch.json" "$OUT/batch-beside.json" 2>"$OUT/summary.json"
} >"$OUT/summary.md"
for log in "$OUT"/*.server.log; do
  grep ' request ' "$log" | gzip >"${log%.server.log}.requests.log.gz" || true
done
rm -f "$OUT"/*.server.log "$OUT/batch.log"
gzip -f "$OUT"/*.json 2>/dev/null || true
gunzip -f "$OUT/summary.json.gz" 2>/dev/null || true
cat "$OUT/summary.md"
