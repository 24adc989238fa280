#!/usr/bin/env bash
# The sandbox tax: the whole standard check suite from its signed bundle, in a
# fresh process each run (verify + extract + load compiled components from a
# warm cache + run 7 checks), beside the same checks called as plain native
# Rust functions in a fresh process. Also the first run with a cold cache
# (compiles all components, in parallel). Not a test: prints numbers and ratios.
#   tests/bench/sandbox_suite.sh [RUNS]   (default 21)
set -euo pipefail
runs="${1:-21}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
bundles="${MOLT_SIGNED_BUNDLES:-$repo/signed-bundles}"
bundle="$(ls "$bundles"/molt-precheck.*.zip | head -1)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build -q --release -p molt-sandbox --example suite_bench)
bin="$CARGO_TARGET_DIR/release/examples/suite_bench"
cache="$(mktemp -d)"
trap 'rm -rf "$cache"' EXIT

ms() { echo $(( ($2 - $1) / 1000 )); }   # ns -> us
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

t0=$(date +%s%N); "$bin" sandbox "$bundle" "$bundles/root.json" "$cache" 2>/tmp/sandbox-bench-cold.txt; t1=$(date +%s%N)
cold_us=$(ms "$t0" "$t1")
sand=(); nat=()
for _ in $(seq "$runs"); do
  t0=$(date +%s%N); "$bin" sandbox "$bundle" "$bundles/root.json" "$cache" 2>/dev/null; t1=$(date +%s%N)
  sand+=("$(ms "$t0" "$t1")")
  t0=$(date +%s%N); "$bin" native 2>/dev/null; t1=$(date +%s%N)
  nat+=("$(ms "$t0" "$t1")")
done
s_med=$(printf '%s\n' "${sand[@]}" | median)
n_med=$(printf '%s\n' "${nat[@]}" | median)
echo "standard suite (7 checks), fresh process each run, median of $runs:"
printf '  sandbox, warm cache : %8.2f ms   (%s)\n' "$(echo "$s_med/1000" | bc -l)" "$("$bin" sandbox "$bundle" "$bundles/root.json" "$cache" 2>&1 | tr '\n' ' ')"
printf '  native Rust calls   : %8.2f ms\n' "$(echo "$n_med/1000" | bc -l)"
printf '  sandbox tax         : %8.2f ms  (ratio %.1fx)\n' "$(echo "($s_med-$n_med)/1000" | bc -l)" "$(echo "$s_med/$n_med" | bc -l)"
printf '  first run, cold cache (compiles all, in parallel): %.2f ms  (%s)\n' "$(echo "$cold_us/1000" | bc -l)" "$(tr '\n' ' ' </tmp/sandbox-bench-cold.txt)"
echo "targets: warm suite < 20 ms, first run < 1000 ms"
