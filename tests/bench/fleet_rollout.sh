#!/usr/bin/env bash
# Fleet rollout benchmark (issue 15; not run by .ci/run): 10,000 simulated
# agents (lightweight clients in one process speaking the real agent HTTP API
# to a real in-process control plane, host/server/examples/fleet_sim.rs)
# through a 4-group rollout with max in flight 500 (the control plane runs in
# a child process of the simulator: one socket per agent on each side). Prints the time to 100 %
# beside the theoretical minimum (formula printed), p99 API latency, errors,
# the max in flight observed (from the store) and the 10,000-agent dashboard
# page size.
#
#   tests/bench/fleet_rollout.sh [AGENTS] [GROUPS] [IN_FLIGHT] [UPGRADE_MS] [CANARY] [SOAK_SECS]
set -euo pipefail
cd "$(dirname "$0")/../.."
AGENTS=${1:-10000}
GROUPS_N=${2:-4}
IN_FLIGHT=${3:-500}
UPGRADE_MS=${4:-5000}
CANARY=${5:-1}
SOAK=${6:-5}
# Two sockets per simulated agent (client and server in one process).
ulimit -n "$(( AGENTS * 2 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -p molt-server --example fleet_sim -j "${JOBS:-2}" >&2
exec target/release/examples/fleet_sim "$AGENTS" "$GROUPS_N" "$IN_FLIGHT" "$UPGRADE_MS" "$CANARY" "$SOAK"
