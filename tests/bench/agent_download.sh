#!/usr/bin/env bash
# Benchmark: the agent's package download from `molt serve` on loopback against
# `curl` of the same URL, in one run. A 200 MB signed core package is served; the
# agent downloads it (a plain full download: delta_downloads = false; Range only to
# resume; written and fsynced; its SHA-256 is the signature check that follows,
# `verify_ms`, not a second hash while streaming) and we read its own timing from
# the log (`download_ms`); curl writes the same URL to a
# file (curl -o does not fsync; the agent does). Best and median of RUNS for both,
# taking turns, since one download on a 2-core machine swings by +-30%.
# Target: agent throughput >= 0.9x curl's.
#
#   bash tests/bench/agent_download.sh   (MOLT=path/to/molt to pick a binary; SIZE_MB=200; RUNS=7)
set -euo pipefail
cd "$(dirname "$0")/../.."
MOLT="${MOLT:-${CARGO_TARGET_DIR:-target}/release/molt}"
[ -x "$MOLT" ] || { echo "build it first: cargo build --release -p molt --features test-hooks (or set MOLT=)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
SIZE_MB="${SIZE_MB:-200}"
RUNS="${RUNS:-7}"
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
printf 'control_plane_url = "%s"\nagent_name = "bench"\ntoken = "bench-agent-token-0123"\nrun_precheck = false\ntest_skip_handover = true\ndelta_downloads = false\n' "$URL" > "$H/config.toml"
cp -a "$H" "$T/home.template"
# One curl first warms the page cache for both. Then curl and the agent take
# turns, so a slow patch of the machine falls on both alike.
curl -s -o /dev/null "$URL/packages/$PKG"
CURL_S=(); AGENT_S=(); VERIFY_S=()
for i in $(seq "$RUNS"); do
  rm -f "$T/curl.zip"
  CURL_S+=("$(curl -s -o "$T/curl.zip" -w '%{time_total}' "$URL/packages/$PKG")")
  rm -rf "$H"; cp -a "$T/home.template" "$H"
  MOLT_LOG=info "$MOLT" agent --home "$H" 2> "$T/agent.err" & AG=$!
  for _ in $(seq 600); do grep -q "hand-over to deploy skipped\|ERROR" "$H/logs/agent.log" 2>/dev/null && break; sleep 0.1; done
  kill $AG 2>/dev/null || true; wait $AG 2>/dev/null || true
  LINE="$(grep "Package was successfully downloaded" "$H/logs/agent.log" | grep "molt-core" | head -1)"
  [ -n "$LINE" ] || { echo "agent did not download the package:"; tail -20 "$H/logs/agent.log"; exit 1; }
  AGENT_S+=("$(echo "$LINE" | grep -o 'download_ms=[0-9]*' | cut -d= -f2)")
  VERIFY_S+=("$(echo "$LINE" | grep -o 'verify_ms=[0-9]*' | cut -d= -f2)")
done
python3 - "$BYTES" "${AGENT_S[*]}" "${CURL_S[*]}" "${VERIFY_S[*]}" <<'PY'
import statistics, sys
b = int(sys.argv[1])
agent = sorted(int(x) / 1000 for x in sys.argv[2].split())
curl = sorted(float(x) for x in sys.argv[3].split())
mb = lambda s: b / s / 1e6
print(f"package: {b/1e6:.1f} MB, {len(agent)} runs each, taking turns")
for what, a, c in (("best", agent[0], curl[0]), ("median", statistics.median(agent), statistics.median(curl))):
    print(f"{what:>6}: molt agent (fsync) {a:.3f} s {mb(a):5.0f} MB/s | curl -o {c:.3f} s {mb(c):5.0f} MB/s"
          f" | ratio {mb(a)/mb(c):.2f}x (target >= 0.9x)")
print(f"verify (signature check over every byte, after the download): median {statistics.median(int(x) for x in sys.argv[4].split())} ms")
PY
