# Shared helpers for the benchmark scripts: build, start and stop a Sluice
# server, and name result folders <date>-<commit>-<suite>.
# shellcheck shell=bash

# Built where cargo builds: target/, or $CARGO_TARGET_DIR when set. With
# SLUICE_BIN_DIR set, the prebuilt $SLUICE_BIN_DIR/sluice and
# $SLUICE_BIN_DIR/sluice-bench are used as they are and nothing is built
# (say which commit they were built from: results are named after HEAD).
if [ -n "${SLUICE_BIN_DIR:-}" ]; then
  BENCH=$SLUICE_BIN_DIR/sluice-bench
  SLUICE=$SLUICE_BIN_DIR/sluice
else
  BENCH=${CARGO_TARGET_DIR:-target}/release/sluice-bench
  SLUICE=${CARGO_TARGET_DIR:-target}/release/sluice
fi

build_release() {
  if [ -n "${SLUICE_BIN_DIR:-}" ]; then
    local bin
    for bin in "$SLUICE" "$BENCH"; do
      if [ ! -x "$bin" ]; then
        echo "SLUICE_BIN_DIR: no executable $bin" >&2
        return 1
      fi
    done
    return 0
  fi
  cargo build --release -p sluice -p sluice-bench
}

result_dir() {
  local suite=$1
  local dir
  dir="benchmarks/results/$(date -u +%Y-%m-%d)-$(git rev-parse --short=12 HEAD)-$suite"
  mkdir -p "$dir"
  echo "$dir"
}

# start_server PORT LOG [sluice serve flags...]: sets SERVER_PID, waits for /health.
start_server() {
  local port=$1 log=$2
  shift 2
  "$SLUICE" serve --port "$port" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server exited; see $log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "server did not become healthy; see $log" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

machine_line() {
  echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
}

# Server flags and run-name part for a governor config name: on (the
# default config), off (governor-off.yaml: fixed limit, no shedding), or
# any other benchmarks/governor/<name>.yaml.
governor_config() {
  case $1 in
    on) GOVERNOR_FLAGS=() GOVERNOR_NAME=governor-on ;;
    off) GOVERNOR_FLAGS=(--config benchmarks/governor/governor-off.yaml) GOVERNOR_NAME=governor-off ;;
    *) GOVERNOR_FLAGS=(--config "benchmarks/governor/$1.yaml") GOVERNOR_NAME=$1 ;;
  esac
}
