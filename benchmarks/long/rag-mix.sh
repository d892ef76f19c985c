#!/usr/bin/env bash
# Issue #14: do long RAG prompts hurt short chats? Two closed-loop runs of
# STREAMS chat streams for RUN_SECONDS each on a fresh server with the
# default config (short pool 128 x 1,024 cells, long pool 4 x 8,192):
#   short-only  every request a short chat (~60-110 words)
#   rag-mix     every fifth request a 3-6k-token document and a question
#               about it; half of those documents are one and the same
#               (the prefix cache's RAG case), half each new
# Targets: short requests' TTFT p95 in rag-mix within 1.5x of short-only;
# ITL p99 of all streams <= 1.0 s; long requests' TTFT p50 stated with the
# prefill rate. About 2 x RUN_SECONDS + start-up; run it alone on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

STREAMS=${STREAMS:-32}
RUN_SECONDS=${RUN_SECONDS:-300}
WARMUP=${WARMUP:-30}
MAX_TOKENS=${MAX_TOKENS:-64}
PORT=${PORT:-8397}
URL="http://127.0.0.1:$PORT"

build_release
OUT=$(result_dir "rag-mix${SUFFIX:-}")
python3 benchmarks/long/prompts.py "$OUT/rag-mix.prompts.jsonl"
python3 benchmarks/long/prompts.py "$OUT/short-only.prompts.jsonl" --short-only
trap stop_server EXIT

for run in short-only rag-mix; do
  start_server "$PORT" "$OUT/$run.server.log"
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --api chat \
    --concurrency "$STREAMS" --duration "$RUN_SECONDS" --warmup "$WARMUP" \
    --prompt-file "$OUT/$run.prompts.jsonl" --max-tokens "$MAX_TOKENS" --temperature 0.7 \
    --name "$run" --out "$OUT" >"$OUT/$run.txt"
  curl -fs "$URL/metrics" | grep -E '^sluice:(prompt_tokens|prefix_cache|num_requests|request_queue|time_to_first)' \
    >"$OUT/$run.metrics.txt" || true
  stop_server
done

python3 benchmarks/long/summarize.py "$OUT" "$(machine_line)" "$(git rev-parse --short=12 HEAD)" \
  "STREAMS=$STREAMS RUN_SECONDS=$RUN_SECONDS WARMUP=$WARMUP MAX_TOKENS=$MAX_TOKENS benchmarks/long/rag-mix.sh"
rm -f "$OUT"/*.prompts.jsonl "$OUT"/*.server.log
gzip -f "$OUT"/short-only.json "$OUT"/rag-mix.json
cat "$OUT/summary.md"
