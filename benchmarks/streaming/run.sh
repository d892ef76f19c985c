#!/usr/bin/env bash
# Runs the streaming suite against a server URL:
#   benchmarks/streaming/run.sh [--url URL] [--server-pid PID] [scenario ...]
# Scenarios are the *.scenario files beside this script (all but the long
# ones by default; SOAK=1 adds them). Results go to
# benchmarks/results/<date>-<commit>-streaming/: one JSON and SVG per run and
# summary.md. Works against any OpenAI-compatible server (llama-server, vLLM).
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

URL=http://127.0.0.1:8080
PID_ARGS=()
SCENARIOS=()
while [ $# -gt 0 ]; do
  case $1 in
    --url) URL=$2; shift 2 ;;
    --server-pid) PID_ARGS=(--server-pid "$2"); shift 2 ;;
    *) SCENARIOS+=("$1"); shift ;;
  esac
done
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  for file in benchmarks/streaming/*.scenario; do
    SCENARIOS+=("$(basename "$file" .scenario)")
  done
fi

cargo build --release -p sluice-bench
OUT=$(result_dir streaming)
REPORTS=()
for name in "${SCENARIOS[@]}"; do
  ARGS=() GRID_CONCURRENCY=() GRID_TRANSPORT=() LONG=0 REQUESTS_PER_STREAM=1
  # shellcheck source=/dev/null
  source "benchmarks/streaming/$name.scenario"
  if [ "$LONG" = 1 ] && [ "${SOAK:-0}" != 1 ]; then
    echo "skipping $name (set SOAK=1 to run it)"
    continue
  fi
  if [ ${#GRID_CONCURRENCY[@]} -eq 0 ]; then
    "$BENCH" run --url "$URL" "${PID_ARGS[@]}" "${ARGS[@]}" --name "$name" --out "$OUT"
    REPORTS+=("$OUT/$name.json")
    continue
  fi
  for transport in "${GRID_TRANSPORT[@]}"; do
    for c in "${GRID_CONCURRENCY[@]}"; do
      "$BENCH" run --url "$URL" "${PID_ARGS[@]}" "${ARGS[@]}" --transport "$transport" \
        --connections 4 --concurrency "$c" --requests $(( c * REQUESTS_PER_STREAM )) \
        --name "$name-$transport-c$c" --out "$OUT"
      REPORTS+=("$OUT/$name-$transport-c$c.json")
    done
  done
done

{
  echo "# Streaming suite"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- target: $URL"
  echo "- command: benchmarks/streaming/run.sh --url $URL ${SCENARIOS[*]}"
  echo
  benchmarks/summarize.py "${REPORTS[@]}"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
