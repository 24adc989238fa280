#!/usr/bin/env bash
# The one command that runs every test: builds the `molt` binary the end-to-end
# tests drive, then runs the whole workspace's tests (units next to the code,
# end-to-end tests in tests/tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p molt
cargo test --workspace "$@"
