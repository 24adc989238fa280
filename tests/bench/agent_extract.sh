#!/usr/bin/env bash
# Benchmark: verify + extract of a signed package (the agent's Extract stage path,
# `molt bundle extract`: signatures, manifest, every entry's size/CRC/SHA-256 while
# streaming) against `unzip -qq` of the same file (which only extracts).
# Target: faster than unzip.
#
#   bash tests/bench/agent_extract.sh             (MOLT=path/to/molt; SIZE_MB=200)
set -euo pipefail
cd "$(dirname "$0")/../.."
MOLT="${MOLT:-${CARGO_TARGET_DIR:-target}/release/molt}"
[ -x "$MOLT" ] || { echo "build it first: cargo build --release -p molt (or set MOLT=)" >&2; exit 2; }
command -v unzip >/dev/null || { echo "unzip is required" >&2; exit 2; }
SIZE_MB="${SIZE_MB:-200}"
V=quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
"$MOLT" keygen --out "$T/k.pk8" >/dev/null
"$MOLT" root init --out "$T/root.json" --root-key "$T/k.pk8" --checks-key "$T/k.pk8" --packages-key "$T/k.pk8" >/dev/null
mkdir -p "$T/src/lib" "$T/src/bin"
# A realistic mix: compressible text/lib files and some incompressible data.
for i in $(seq 1 400); do head -c 200000 /dev/urandom | base64 > "$T/src/lib/f$i.txt"; done
head -c "$(( (SIZE_MB - 100) * 1024 * 1024 ))" /dev/urandom > "$T/src/bin/blob" 2>/dev/null || true
P="$T/molt-core.$V.universal.universal.zip"
"$MOLT" bundle pack "$T/src" --buildstamp "molt-core.$V.universal.universal.zip" --sequence 1 --out "$P" --key "$T/k.pk8" >/dev/null
cat "$P" > /dev/null   # page cache warm for both
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
M=$(t "$MOLT" bundle extract "$P" "$T/m" --root "$T/root.json")
U=$(t unzip -qq "$P" -d "$T/u")
python3 - "$(stat -c %s "$P")" "$M" "$U" <<'PY'
import sys
b, m, u = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"package: {b/1e6:.1f} MB")
print(f"molt verify + extract: {m:.3f} s")
print(f"unzip -qq (no verify): {u:.3f} s")
print(f"ratio unzip/molt: {u/m:.2f}x (target > 1.0x: molt faster)")
PY
