#!/usr/bin/env bash
# Rebuild the guest checks (wasm32-wasip2) and pack + sign the precheck and
# selector bundles with the TEST-ONLY key.
#
#   signed-bundles/rebuild.sh [OUT_DIR]     (default: signed-bundles/ itself)
#
# With OUT_DIR other than signed-bundles/, the committed TEST-ONLY key and
# root.json are copied there first, so the rebuilt bundles verify against the
# same root. Then run the host tests against them:
#   MOLT_SIGNED_BUNDLES=OUT_DIR cargo test -p molt-sandbox
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$here}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$out" != "$here" ]; then
  cp "$here/TEST-ONLY-checks.pk8" "$here/root.json" "$out/"
fi
guest_target="${CARGO_TARGET_DIR_GUESTS:-${CARGO_TARGET_DIR:-$repo/guest-checks/target}-guests}"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "rebuild.sh: the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2)" >&2
  exit 2
fi
(cd "$repo/guest-checks" && CARGO_TARGET_DIR="$guest_target" cargo build --release --locked --target wasm32-wasip2)
wasm="$guest_target/wasm32-wasip2/release"
# Build the whole host workspace the way `cargo test --workspace` will (same
# feature unification), so CI compiles wasmtime and friends once, then pack.
(cd "$repo" && cargo build -q --workspace --all-targets)
"${CARGO_TARGET_DIR:-$repo/target}/debug/examples/pack_bundles" "$wasm" "$out"
# Test-only guests the sandbox tests run from raw wasm (never in a signed bundle).
cp "$wasm/buildstamp_vectors.wasm" "$out/test-guests/buildstamp_vectors.wasm"
ls -l "$out"
