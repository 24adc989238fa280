#!/usr/bin/env bash
# Benchmark: offline verification of a ~200 MB, ~2,000-file bundle.
#
#   molt bundle verify      (whole-file SHA-256 stream + Ed25519, no inflating;
#                            format 2 also checks the manifest signatures)
#   openssl dgst -sha256    (the physical limit: one SHA-256 pass, SHA-NI)
#   jarsigner -verify       (the seeds' mechanism, on an equivalent JAR-signed zip)
#
# Prints the three times (best of $RUNS, warm page cache), the ratios and molt's
# peak RSS. Targets: molt <= 1.25x openssl, >= 5x faster than jarsigner, RSS < 64 MB.
# Not a test: run by hand (`tests/bench/bundle_verify.sh`); MOLT=/path/to/molt to
# skip the release build.
set -euo pipefail

RUNS=${RUNS:-3}
FILES=${FILES:-2000}
TOTAL_MB=${TOTAL_MB:-200}
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)

if [[ -z "${MOLT:-}" ]]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/targets/bundle-release}
  echo "building molt --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..." >&2
  (cd "$ROOT_DIR" && cargo build --release -p molt --quiet)
  MOLT="$CARGO_TARGET_DIR/release/molt"
fi
for tool in openssl jarsigner keytool jar /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/molt-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# --- inputs -----------------------------------------------------------------
# 20 directories; 15 hold random bytes (stored), 5 base64 text (deflated),
# like a mix of jars/binaries and text in a real package.
echo "creating ${TOTAL_MB} MB in ${FILES} files under $WORK ..." >&2
DIRS=20
PER_DIR=$((FILES / DIRS))
FILE_BYTES=$((TOTAL_MB * 1024 * 1024 / FILES))
mkdir -p tree
for d in $(seq -w 1 $DIRS); do
  mkdir -p "tree/lib$d"
  if (( 10#$d % 4 )); then
    head -c $((PER_DIR * FILE_BYTES)) /dev/urandom | split -b "$FILE_BYTES" -a 3 -d - "tree/lib$d/part-"
  else
    # base64 of random bytes: compressible text (~75%), exactly PER_DIR files.
    { head -c $((PER_DIR * FILE_BYTES)) /dev/urandom | base64 -w 76 | head -c $((PER_DIR * FILE_BYTES)) \
        | split -b "$FILE_BYTES" -a 3 -d - "tree/lib$d/text-"; } || true
  fi
done
nfiles=$(find tree -type f | wc -l)

BS="molt-core.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip"
"$MOLT" keygen --out root-TEST-ONLY.pk8 >/dev/null
"$MOLT" keygen --out packages-TEST-ONLY.pk8 >/dev/null
"$MOLT" root init --out root.json --root-key root-TEST-ONLY.pk8 \
  --checks-key root-TEST-ONLY.pk8 --packages-key packages-TEST-ONLY.pk8 >/dev/null
"$MOLT" --log-level warn bundle pack tree --buildstamp "$BS" --sequence 1 --out bundle.zip \
  --key packages-TEST-ONLY.pk8 >/dev/null

# `molt bundle pack` writes format 2 (manifest signatures too); say which was measured.
"$MOLT" bundle inspect --json bundle.zip >inspect.json
bundle_format=$(grep -m1 '"format"' inspect.json | tr -dc 0-9)

# The same tree, JAR-signed (RSA 2048 / SHA-256, jarsigner's defaults).
(cd tree && jar --create --file ../tree.jar .)
keytool -genkeypair -keystore ks.p12 -storetype PKCS12 -storepass benchpass \
  -alias bench -keyalg RSA -keysize 2048 -dname "CN=TEST-ONLY bench" -validity 30 >/dev/null 2>&1
jarsigner -keystore ks.p12 -storepass benchpass tree.jar bench >/dev/null 2>&1

bundle_bytes=$(stat -c %s bundle.zip)
jar_bytes=$(stat -c %s tree.jar)

# --- timing -----------------------------------------------------------------
cat bundle.zip tree.jar >/dev/null  # warm the page cache

best() { # best wall time (s) of $RUNS runs of "$@"
  local best=999999 t0 t1 dt
  for _ in $(seq "$RUNS"); do
    t0=$EPOCHREALTIME
    "$@" >/dev/null 2>&1 || { echo "command failed: $*" >&2; exit 1; }
    t1=$EPOCHREALTIME
    dt=$(echo "$t1 - $t0" | bc -l)
    if (( $(echo "$dt < $best" | bc -l) )); then best=$dt; fi
  done
  printf '%.3f' "$best"
}

t_molt=$(best "$MOLT" --log-level warn bundle verify --root root.json bundle.zip)
t_ossl=$(best openssl dgst -sha256 bundle.zip)
t_jar=$(best jarsigner -verify tree.jar)

# Peak RSS of one molt verification (and its exit status must be 0).
/usr/bin/time -v "$MOLT" --log-level warn bundle verify --root root.json bundle.zip >/dev/null 2>time.txt
rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' time.txt)
rss_mb=$(echo "scale=1; $rss_kb / 1024" | bc -l)

# jarsigner really verified (not just exited 0): it prints "jar verified."
jarsigner -verify tree.jar | grep -q "jar verified" || { echo "jarsigner did not verify" >&2; exit 1; }

r_ossl=$(echo "scale=2; $t_molt / $t_ossl" | bc -l)
r_jar=$(echo "scale=1; $t_jar / $t_molt" | bc -l)
ok() { if (( $(echo "$1" | bc -l) )); then echo "ok"; else echo "MISSED"; fi; }

echo
echo "bundle: format $bundle_format, $nfiles files, $((bundle_bytes / 1048576)) MiB (molt), $((jar_bytes / 1048576)) MiB (jar); best of $RUNS, warm cache"
printf '%-34s %9s  %s\n' "tool" "seconds" "ratio"
printf '%-34s %9s  %s\n' "molt bundle verify" "$t_molt" "1.00"
printf '%-34s %9s  %s\n' "openssl dgst -sha256 (same file)" "$t_ossl" "molt/openssl = ${r_ossl}x  (target <= 1.25x: $(ok "$r_ossl <= 1.25"))"
printf '%-34s %9s  %s\n' "jarsigner -verify (same tree)" "$t_jar" "jarsigner/molt = ${r_jar}x  (target >= 5x: $(ok "$r_jar >= 5"))"
echo "molt peak RSS: ${rss_mb} MB (target < 64 MB: $(ok "$rss_mb < 64"))"
