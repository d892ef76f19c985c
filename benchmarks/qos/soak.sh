#!/usr/bin/env bash
# Soak run: chaos.sh for a long time, to show memory, fd and accounting
# leaks and latency drift. Defaults: 2 hours at 16 streams (10 % slow
# readers pausing 1 s after each read, so they read slower than tokens
# arrive, checked: TRICKLE_REQUIRED=1; 5 % disconnects), a 24-stream
# flood for 60 s in the middle, an engine stall of 3 s every 24 minutes;
# no infrastructure-caused cancellation allowed (INFRA_CANCEL_MAX_RATE=0).
# Any chaos.scenario knob can be set from the environment (SOAK_SECONDS
# sets CHAOS_SECONDS).
# Results go to benchmarks/results/<date>-<commit>-soak/.
#
# Issue #13's soak (one hour at 32 streams, 10 % trickling readers, 5 %
# disconnects, idle sockets, slowloris and bad requests mixed in):
#   HOSTILE=1 SOAK_SECONDS=3600 CHAOS_STREAMS=32 benchmarks/qos/soak.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export SUITE=soak
export CHAOS_SECONDS=${SOAK_SECONDS:-${CHAOS_SECONDS:-7200}}
export CHAOS_STREAMS=${CHAOS_STREAMS:-16}
export CHAOS_SLOW_DELAY_MS=${CHAOS_SLOW_DELAY_MS:-1000}
export FLOOD_STREAMS=${FLOOD_STREAMS:-24}
export STALL_COUNT=${STALL_COUNT:-4}
export INFRA_CANCEL_MAX_RATE=${INFRA_CANCEL_MAX_RATE:-0}
export TRICKLE_REQUIRED=${TRICKLE_REQUIRED:-1}
export PORT=${PORT:-8394}
export SOAK_COMMAND=benchmarks/qos/soak.sh
exec benchmarks/qos/chaos.sh
