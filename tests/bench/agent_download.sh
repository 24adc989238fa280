#!/usr/bin/env bash
# Benchmark: the agent's package download from `molt serve` on loopback against
# `curl` of the same URL, in one run. A 200 MB signed core package is served; the
# agent downloads it (a plain full download: delta_downloads = false; Range only to
# resume; written without fsync, as curl -o does: every use of the file checks its
# digest or signature first; its SHA-256 is the signature check that follows,
# `verify_ms`, not a second hash while streaming) and we read its own timing from
# the log (`download_ms`); curl writes the same URL to a file. Best and median of RUNS for both,
# taking turns, since one download on a 2-core machine swings by +-30%.
# Target: agent throughput >= 0.9x curl's.
#
#   bash tests/bench/agent_download.sh   (MOLT=path/to/molt to pick a binary; SIZE_MB=200; RUNS=7)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
bench_molt
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
SIZE_MB="${SIZE_MB:-200}"
RUNS="${RUNS:-7}"
V1=quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225
V2=quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130
T="$(mktemp -d)"; trap 'kill $SRV 2>/dev/null || true; rm -rf "$T"' EXIT
SRV=
bench_keys "$T"
mkdir -p "$T/pk" "$T/c1/bin" "$T/c2/bin" "$T/c2/lib" "$T/u/bin"
printf '#!/bin/sh\n' > "$T/c1/bin/molt"; chmod 755 "$T/c1/bin/molt"; cp "$T/c1/bin/molt" "$T/c2/bin/molt"; cp "$T/c1/bin/molt" "$T/u/bin/molt"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$T/c2/lib/payload.bin"
for spec in "c1 core $V1" "c2 core $V2" "u upgrade $V2"; do
  set -- $spec
  "$MOLT" bundle pack "$T/$1" --buildstamp "molt-$2.$3.universal.universal.zip" --sequence 1 --out "$T/pk/molt-$2.$3.universal.universal.zip" --key "$T/k.pk8" >/dev/null
done
# A fresh v1 install.
H="$T/home"
bench_install "$H" "$V1" "$T/c1" "$T/pk/molt-core.$V1.universal.universal.zip" "$T/root.json"
"$MOLT" serve --db "$T/cp.db" --packages "$T/pk" --listen 127.0.0.1:0 --admin-token bench-admin-token-0123 \
  --fleet-version "$V2" --bootstrap-agent bench:bench-agent-token-0123 > "$T/serve.out" 2> "$T/serve.err" & SRV=$!
for _ in $(seq 100); do grep -q http:// "$T/serve.out" 2>/dev/null && break; sleep 0.1; done
URL="$(grep -o 'http://[0-9.:]*' "$T/serve.out" | head -1)"
PKG="molt-core.$V2.universal.universal.zip"
BYTES=$(stat -c %s "$T/pk/$PKG")
bench_config "$H" "$URL" false
cp -a "$H" "$T/home.template"
# One curl first warms the page cache for both. Then curl and the agent take
# turns, so a slow patch of the machine falls on both alike.
curl -s -o /dev/null "$URL/packages/$PKG"
CURL_S=(); AGENT_S=(); VERIFY_S=()
for i in $(seq "$RUNS"); do
  rm -f "$T/curl.zip"
  CURL_S+=("$(curl -s -o "$T/curl.zip" -w '%{time_total}' "$URL/packages/$PKG")")
  rm -rf "$H"; cp -a "$T/home.template" "$H"
  LINE="$(bench_agent_once "$H" "$T/agent.err")"
  AGENT_S+=("$(bench_field "$LINE" download_ms)")
  VERIFY_S+=("$(bench_field "$LINE" verify_ms)")
done
python3 - "$BYTES" "${AGENT_S[*]}" "${CURL_S[*]}" "${VERIFY_S[*]}" <<'PY'
import statistics, sys
b = int(sys.argv[1])
agent = sorted(int(x) / 1000 for x in sys.argv[2].split())
curl = sorted(float(x) for x in sys.argv[3].split())
mb = lambda s: b / s / 1e6
print(f"package: {b/1e6:.1f} MB, {len(agent)} runs each, taking turns")
for what, a, c in (("best", agent[0], curl[0]), ("median", statistics.median(agent), statistics.median(curl))):
    print(f"{what:>6}: molt agent {a:.3f} s {mb(a):5.0f} MB/s | curl -o {c:.3f} s {mb(c):5.0f} MB/s"
          f" | ratio {mb(a)/mb(c):.2f}x (target >= 0.9x)")
print(f"verify (signature check over every byte, after the download): median {statistics.median(int(x) for x in sys.argv[4].split())} ms")
PY
