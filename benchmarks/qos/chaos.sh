#!/usr/bin/env bash
# Chaos run (issue #7): a normal tenant's streams mixed with slow readers and
# clients that hang up mid-stream, a flood from a second tenant in the
# middle, and injected engine stalls, against the release server with
# benchmarks/qos/chaos.yaml (fault hook on). The workload and every knob
# (CHAOS_SECONDS, CHAOS_STREAMS, FLOOD_*, STALL_*, HOSTILE*, ...) are in
# benchmarks/streaming/chaos.scenario. Defaults: 600 s at 32 streams, about
# 13 minutes with build, warm-up and drain. soak.sh runs it long and light.
# HOSTILE=1 adds benchmarks/qos/hostile.py for the whole run: idle sockets,
# slowloris sockets and bad requests. SLUICE_BIN_DIR=DIR uses prebuilt
# binaries (benchmarks/lib.sh).
#
# Checks (summary.md): infrastructure-caused cancellations (normal clients'
# streams that did not end cleanly) < INFRA_CANCEL_MAX_RATE (0.5 %; 0: none
# at all); nothing leaked: the server back at rest after the run (registry
# live streams, running, parked, waiting, KV in use, admission
# active/queued: 0); resident memory at the end within 10 % of its value
# after the warm-up; open fds back to their count after the warm-up (+
# FD_SLACK, 0); with HOSTILE=1, no bad request answered 5xx or left hanging.
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
INFRA_CANCEL_MAX_RATE=${INFRA_CANCEL_MAX_RATE:-0.005}
# Open fds allowed above the after-warm-up count once at rest. 0: the
# server's own fds (listener, epoll, eventfds, the inherited log) are
# constant; every other fd is a connection, and the run's clients are gone.
FD_SLACK=${FD_SLACK:-0}
# 1: the slow readers must read slower than tokens arrive (a check row).
TRICKLE_REQUIRED=${TRICKLE_REQUIRED:-0}
# shellcheck source=/dev/null
source benchmarks/streaming/chaos.scenario
HOSTILE_KNOBS=""
if [ "$HOSTILE" = 1 ]; then
  HOSTILE_KNOBS="HOSTILE=1 HOSTILE_IDLE=$HOSTILE_IDLE HOSTILE_SLOWLORIS=$HOSTILE_SLOWLORIS \
HOSTILE_SLOWLORIS_INTERVAL=$HOSTILE_SLOWLORIS_INTERVAL HOSTILE_BAD_RATE=$HOSTILE_BAD_RATE "
fi
COMMAND="${HOSTILE_KNOBS}CHAOS_SECONDS=$CHAOS_SECONDS CHAOS_STREAMS=$CHAOS_STREAMS CHAOS_MAX_TOKENS=$CHAOS_MAX_TOKENS \
CHAOS_SLOW_FRACTION=$CHAOS_SLOW_FRACTION CHAOS_SLOW_DELAY_MS=$CHAOS_SLOW_DELAY_MS \
CHAOS_DISCONNECT_FRACTION=$CHAOS_DISCONNECT_FRACTION \
FLOOD_STREAMS=$FLOOD_STREAMS FLOOD_SECONDS=$FLOOD_SECONDS STALL_COUNT=$STALL_COUNT STALL_MS=$STALL_MS \
INFRA_CANCEL_MAX_RATE=$INFRA_CANCEL_MAX_RATE TRICKLE_REQUIRED=$TRICKLE_REQUIRED ${SOAK_COMMAND:-benchmarks/qos/chaos.sh}"
if [ -n "${SLUICE_BIN_DIR:-}" ]; then
  BINARIES="prebuilt, from $SLUICE_BIN_DIR (SLUICE_BIN_DIR): $("$SLUICE" --version 2>/dev/null || echo '?')"
else
  BINARIES="built by the script from the commit below"
fi

build_release
OUT=$(result_dir "$SUITE")
EVENTS="$OUT/events.log"
: >"$EVENTS"
start_server "$PORT" "$OUT/server.log" --config "$CONFIG"
trap stop_server EXIT

rss_kib() {
  ps -o rss= -p "$SERVER_PID" | xargs
}

fd_count() {
  find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l
}

# fds_settled TARGET SECONDS: polls (bounded) until the server has at most
# TARGET open fds (connections the server has not yet seen close); prints
# the last count and the seconds it took.
fds_settled() {
  local target=$1 limit=$2 start count
  start=$(date +%s.%N)
  count=$(fd_count)
  for _ in $(seq 1 $((limit * 2))); do
    [ "$count" -le "$target" ] && break
    sleep 0.5
    count=$(fd_count)
  done
  echo "$count $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
}

# fds_steady: waits (bounded, 20 s) until the fd count stops changing for
# 2 s, and prints it: the baseline after the warm-up's connections closed.
fds_steady() {
  local last count same=0
  last=$(fd_count)
  for _ in $(seq 1 40); do
    sleep 0.5
    count=$(fd_count)
    if [ "$count" = "$last" ]; then
      same=$((same + 1))
      [ "$same" -ge 4 ] && break
    else
      same=0
    fi
    last=$count
  done
  echo "$last"
}

# event TEXT: one timestamped line in events.log.
event() {
  echo "$(date -u +%H:%M:%S) $*" | tee -a "$EVENTS"
}

echo "seconds,rss_kib,fds" >"$OUT/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(($(date +%s) - start)),$(rss_kib),$(fd_count)" >>"$OUT/rss.csv"
    sleep "$RSS_EVERY"
  done
) &
SAMPLER=$!
RSS_BOOT=$(rss_kib)
FDS_BOOT=$(fd_count)

