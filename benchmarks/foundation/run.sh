#!/usr/bin/env bash
# Foundation benchmark: the same prompts through HTTP (/v1/completions, SSE)
# and through the engine loop without HTTP, at 1, 8 and 32 concurrent
# streams. Output lengths are fixed (ignore_eos) so both sides do the same
# work. About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

build_release
OUT=$(result_dir foundation)
PORT=${PORT:-8181}
COMMON=(--max-tokens 64 --prompt-words 40 --prompt-spread 10 --temperature 0.7 --ignore-eos --seed 7)

for C in 1 8 32; do
  N=$(( C == 1 ? 24 : 3 * C ))
  "$BENCH" engine --concurrency "$C" --requests "$N" "${COMMON[@]}" --name "engine-c$C" --out "$OUT"
  start_server "$PORT" "$OUT/server-c$C.log"
  "$BENCH" run --url "http://127.0.0.1:$PORT" --api completions --transport h1 \
    --concurrency "$C" --requests "$N" "${COMMON[@]}" --server-pid "$SERVER_PID" \
    --name "http-c$C" --out "$OUT"
  stop_server
done

{
  echo "# Foundation: HTTP vs engine loop"
  echo
  echo "- machine: $(machine_line)"
  echo "- commit: $(git rev-parse --short=12 HEAD)"
  echo "- command: benchmarks/foundation/run.sh"
  echo "- workload: completions, ~50-token prompts, 64 output tokens (ignore_eos), temperature 0.7, closed loop"
  echo
  benchmarks/summarize.py "$OUT"/engine-c1.json "$OUT"/http-c1.json "$OUT"/engine-c8.json \
    "$OUT"/http-c8.json "$OUT"/engine-c32.json "$OUT"/http-c32.json
} >"$OUT/summary.md"
rm -f "$OUT"/server-c*.log
cat "$OUT/summary.md"
