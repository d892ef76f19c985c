#!/usr/bin/env bash
# Tenant fairness alone (about 3 minutes): a light tenant's TTFT alone, then
# beside a 48-stream flood from another tenant (the last part of run.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir "fairness${SUFFIX:-}")
PORT=${PORT:-8386}
URL="http://127.0.0.1:$PORT"
LIGHT=(--api chat --concurrency 2 --requests 12 --prompt-words 60 --prompt-spread 10 --max-tokens 32 --temperature 0.7 --api-key sk-light)
CONFIG=${CONFIG:-benchmarks/governor/tenants.yaml}
start_server "$PORT" "$OUT/fairness.server.log" --config "$CONFIG"
"$BENCH" run --url "$URL" "${LIGHT[@]}" --name fairness-light-alone --out "$OUT"
"$BENCH" run --url "$URL" --api chat --concurrency 48 --duration 120 --prompt-words 60 --prompt-spread 10 \
  --max-tokens 64 --temperature 0.7 --api-key sk-flood --name fairness-flood --out "$OUT" &
FLOOD=$!
sleep 45 # let the flood fill the server before the light tenant arrives
"$BENCH" run --url "$URL" "${LIGHT[@]}" --name fairness-light-beside-flood --out "$OUT"
wait "$FLOOD"
stop_server
{
  echo "# Tenant fairness: a light tenant alone and beside a flood"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: CONFIG=$CONFIG benchmarks/governor/fairness.sh"
  echo
  benchmarks/summarize.py "$OUT/fairness-light-alone.json" "$OUT/fairness-light-beside-flood.json" "$OUT/fairness-flood.json"
} >"$OUT/summary.md"
# The light tenant's request log lines: engine queue time and prefill steps.
sed 's/\x1b\[[0-9;]*m//g' "$OUT/fairness.server.log" | grep 'tenant=light' >"$OUT/light-requests.log" || true
rm -f "$OUT"/*.server.log
cat "$OUT/summary.md"
