#!/usr/bin/env bash
# Benchmark: building the new version directory (molt deploy's "Deploy Binary
# Files": hard links for unchanged files, changed ones from the extracted package,
# every file checked against its manifest entry (a digest, or for an unchanged
# link its inode's size, mode and mtime), syncfs) against `rsync -a` of the whole
# tree, side by side in one run,
# for a 2,000-file, 200 MB package with 5% and with 100% of files changed. Also
# prints the downtime (service stopped -> new version Up) of the same deploys.
# Targets: 5% changed <= 0.2x rsync; 100% changed no slower than rsync.
#
# Usage: tests/bench/deploy_build.sh [path/to/molt]   (default: target/release/molt,
# else target/debug/molt under $CARGO_TARGET_DIR or ./target). Needs rsync, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
TD="${CARGO_TARGET_DIR:-target}"
MOLT="${1:-}"
if [ -z "$MOLT" ]; then
  if [ -x "$TD/release/molt" ]; then MOLT="$TD/release/molt"; else MOLT="$TD/debug/molt"; fi
fi
[ -x "$MOLT" ] || { echo "molt binary not found at $MOLT (cargo build -p molt)"; exit 1; }
command -v rsync >/dev/null || { echo "rsync is required (apt-get install rsync)"; exit 1; }
MOLT="$(readlink -f "$MOLT")"
FILES="${FILES:-2000}"
SIZE_KB="${SIZE_KB:-100}"     # 2,000 x 100 KiB = 200 MB
WORK="$(mktemp -d /tmp/molt-bench-deploy.XXXXXX)"
trap 'kill $(cat "$WORK"/*/conf/supervisor.pid 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$WORK"' EXIT

# make_home DIR PERCENT: a home with v1 installed and an upgrade dir for v2 in
# which PERCENT% of the files changed. Python writes the files, manifests and plan.
make_home() {
python3 - "$1" "$2" "$FILES" "$SIZE_KB" <<'PY'
import hashlib, json, os, sys, random
home, pct, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def agent(v):
    return ("#!/bin/sh\n# STAND-IN agent for the benchmark\nV=%s\n"
            "if [ \"$1\" = --version ]; then echo $V; exit 0; fi\nH=\"$3\"\ntrap 'exit 0' TERM\n"
            "printf '{\"pid\":%%s,\"version\":\"%%s\",\"status\":\"Up\",\"since\":\"%%s\"}' $$ $V \"$(date -u +%%Y-%%m-%%dT%%H:%%M:%%S.%%NZ)\" > $H/work/s.$$ && mv $H/work/s.$$ $H/work/agent.status.json\n"
            "while :; do sleep 0.05; done\n" % v).encode()
def put(root, rel, data, mode, files):
    p = os.path.join(root, rel); os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f: f.write(data)
    os.chmod(p, mode)
    files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}
rnd = random.Random(7)
v1dir = os.path.join(home, "versions", "v1"); f1 = {}
put(v1dir, "bin/molt", agent("v1"), 0o755, f1)
blobs = {}
for i in range(n):
    rel = "lib/d%02d/f%04d.bin" % (i % 40, i)
    blobs[rel] = rnd.randbytes(kb * 1024)
    put(v1dir, rel, blobs[rel], 0o644, f1)
pkg = lambda v, files: {"kind": "core", "name": "molt-core.%s.universal.universal.zip" % v, "version": v, "files": files}
os.makedirs(os.path.join(v1dir, "meta"))
json.dump(pkg("v1", f1), open(os.path.join(v1dir, "meta", "core.meta.json"), "w"))
os.symlink("versions/v1", os.path.join(home, "current"))
for d in ("conf", "work", "logs"): os.makedirs(os.path.join(home, d), exist_ok=True)
up = os.path.join(home, "work", "upgrade_temp", "1234567890123-0"); stage = os.path.join(up, "packages", "core")
f2 = dict(f1); changed = ["bin/molt"]
put(stage, "bin/molt", agent("v2"), 0o755, f2)
rels = sorted(blobs)
k = max(1, len(rels) * pct // 100)
for rel in rels[:k]:
    put(stage, rel, rnd.randbytes(kb * 1024), 0o644, f2); changed.append(rel)
plan = {"attempt_id": None, "control_plane": None, "from_version": "v1", "to_version": "v2",
        "packages": [pkg("v2", f2)], "changed_files": changed,
        "options": {"stop_timeout_secs": 30, "health_timeout_secs": 60, "report_timeout_secs": 1}}
json.dump(plan, open(os.path.join(up, "plan.json"), "w"))
PY
}

now_ms() { date +%s%3N; }

run_case() {
  local pct="$1" home="$WORK/h$1"
  make_home "$home" "$pct"
  sync
  # rsync -a of the whole current version tree (what a copy-based upgrade does).
  local t0 t1 rs_ms
  t0=$(now_ms); rsync -a "$home/versions/v1/" "$WORK/rsync-$pct/"; sync -f "$WORK/rsync-$pct" 2>/dev/null || sync; t1=$(now_ms)
  rs_ms=$((t1 - t0))
  rm -rf "$WORK/rsync-$pct"; sync
  "$MOLT" run --home "$home" >"$home/supervisor.out" 2>&1 &
  for _ in $(seq 100); do grep -q '"Up"' "$home/work/agent.status.json" 2>/dev/null && break; sleep 0.1; done
  local out
  out=$("$MOLT" deploy --home "$home" --plan "$home/work/upgrade_temp/1234567890123-0/plan.json" 2>"$home/deploy.err")
  local build_ms down_ms
  build_ms=$(echo "$out" | sed -n 's/.*build_ms=\([0-9]*\).*/\1/p')
  down_ms=$(echo "$out" | sed -n 's/.*downtime_ms=\([0-9]*\).*/\1/p')
  [ -n "$build_ms" ] || { echo "deploy failed:"; echo "$out"; tail -20 "$home/deploy.err"; exit 1; }
  kill "$(cat "$home/conf/supervisor.pid")" 2>/dev/null || true
  python3 - "$pct" "$build_ms" "$rs_ms" "$down_ms" <<'PY'
import sys
pct, b, r, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
target = 0.2 if pct != "100" else 1.0
ratio = b / max(r, 1)
print(f"{pct:>3}% changed: molt build {b:6d} ms | rsync -a {r:6d} ms | ratio {ratio:.2f}x (target <= {target}x: {'met' if ratio <= target else 'MISSED'}) | downtime {d} ms")
PY
}

echo "package: $FILES files x ${SIZE_KB} KiB; molt: $MOLT"
run_case 5
run_case 100
