#!/usr/bin/env bash
# The one command that runs every test: builds the `molt` binary the end-to-end
# tests drive, then runs the whole workspace's tests (units next to the code,
# end-to-end tests in tests/tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
# --all-targets: the same feature set as `cargo test --workspace`, so nothing
# is compiled twice; it also builds target/debug/molt for the e2e tests.
cargo build --workspace --all-targets
cargo test --workspace "$@"
