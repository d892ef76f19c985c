#!/usr/bin/env bash
# A slow consumer beside normal traffic (about 6 minutes on 2 cores). Runs
# 16 chat streams (closed loop, DURATION seconds) alone and with one extra
# client (staller.py) that opens a long stream, stops reading for
# STALL_SECONDS, then reads to the end; REPEATS pairs, alternating, because
# one run's ITL p95 moves by more than the 10 % being judged. The server
# ends the staller's stream once it has not read for MAX_PARK_MS. Prints the
# 16 streams' ITL p95 per run and pooled over each kind, the server's RSS
# (start / max / end, sampled every second into rss-*.csv) and what each
# staller got.
#
# Under this load the staller gets ~4 tokens/s, so with the default 64-event
# stream buffer (plus the 4 KiB h2 window) it would only park ~20 s into its
# stall and be read again before any limit ran out: STREAM_BUFFER_EVENTS
# makes it park within its first ~30 tokens.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

STREAMS=${STREAMS:-16}
DURATION=${DURATION:-45}
MAX_TOKENS=${MAX_TOKENS:-64}
STALL_SECONDS=${STALL_SECONDS:-30}
STALLER_MAX_TOKENS=${STALLER_MAX_TOKENS:-900}
MAX_PARK_MS=${MAX_PARK_MS:-10000}
STREAM_BUFFER_EVENTS=${STREAM_BUFFER_EVENTS:-8}
REPEATS=${REPEATS:-3}
PORT=${PORT:-8391}
URL="http://127.0.0.1:$PORT"

build_release
OUT=$(result_dir slow-consumer)
cat >"$OUT/server.yaml" <<EOF
engine:
  max_park_ms: $MAX_PARK_MS
  stream_buffer_events: $STREAM_BUFFER_EVENTS
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
      --max-tokens "$STALLER_MAX_TOKENS" >"$OUT/$name.staller.json" &
    staller=$!
  fi
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --api chat --concurrency "$STREAMS" \
    --duration "$DURATION" --prompt-words 50 --prompt-spread 10 --max-tokens "$MAX_TOKENS" \
    --ignore-eos --name "$name" --out "$OUT"
  if [ "$stall" -eq 1 ]; then
    wait "$staller"
  fi
  curl -fs "$URL/metrics" | grep -E '^sluice:(streams_ended_total|request_finished|num_requests)' >"$OUT/$name.metrics.txt" || true
  # The last sample is the running server's, not one taken while it exits.
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  stop_server
}

ALONE=()
WITH=()
for i in $(seq 1 "$REPEATS"); do
  run "alone-$i" 0
  run "with-staller-$i" 1
  ALONE+=("$OUT/alone-$i.json")
  WITH+=("$OUT/with-staller-$i.json")
done

# itl_p95 REPORT...: the p95 of every inter-token gap in the reports.
itl_p95() {
  python3 - "$@" <<'PY'
import json, sys
gaps = sorted(g for path in sys.argv[1:] for r in json.load(open(path))["requests"] for g in (r["itl_seconds"] or []))
print(f"{gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))] * 1000:.0f} ms ({len(gaps)} gaps)")
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
    "STALLER_MAX_TOKENS=$STALLER_MAX_TOKENS MAX_PARK_MS=$MAX_PARK_MS STREAM_BUFFER_EVENTS=$STREAM_BUFFER_EVENTS" \
    "REPEATS=$REPEATS benchmarks/qos/slow-consumer.sh"
  echo
  echo "| run | ITL p95 of the $STREAMS | server RSS start / max / end |"
  echo "|---|---|---|"
  for i in $(seq 1 "$REPEATS"); do
    echo "| alone-$i | $(itl_p95 "$OUT/alone-$i.json") | $(rss "$OUT/rss-alone-$i.csv") |"
    echo "| with-staller-$i | $(itl_p95 "$OUT/with-staller-$i.json") | $(rss "$OUT/rss-with-staller-$i.csv") |"
  done
  echo "| **alone, pooled** | $(itl_p95 "${ALONE[@]}") | |"
  echo "| **with staller, pooled** | $(itl_p95 "${WITH[@]}") | |"
  echo
  echo "Stallers (each stopped reading for ${STALL_SECONDS} s):"
  echo
  for i in $(seq 1 "$REPEATS"); do
    echo "- with-staller-$i: \`$(cat "$OUT/with-staller-$i.staller.json")\`;" \
      "server: $(grep -h 'streams_ended_total{reason="slow_consumer"}' "$OUT/with-staller-$i.metrics.txt" || echo 'no slow_consumer count')"
  done
  echo
  benchmarks/summarize.py "${ALONE[@]}" "${WITH[@]}"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
