#!/usr/bin/env bash
# Per-stage TTFT at 32 streams with the TTFT accelerator off and on
# (chat-c32, about 9 minutes on 2 cores): where a first token's time goes
# (tokenize, admission, engine queue, prefill, first token after admission)
# from the server's sluice:ttft_stage_seconds histograms, plus the client's
# TTFT, ITL and throughput.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir accelerator)
PORT=${PORT:-8385}
URL="http://127.0.0.1:$PORT"
# shellcheck source=/dev/null
source benchmarks/streaming/chat-c32.scenario
REPORTS=()
for mode in off on; do
  start_server "$PORT" "$OUT/chat-c32-$mode.server.log" --config "benchmarks/accelerator/$mode.yaml"
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" "${ARGS[@]}" --name "chat-c32-$mode" --out "$OUT"
  curl -fs "$URL/metrics" >"$OUT/chat-c32-$mode.metrics.txt"
  stop_server
  REPORTS+=("$OUT/chat-c32-$mode.json")
done

{
  echo "# TTFT accelerator: per-stage TTFT at 32 streams, off vs on"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/accelerator/run.sh (configs benchmarks/accelerator/{off,on}.yaml)"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
  echo
  echo "Server-side stages (mean seconds per request, from sluice:ttft_stage_seconds; the cold burst included):"
  echo
  benchmarks/accelerator/stages.py "$OUT/chat-c32-off.metrics.txt" "$OUT/chat-c32-on.metrics.txt"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
