#!/usr/bin/env bash
# Transport costs without generation in the way (about 2 minutes):
# - connection set-up per request: cheap GETs over HTTP/1.1 with a new
#   connection per request, HTTP/1.1 keep-alive and h2c (4 shared
#   connections), client latency and server CPU per request;
# - the SSE writer: heap allocations and CPU per token, Sluice's framer
#   against a serde_json struct per chunk.
# Streaming TTFT/ITL/wire bytes per protocol under load are the
# protocol-h1-vs-h2 scenario of benchmarks/streaming/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
cargo build --release -p sluice --example sse_writer_cost
OUT=$(result_dir transport)
PORT=${PORT:-8384}
REQUESTS=${REQUESTS:-4000}
CONCURRENCY=${CONCURRENCY:-8}

start_server "$PORT" "$OUT/server.log" --config benchmarks/transport/server.yaml
CONNECT_CMD="sluice-bench connect --url http://127.0.0.1:$PORT --requests $REQUESTS --concurrency $CONCURRENCY --server-pid <server>"
CONNECT=$("$BENCH" connect --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" \
  --concurrency "$CONCURRENCY" --server-pid "$SERVER_PID" --out "$OUT/connect.json")
stop_server

WRITER=$(target/release/examples/sse_writer_cost)

{
  echo "# Transport costs"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/transport/run.sh"
  echo
  echo "## Connection set-up per request (GET /v1/models, $CONCURRENCY in flight)"
  echo
  echo "\`$CONNECT_CMD\`"
  echo
  echo "$CONNECT"
  echo
  echo "## SSE writer per token"
  echo
  echo "\`cargo run --release -p sluice --example sse_writer_cost\`"
  echo
  echo "$WRITER"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
