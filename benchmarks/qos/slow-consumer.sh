#!/usr/bin/env bash
# A slow consumer beside normal traffic (about 2 minutes on 2 cores). Runs
# 16 chat streams (closed loop, DURATION seconds) twice: alone, and with one
# extra client (staller.py) that opens a long stream, stops reading for
# STALL_SECONDS, then reads to the end. The server ends the staller's stream
# once it has not read for MAX_PARK_MS. Prints the 16 streams' ITL p95 for
# both runs, the server's RSS (start / max / end, sampled every second into
# rss-*.csv) and what the staller got.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

STREAMS=${STREAMS:-16}
DURATION=${DURATION:-45}
MAX_TOKENS=${MAX_TOKENS:-64}
STALL_SECONDS=${STALL_SECONDS:-30}
STALLER_MAX_TOKENS=${STALLER_MAX_TOKENS:-900}
MAX_PARK_MS=${MAX_PARK_MS:-10000}
PORT=${PORT:-8391}
URL="http://127.0.0.1:$PORT"

build_release
OUT=$(result_dir slow-consumer)
cat >"$OUT/server.yaml" <<EOF
engine:
  max_park_ms: $MAX_PARK_MS
EOF

# sample_rss CSV: the server's resident set every second until it exits.
sample_rss() {
  local csv=$1 start
  start=$(date +%s)
  echo "seconds,rss_kib" >"$csv"
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(($(date +%s) - start)),$(ps -o rss= -p "$SERVER_PID" | xargs)" >>"$csv"
    sleep 1
  done
}

# run NAME STALL(0|1)
run() {
  local name=$1 stall=$2 sampler staller
  start_server "$PORT" "$OUT/$name.server.log" --config "$OUT/server.yaml"
  sample_rss "$OUT/rss-$name.csv" &
  sampler=$!
  if [ "$stall" -eq 1 ]; then
    python3 benchmarks/qos/staller.py "$URL" --stall-seconds "$STALL_SECONDS" \
      --max-tokens "$STALLER_MAX_TOKENS" >"$OUT/staller.json" &
    staller=$!
  fi
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --api chat --concurrency "$STREAMS" \
    --duration "$DURATION" --prompt-words 50 --prompt-spread 10 --max-tokens "$MAX_TOKENS" \
    --ignore-eos --name "$name" --out "$OUT"
  if [ "$stall" -eq 1 ]; then
    wait "$staller"
  fi
  curl -fs "$URL/metrics" | grep -E '^sluice:(slow_consumer|request_finished|num_requests)' >"$OUT/$name.metrics.txt" || true
  stop_server
  wait "$sampler" || true
}

run alone 0
run with-staller 1

itl_p95() {
  python3 - "$1" <<'PY'
import json, sys
p95 = json.load(open(sys.argv[1]))["summary"]["itl_seconds"]["p95"]
print(f"{p95 * 1000:.0f} ms")
PY
}
rss() {
  # A process being killed reads as no or zero RSS: not a sample.
  python3 - "$1" <<'PY'
import csv, sys
rows = [int(row["rss_kib"]) for row in csv.DictReader(open(sys.argv[1])) if row["rss_kib"].strip() not in ("", "0")]
print(f"{rows[0] / 1024:.0f} / {max(rows) / 1024:.0f} / {rows[-1] / 1024:.0f} MiB")
PY
}

{
  echo "# Slow consumer beside $STREAMS streams"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: STREAMS=$STREAMS DURATION=$DURATION MAX_TOKENS=$MAX_TOKENS STALL_SECONDS=$STALL_SECONDS" \
    "STALLER_MAX_TOKENS=$STALLER_MAX_TOKENS MAX_PARK_MS=$MAX_PARK_MS benchmarks/qos/slow-consumer.sh"
  echo
  echo "| run | ITL p95 of the $STREAMS | server RSS start / max / end |"
  echo "|---|---|---|"
  echo "| alone | $(itl_p95 "$OUT/alone.json") | $(rss "$OUT/rss-alone.csv") |"
  echo "| with staller | $(itl_p95 "$OUT/with-staller.json") | $(rss "$OUT/rss-with-staller.csv") |"
  echo
  echo "Staller (stopped reading for ${STALL_SECONDS} s): \`$(cat "$OUT/staller.json")\`"
  echo
  benchmarks/summarize.py "$OUT/alone.json" "$OUT/with-staller.json"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
