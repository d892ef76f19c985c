#!/usr/bin/env bash
# Soak run: chaos.sh for a long time at a lighter load, to show memory,
# leaks and latency drift. Defaults: 2 hours at 16 streams (10 % slow
# readers, 5 % disconnects), a 24-stream flood for 60 s in the middle, an
# engine stall of 3 s every 24 minutes. Any chaos.scenario knob can be set
# from the environment (SOAK_SECONDS sets CHAOS_SECONDS). Results go to
# benchmarks/results/<date>-<commit>-soak/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export SUITE=soak
export CHAOS_SECONDS=${SOAK_SECONDS:-${CHAOS_SECONDS:-7200}}
export CHAOS_STREAMS=${CHAOS_STREAMS:-16}
export FLOOD_STREAMS=${FLOOD_STREAMS:-24}
export STALL_COUNT=${STALL_COUNT:-4}
export PORT=${PORT:-8394}
export SOAK_COMMAND=benchmarks/qos/soak.sh
exec benchmarks/qos/chaos.sh