event "warm-up: ${WARMUP_ARGS[*]}"
"$BENCH" run --url "$URL" "${WARMUP_ARGS[@]}" --name warmup --out "$OUT" >"$OUT/warmup.txt"
RSS_START=$(rss_kib)
FDS_START=$(fds_steady)
event "warm-up done, RSS $RSS_START KiB, $FDS_START open fds (at boot $FDS_BOOT)"

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
HOSTILE_PID=""
if [ "$HOSTILE" = 1 ]; then
  HOSTILE_ARGS=(--port "$PORT" --seconds "$CHAOS_SECONDS" --idle "$HOSTILE_IDLE" --slowloris "$HOSTILE_SLOWLORIS"
    --slowloris-interval "$HOSTILE_SLOWLORIS_INTERVAL" --bad-rate "$HOSTILE_BAD_RATE" --api-key sk-normal)
  event "hostile: ${HOSTILE_ARGS[*]}"
  python3 benchmarks/qos/hostile.py "${HOSTILE_ARGS[@]}" --out "$OUT/hostile.json" \
    >/dev/null 2>"$OUT/hostile.log" &
  HOSTILE_PID=$!
fi
EXTRAS=()
for k in $(seq 1 "$STALL_COUNT"); do
  stall $((CHAOS_SECONDS * k / (STALL_COUNT + 1))) &
  EXTRAS+=($!)
done
if [ "$FLOOD_STREAMS" -gt 0 ]; then
  (
    sleep $(((CHAOS_SECONDS - FLOOD_SECONDS) / 2))
    event "flood: ${FLOOD_ARGS[*]}"
    "$BENCH" run --url "$URL" "${FLOOD_ARGS[@]}" --name "$SUITE-flood" --out "$OUT" >"$OUT/$SUITE-flood.txt"
    event "flood done"
  ) &
  EXTRAS+=($!)
fi
wait "$NORMAL"
for pid in "${EXTRAS[@]}"; do
  wait "$pid"
done
HOSTILE_RC=""
if [ -n "$HOSTILE_PID" ]; then
  HOSTILE_RC=0
  wait "$HOSTILE_PID" || HOSTILE_RC=$?
  event "hostile done: exit $HOSTILE_RC"
fi
event "run done"

# The normal run waited for the /metrics gauges; admission's own counts are
# on /admin/state, the registry's on /admin/streams. Bounded poll until
# nothing is admitted or queued and no stream is live.
ADMISSION=""
REGISTRY=""
for _ in $(seq 1 120); do
  ADMISSION=$(curl -fs -H "Authorization: Bearer $ADMIN_KEY" "$URL/admin/state" |
    python3 -c 'import json, sys; a = json.load(sys.stdin)["admission"]; print(a["active"], a["queued"])')
  curl -fs -H "Authorization: Bearer $ADMIN_KEY" "$URL/admin/streams" |
    python3 -c 'import json, sys; r = json.load(sys.stdin); r["streams"] = r["streams"][:20]; print(json.dumps(r))' \
      >"$OUT/registry-at-rest.json"
  REGISTRY=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["active"])' <"$OUT/registry-at-rest.json")
  [ "$ADMISSION" = "0 0" ] && [ "$REGISTRY" = 0 ] && break
  sleep 0.5
done
event "admission active/queued at rest: $ADMISSION; registry live streams: $REGISTRY"
read -r FDS_END FDS_SETTLE < <(fds_settled $((FDS_START + FD_SLACK)) 60)
event "open fds at rest: $FDS_END (after warm-up $FDS_START; settled in $FDS_SETTLE s)"
RSS_END=$(rss_kib)
curl -fs "$URL/metrics" | grep -E '^sluice:(num_requests|kv_tokens_in_use|engine_cancellations|request_finished|request_rejected|slow_consumer)' \
  >"$OUT/metrics-at-rest.txt" || true
stop_server
trap - EXIT
wait "$SAMPLER" || true

SUMMARY_EXTRA=()
if [ -n "$HOSTILE_PID" ]; then
  SUMMARY_EXTRA=(--hostile "$OUT/hostile.json" --hostile-rc "$HOSTILE_RC")
fi
if [ "$TRICKLE_REQUIRED" = 1 ]; then
  SUMMARY_EXTRA+=(--trickle-required)
fi
python3 benchmarks/qos/chaos_summary.py "$OUT" "$SUITE" \
  --machine "$(machine_line)" --commit "$(git rev-parse --short=12 HEAD)" --command "$COMMAND" \
  --binaries "$BINARIES" --infra-cancel-max-rate "$INFRA_CANCEL_MAX_RATE" \
  --rss-boot "$RSS_BOOT" --rss-start "$RSS_START" --rss-end "$RSS_END" \
  --fds-boot "$FDS_BOOT" --fds-start "$FDS_START" --fds-end "$FDS_END" --fds-settle "$FDS_SETTLE" \
  --fd-slack "$FD_SLACK" --slow-delay-ms "$CHAOS_SLOW_DELAY_MS" \
  --admission "$ADMISSION" --registry "$OUT/registry-at-rest.json" "${SUMMARY_EXTRA[@]}" >"$OUT/summary.md"
rm -f "$OUT/server.log"
# Per-request reports over 1 MiB are kept gzipped.
find "$OUT" -maxdepth 1 -name '*.json' -size +1024k -exec gzip -9 {} +
cat "$OUT/summary.md"
