#!/usr/bin/env bash
# Fuzzing (fuzz/, cargo-fuzz and libFuzzer): builds every target, runs each
# for a bounded time, one after another on one core, prints each target's
# executions and exits non-zero if one crashed (artifact under
# fuzz/artifacts/<target>/). Without a nightly toolchain, which libFuzzer
# needs, it runs the same target bodies over the committed corpus and
# mutations of it on stable instead.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Seconds default to $FUZZ_SECONDS, else 20. A summary (one JSON object) is
# written to $FUZZ_SUMMARY, default fuzz/target/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_SECONDS:-20}}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for file in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$file" .rs)")
  done
fi
summary="${FUZZ_SUMMARY:-fuzz/target/summary.json}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain ('cargo +nightly' fails), and libFuzzer needs one;"
  echo "fuzz: replaying the committed corpus and mutations of it on stable instead."
  exec cargo test --release --manifest-path fuzz/Cargo.toml -- --nocapture
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# The code under test is safe Rust: no sanitizer, but release code with
# debug assertions and overflow checks (cargo-fuzz's default).
build=(--sanitizer none)
started=$(date +%s)
cargo +nightly fuzz build "${build[@]}"
echo "fuzz: built in $(($(date +%s) - started)) s"

# One number from libFuzzer's final stats in the log.
final_stat() { grep -o "stat::$1: *[0-9]*" "$log" | grep -o '[0-9]*$' || echo 0; }

mkdir -p fuzz/target/logs "$(dirname "$summary")"
crashed=()
rows=()
for target in "${targets[@]}"; do
  work="fuzz/target/corpus/$target"
  log="fuzz/target/logs/$target.log"
  mkdir -p "$work"
  # New inputs go to the first corpus directory; the committed seeds stay as they are.
  begin=$(date +%s)
  if cargo +nightly fuzz run "${build[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    status=ok
  else
    status=crash
    crashed+=("$target")
  fi
  ran=$(($(date +%s) - begin))
  execs=$(final_stat number_of_executed_units)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  printf 'fuzz: %-15s %-5s %5d s %12d executions %8d exec/s  cov %d\n' \
    "$target" "$status" "$ran" "$execs" "$(final_stat average_exec_per_sec)" "$cov"
  rows+=("{\"target\":\"$target\",\"status\":\"$status\",\"seconds\":$ran,\"executions\":$execs,\"exec_per_sec\":$(final_stat average_exec_per_sec),\"coverage\":$cov,\"corpus\":$(find "$work" -type f | wc -l),\"peak_rss_mb\":$(final_stat peak_rss_mb)}")
  if [ "$status" = crash ]; then
    grep -E 'panicked at|ERROR: libFuzzer|Test unit written to|SUMMARY' "$log" || tail -20 "$log"
  fi
done
(IFS=,; printf '{"seconds_per_target":%s,"targets":[%s]}\n' "$seconds" "${rows[*]}") >"$summary"
echo "fuzz: summary in $summary"
if [ "${#crashed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${crashed[*]} (inputs under fuzz/artifacts/; logs under fuzz/target/logs/)"
  exit 1
fi
