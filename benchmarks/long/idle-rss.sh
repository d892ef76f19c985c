#!/usr/bin/env bash
# Issue #14: resident memory of an idle server (loaded, no request yet) for
# the KV layouts: before pools (no-long-pool.yaml), the default pools, and
# the default pools with q8_0 KV. Prints a markdown table with each
# server's start-up line. About a minute.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

PORT=${PORT:-8398}
build_release
OUT=$(result_dir idle-rss)
{
  echo "# Idle resident memory by KV layout"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/long/idle-rss.sh"
  echo
  echo "| config | VmRSS MiB | start-up line |"
  echo "|---|---|---|"
  for config in benchmarks/long/no-long-pool.yaml default benchmarks/long/kv-q8.yaml; do
    args=()
    [ "$config" != default ] && args=(--config "$config")
    start_server "$PORT" "$OUT/server.log" "${args[@]}"
    rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
    line=$(grep -m1 "pools" "$OUT/server.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300)
    stop_server
    echo "| $config | $rss | \`$line\` |"
  done
} >"$OUT/summary.md"
rm -f "$OUT/server.log"
cat "$OUT/summary.md"
