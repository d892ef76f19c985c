#!/usr/bin/env bash
# Issue #14: do long RAG prompts hurt short chats? Closed loop on a fresh
# server with the default config (short pool 128 x 1,024 cells, long pool
# 4 x 8,192), RUN_SECONDS each:
#   short-only  SHORT_STREAMS clients sending short chats (~60-110 words)
#   rag-mix     the same short clients, and beside them LONG_STREAMS clients
#               sending a 3-6k-token document and a question about it; half
#               of the documents are one and the same (the prefix cache's
#               RAG case), half each new
# The long clients are as many as the long pool's sequences: in one closed
# loop of 32 where every fifth request is long, long requests (each ~40
# short ones' work here) end up holding most clients, queued for the long
# pool (benchmarks/results/2026-12-04-f13c706789d3-rag-mix/), and the short
# load is no longer the same as alone.
# Targets: short requests' TTFT p95 in rag-mix within 1.5x of short-only;
# ITL p99 of all streams <= 1.0 s; long requests' TTFT p50 stated with the
# prefill rate. About 2 x RUN_SECONDS + the last documents' drain; run it
# alone on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

SHORT_STREAMS=${SHORT_STREAMS:-28}
LONG_STREAMS=${LONG_STREAMS:-4}
RUN_SECONDS=${RUN_SECONDS:-240}
WARMUP=${WARMUP:-30}
MAX_TOKENS=${MAX_TOKENS:-64}
PORT=${PORT:-8397}
URL="http://127.0.0.1:$PORT"

build_release
OUT=$(result_dir "rag-mix${SUFFIX:-}")
python3 benchmarks/long/prompts.py "$OUT/short.prompts.jsonl"
python3 benchmarks/long/prompts.py "$OUT/long.prompts.jsonl" --long --count 100
trap stop_server EXIT

# bench NAME PROMPTS STREAMS: one closed-loop client group.
bench() {
  "$BENCH" run --url "$URL" --server-pid "$SERVER_PID" --api chat \
    --concurrency "$3" --duration "$RUN_SECONDS" --warmup "$WARMUP" \
    --prompt-file "$OUT/$2.prompts.jsonl" --max-tokens "$MAX_TOKENS" --temperature 0.7 \
    --name "$1" --out "$OUT" >"$OUT/$1.txt"
}

start_server "$PORT" "$OUT/short-only.server.log"
bench short-only short "$SHORT_STREAMS"
stop_server

start_server "$PORT" "$OUT/rag-mix.server.log"
bench rag-mix-long long "$LONG_STREAMS" &
LONG_PID=$!
bench rag-mix-short short "$SHORT_STREAMS"
wait "$LONG_PID"
curl -fs "$URL/metrics" | grep -E '^sluice:(prompt_tokens|generation_tokens|engine_steps|num_requests)' \
  >"$OUT/rag-mix.metrics.txt" || true
stop_server

python3 benchmarks/long/summarize.py "$OUT" "$(machine_line)" "$(git rev-parse --short=12 HEAD)" \
  "SHORT_STREAMS=$SHORT_STREAMS LONG_STREAMS=$LONG_STREAMS RUN_SECONDS=$RUN_SECONDS WARMUP=$WARMUP MAX_TOKENS=$MAX_TOKENS benchmarks/long/rag-mix.sh"
# The servers' request lines (admission_ms, TTFT per request) and, when
# run with RUST_LOG=info,sluice_engine=debug, each pool step's tokens and time.
for log in "$OUT"/*.server.log; do
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E ' request |pool step' | gzip >"${log%.server.log}.steps-and-requests.log.gz" || true
done
rm -f "$OUT"/*.prompts.jsonl "$OUT"/*.server.log
gzip -f "$OUT"/short-only.json "$OUT"/rag-mix-short.json "$OUT"/rag-mix-long.json
cat "$OUT/summary.md"
