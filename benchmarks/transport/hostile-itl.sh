#!/usr/bin/env bash
# Issue #13: do running streams' inter-token gaps suffer while 1,000 silent
# sockets and 50 slowloris clients are being refused? Two closed-loop runs
# of STREAMS chat streams for RUN_SECONDS each, on one server with the
# default config (first-byte and header deadlines 10 s, so the hostile
# sockets are closed and reopened all the time): alone, then beside
# benchmarks/qos/hostile.py holding IDLE silent sockets and SLOWLORIS
# slowloris clients (no bad requests). Target: ITL p99 beside them within
# 1.5x of alone. About 3 minutes; run it alone on the machine.
# SERVE_CONFIG names a YAML config for the server (default: none), e.g.
# benchmarks/transport/engine-one-thread.yaml; SUFFIX is added to the
# result directory's name.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/lib.sh

STREAMS=${STREAMS:-8}
RUN_SECONDS=${RUN_SECONDS:-60}
IDLE=${IDLE:-1000}
SLOWLORIS=${SLOWLORIS:-50}
PORT=${PORT:-8395}
URL="http://127.0.0.1:$PORT"

build_release
OUT=$(result_dir "hostile-itl${SUFFIX:-}")
SERVE_CONFIG=${SERVE_CONFIG:-}
SERVE_ARGS=()
if [ -n "$SERVE_CONFIG" ]; then
  SERVE_ARGS=(--config "$SERVE_CONFIG")
fi
start_server "$PORT" "$OUT/server.log" "${SERVE_ARGS[@]}"
trap stop_server EXIT

ARGS=(--url "$URL" --api chat --concurrency "$STREAMS" --duration "$RUN_SECONDS" --warmup 10
  --prompt-words 60 --prompt-spread 20 --max-tokens 64 --temperature 0.7 --out "$OUT")
"$BENCH" run "${ARGS[@]}" --name alone >"$OUT/alone.txt"

python3 benchmarks/qos/hostile.py --port "$PORT" --seconds $((RUN_SECONDS + 30)) \
  --idle "$IDLE" --slowloris "$SLOWLORIS" --slowloris-interval 1 --bad-rate 0 \
  --out "$OUT/hostile.json" >"$OUT/hostile.txt" 2>&1 &
HOSTILE_PID=$!
# Let the hostile sockets open before the measured run starts.
sleep 10
"$BENCH" run "${ARGS[@]}" --name beside-hostile >"$OUT/beside-hostile.txt"
wait "$HOSTILE_PID" || true

python3 - "$OUT" "$(machine_line)" "$(git rev-parse --short=12 HEAD)" \
  "${SERVE_CONFIG:+SERVE_CONFIG=$SERVE_CONFIG }STREAMS=$STREAMS RUN_SECONDS=$RUN_SECONDS IDLE=$IDLE SLOWLORIS=$SLOWLORIS benchmarks/transport/hostile-itl.sh" <<'PY'
import json, sys
out, machine, commit, command = sys.argv[1:5]
def summary(name):
    return json.load(open(f"{out}/{name}.json"))["summary"]
alone, beside = summary("alone"), summary("beside-hostile")
ratio = beside["itl_seconds"]["p99"] / alone["itl_seconds"]["p99"]
hostile = json.load(open(f"{out}/hostile.json"))
rows = [
    ("ITL p50 (s)", alone["itl_seconds"]["p50"], beside["itl_seconds"]["p50"]),
    ("ITL p99 (s)", alone["itl_seconds"]["p99"], beside["itl_seconds"]["p99"]),
    ("TTFT p50 (s)", alone["ttft_seconds"]["p50"], beside["ttft_seconds"]["p50"]),
    ("output tok/s", alone["output_tokens_per_second"], beside["output_tokens_per_second"]),
]
with open(f"{out}/summary.md", "w") as f:
    f.write("# Streams beside 1,000 silent sockets and 50 slowloris clients\n\n")
    f.write(f"- machine: {machine}\n- commit: {commit}\n- command: `{command}`\n\n")
    f.write("| | alone | beside hostile sockets |\n|---|---|---|\n")
    for name, a, b in rows:
        f.write(f"| {name} | {a:.3f} | {b:.3f} |\n")
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    f.write(f"\nITL p99 ratio: {ratio:.2f} (target <= 1.5): {verdict}\n\n")
    f.write("hostile.py summary:\n\n```json\n" + json.dumps(hostile, indent=1)[:4000] + "\n```\n")
print(open(f"{out}/summary.md").read())
PY
