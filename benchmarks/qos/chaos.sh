#!/usr/bin/env bash
# Chaos run (issue #7): a normal tenant's streams mixed with slow readers and
# clients that hang up mid-stream, a flood from a second tenant in the
# middle, and injected engine stalls, against the release server with
# benchmarks/qos/chaos.yaml (fault hook on). The workload and every knob
# (CHAOS_SECONDS, CHAOS_STREAMS, FLOOD_*, STALL_*, ...) are in
# benchmarks/streaming/chaos.scenario. Defaults: 600 s at 32 streams, about
# 13 minutes with build, warm-up and drain. soak.sh runs it long and light.
#
# Checks (summary.md): infrastructure-caused cancellations (normal clients'
# streams that did not end cleanly) < 0.5 %; the server back at rest after
# the run (running, parked, waiting, KV in use, admission active/queued: 0);
# resident memory at the end within 10 % of its value after the warm-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

SUITE=${SUITE:-chaos}
PORT=${PORT:-8393}
URL="http://127.0.0.1:$PORT"
RSS_EVERY=${RSS_EVERY:-5}
CONFIG=benchmarks/qos/chaos.yaml
ADMIN_KEY=$(awk '/admin_api_key:/ {print $2}' "$CONFIG")
REST_GAUGES=sluice:num_requests_running,sluice:num_requests_parked,sluice:num_requests_waiting,sluice:kv_tokens_in_use
# shellcheck source=/dev/null
source benchmarks/streaming/chaos.scenario
COMMAND="CHAOS_SECONDS=$CHAOS_SECONDS CHAOS_STREAMS=$CHAOS_STREAMS CHAOS_MAX_TOKENS=$CHAOS_MAX_TOKENS \
FLOOD_STREAMS=$FLOOD_STREAMS FLOOD_SECONDS=$FLOOD_SECONDS STALL_COUNT=$STALL_COUNT STALL_MS=$STALL_MS \
${SOAK_COMMAND:-benchmarks/qos/chaos.sh}"

build_release
OUT=$(result_dir "$SUITE")
EVENTS="$OUT/events.log"
: >"$EVENTS"
start_server "$PORT" "$OUT/server.log" --config "$CONFIG"
trap stop_server EXIT

rss_kib() {
  ps -o rss= -p "$SERVER_PID" | xargs
}

# event TEXT: one timestamped line in events.log.
event() {
  echo "$(date -u +%H:%M:%S) $*" | tee -a "$EVENTS"
}

echo "seconds,rss_kib" >"$OUT/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(($(date +%s) - start)),$(rss_kib)" >>"$OUT/rss.csv"
    sleep "$RSS_EVERY"
  done
) &
SAMPLER=$!
RSS_BOOT=$(rss_kib)

event "warm-up: ${WARMUP_ARGS[*]}"
"$BENCH" run --url "$URL" "${WARMUP_ARGS[@]}" --name warmup --out "$OUT" >"$OUT/warmup.txt"
RSS_START=$(rss_kib)
event "warm-up done, RSS $RSS_START KiB"

# stall AT_SECONDS: one engine stall of STALL_MS, AT_SECONDS into the run.
stall() {
  sleep "$1"
  event "stall ${STALL_MS} ms: $(curl -s -X POST "$URL/admin/fault/stall" \
    -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d "{\"ms\": $STALL_MS}")"
}

event "run: ${ARGS[*]}"
"$BENCH" run --url "$URL" --server-pid "$SERVER_PID" "${ARGS[@]}" \
  --rest-gauges "$REST_GAUGES" --name "$SUITE-normal" --out "$OUT" >"$OUT/$SUITE-normal.txt" &
NORMAL=$!
EXTRAS=()
for k in $(seq 1 "$STALL_COUNT"); do
  stall $((CHAOS_SECONDS * k / (STALL_COUNT + 1))) &
  EXTRAS+=($!)
done
(
  sleep $(((CHAOS_SECONDS - FLOOD_SECONDS) / 2))
  event "flood: ${FLOOD_ARGS[*]}"
  "$BENCH" run --url "$URL" "${FLOOD_ARGS[@]}" --name "$SUITE-flood" --out "$OUT" >"$OUT/$SUITE-flood.txt"
  event "flood done"
) &
EXTRAS+=($!)
wait "$NORMAL"
for pid in "${EXTRAS[@]}"; do
  wait "$pid"
done
event "run done"

# The normal run waited for the /metrics gauges; admission's own counts are
# on /admin/state. Bounded poll until nothing is admitted or queued.
ADMISSION=""
for _ in $(seq 1 120); do
  ADMISSION=$(curl -fs -H "Authorization: Bearer $ADMIN_KEY" "$URL/admin/state" |
    python3 -c 'import json, sys; a = json.load(sys.stdin)["admission"]; print(a["active"], a["queued"])')
  [ "$ADMISSION" = "0 0" ] && break
  sleep 0.5
done
event "admission active/queued at rest: $ADMISSION"
RSS_END=$(rss_kib)
curl -fs "$URL/metrics" | grep -E '^sluice:(num_requests|kv_tokens_in_use|engine_cancellations|request_finished|request_rejected|slow_consumer)' \
  >"$OUT/metrics-at-rest.txt" || true
stop_server
trap - EXIT
wait "$SAMPLER" || true

python3 benchmarks/qos/chaos_summary.py "$OUT" "$SUITE" \
  --machine "$(machine_line)" --commit "$(git rev-parse --short=12 HEAD)" --command "$COMMAND" \
  --rss-boot "$RSS_BOOT" --rss-start "$RSS_START" --rss-end "$RSS_END" \
  --admission "$ADMISSION" >"$OUT/summary.md"
rm -f "$OUT/server.log"
cat "$OUT/summary.md"
