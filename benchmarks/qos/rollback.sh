#!/usr/bin/env bash
# A bad config change rolled back by the policy engine (about 4 minutes).
# Chat traffic where every request shares a 300-word system prompt, 8
# streams, so the prefix cache keeps TTFT low. At 60 s an operator pushes a
# bad change through the admin API (the prefix_cache flag's kill switch on);
# TTFT p95 breaches the 3 s SLO and the rule in rollback.yaml rolls the
# flags back to the last known-good ones. The timeline (TTFT per 10 s, the
# flag's state, the policy's actions) goes to timeline.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir rollback)
PORT=${PORT:-8390}
URL="http://127.0.0.1:$PORT"
KEY=rollback-bench-admin-key
DURATION=${ROLLBACK_SECONDS:-210}
PUSH_AT=${PUSH_AT_SECONDS:-60}

start_server "$PORT" "$OUT/rollback.server.log" --config benchmarks/qos/rollback.yaml
"$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --api chat --concurrency 8 --duration "$DURATION" \
  --shared-prefix-words 300 --shared-prefix-fraction 1.0 --prompt-words 20 --prompt-spread 5 \
  --max-tokens 32 --temperature 0.7 --name rollback --out "$OUT" &
BENCH_PID=$!
START=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$START"; }
: >"$OUT/admin-state.jsonl"
PUSHED=0
while kill -0 "$BENCH_PID" 2>/dev/null; do
  T=$(elapsed)
  if [ "$PUSHED" -eq 0 ] && python3 -c "import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))" "$T" "$PUSH_AT"; then
    curl -fs -X PUT -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d '{"kill_switch": true}' "$URL/admin/flags/prefix_cache" >/dev/null
    echo "{\"t\": $T, \"event\": \"bad change pushed: prefix_cache kill_switch on\"}" >>"$OUT/admin-state.jsonl"
    PUSHED=1
  fi
  STATE=$(curl -fs -H "Authorization: Bearer $KEY" "$URL/admin/state" || echo null)
  echo "{\"t\": $T, \"state\": $STATE}" >>"$OUT/admin-state.jsonl"
  sleep 2
done
wait "$BENCH_PID"
stop_server
python3 benchmarks/qos/timeline.py "$OUT/rollback.json" "$OUT/admin-state.jsonl" >"$OUT/timeline.md"
{
  echo "# Policy rollback of a bad config change"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/qos/rollback.sh (config benchmarks/qos/rollback.yaml)"
  echo
  benchmarks/summarize.py "$OUT/rollback.json"
  echo
  cat "$OUT/timeline.md"
} >"$OUT/summary.md"
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
