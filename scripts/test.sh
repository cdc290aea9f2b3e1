#!/usr/bin/env bash
# The whole test suite: starts what the tests need, builds every binary once,
# then runs unit, protocol and integration tests against real MariaDB.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-mariadb.sh
scripts/ensure-tools.sh --browser
# One build of every binary and test target; the integration tests start the
# binaries from this same target directory.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads="${REWIND_TEST_THREADS:-4}"
