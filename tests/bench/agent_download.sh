#!/usr/bin/env bash
# Benchmark: the agent's package download from `molt serve` on loopback against
# `curl` of the same URL, in one run. A 200 MB signed core package is served; the
# agent downloads it (Range-capable client, SHA-256 while streaming, fsync) and we
# read its own timing from the log (`download_ms`); curl writes the same URL to a
# file (curl -o does not fsync; the agent does). Best of RUNS for both, since one
# download on a 2-core machine swings by +-30%. Target: agent throughput >= 0.9x curl's.
#
#   bash tests/bench/agent_download.sh   (MOLT=path/to/molt to pick a binary; SIZE_MB=200; RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/../.."
MOLT="${MOLT:-${CARGO_TARGET_DIR:-target}/release/molt}"
[ -x "$MOLT" ] || { echo "build it first: cargo build --release -p molt (or set MOLT=)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
SIZE_MB="${SIZE_MB:-200}"
RUNS="${RUNS:-3}"
V1=quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225
V2=quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130
T="$(mktemp -d)"; trap 'kill $SRV 2>/dev/null || true; kill $AG 2>/dev/null || true; rm -rf "$T"' EXIT
SRV=; AG=
"$MOLT" keygen --out "$T/k.pk8" >/dev/null
"$MOLT" root init --out "$T/root.json" --root-key "$T/k.pk8" --checks-key "$T/k.pk8" --packages-key "$T/k.pk8" >/dev/null
mkdir -p "$T/pk" "$T/c1/bin" "$T/c2/bin" "$T/c2/lib" "$T/u/bin"
printf '#!/bin/sh\n' > "$T/c1/bin/molt"; chmod 755 "$T/c1/bin/molt"; cp "$T/c1/bin/molt" "$T/c2/bin/molt"; cp "$T/c1/bin/molt" "$T/u/bin/molt"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$T/c2/lib/payload.bin"
for spec in "c1 core $V1" "c2 core $V2" "u upgrade $V2"; do
  set -- $spec
  "$MOLT" bundle pack "$T/$1" --buildstamp "molt-$2.$3.universal.universal.zip" --sequence 1 --out "$T/pk/molt-$2.$3.universal.universal.zip" --key "$T/k.pk8" >/dev/null
done
# A fresh v1 install.
H="$T/home"; mkdir -p "$H/versions" "$H/state"
"$MOLT" bundle extract "$T/pk/molt-core.$V1.universal.universal.zip" "$H/versions/$V1" --root "$T/root.json" >/dev/null
python3 - "$H" "$V1" "$T/c1" <<'PY'
import hashlib, json, os, sys
home, v, src = sys.argv[1:]
files = {}
for d, _, fs in os.walk(src):
    for f in fs:
        p = os.path.join(d, f); rel = os.path.relpath(p, src)
        b = open(p, 'rb').read()
        files[rel] = {"size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "mode": os.stat(p).st_mode & 0o777}
os.makedirs(f"{home}/versions/{v}/meta", exist_ok=True)
json.dump({"kind": "core", "name": f"molt-core.{v}.universal.universal.zip", "version": v, "files": files},
          open(f"{home}/versions/{v}/meta/core.meta.json", "w"))
PY
ln -s "versions/$V1" "$H/current"; cp "$T/root.json" "$H/state/root.json"
"$MOLT" serve --db "$T/cp.db" --packages "$T/pk" --listen 127.0.0.1:0 --admin-token bench-admin-token-0123 \
  --fleet-version "$V2" --bootstrap-agent bench:bench-agent-token-0123 > "$T/serve.out" 2> "$T/serve.err" & SRV=$!
for _ in $(seq 100); do grep -q http:// "$T/serve.out" 2>/dev/null && break; sleep 0.1; done
URL="$(grep -o 'http://[0-9.:]*' "$T/serve.out" | head -1)"
PKG="molt-core.$V2.universal.universal.zip"
BYTES=$(stat -c %s "$T/pk/$PKG")
# curl first (also warms the page cache for both).
curl -s -o /dev/null "$URL/packages/$PKG"
CURL_S=
for _ in $(seq "$RUNS"); do
  rm -f "$T/curl.zip"
  t=$(curl -s -o "$T/curl.zip" -w '%{time_total}' "$URL/packages/$PKG")
  CURL_S=$(python3 -c "import sys; a=[float(x) for x in sys.argv[1:] if x]; print(min(a))" "$t" $CURL_S)
done
printf 'control_plane_url = "%s"\nagent_name = "bench"\ntoken = "bench-agent-token-0123"\nrun_precheck = false\ntest_skip_handover = true\n' "$URL" > "$H/config.toml"
cp -a "$H" "$T/home.template"
MS=
for i in $(seq "$RUNS"); do
  rm -rf "$H"; cp -a "$T/home.template" "$H"
  MOLT_LOG=info "$MOLT" agent --home "$H" 2> "$T/agent.err" & AG=$!
  for _ in $(seq 600); do grep -q "hand-over to deploy skipped\|ERROR" "$H/logs/agent.log" 2>/dev/null && break; sleep 0.1; done
  kill $AG 2>/dev/null || true; wait $AG 2>/dev/null || true
  LINE="$(grep "Package was successfully downloaded" "$H/logs/agent.log" | grep "molt-core" | head -1)"
  [ -n "$LINE" ] || { echo "agent did not download the package:"; tail -20 "$H/logs/agent.log"; exit 1; }
  m=$(echo "$LINE" | grep -o 'download_ms=[0-9]*' | cut -d= -f2)
  if [ -z "$MS" ] || [ "$m" -lt "$MS" ]; then MS=$m; fi
done
python3 - "$BYTES" "$MS" "$CURL_S" <<'PY'
import sys
b, ms, cs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
a = b / (ms / 1000) / 1e6; c = b / cs / 1e6
print(f"package: {b/1e6:.1f} MB")
print(f"best of runs; molt agent download (sha256 + fsync): {ms/1000:.3f} s  {a:.0f} MB/s")
print(f"curl -o file:                         {cs:.3f} s  {c:.0f} MB/s")
print(f"ratio molt/curl throughput: {a/c:.2f}x (target >= 0.9x)")
PY
