#!/usr/bin/env bash
# The whole test suite: starts what the tests need, builds every binary once,
# then runs unit, protocol and integration tests against real MariaDB, RabbitMQ
# and NATS JetStream.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="rewind-proxy/failpoints rewind-coordinator/failpoints"
scripts/ensure-mariadb.sh
scripts/ensure-brokers.sh
scripts/ensure-tools.sh --browser
# Formatting and lints gate everything else.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked --features "$FEATURES" -- -D warnings
# One build of every binary and test target; the integration tests start the
# binaries from this same target directory. Failpoints are compiled into these test
# builds only (never into release binaries).
cargo build --workspace --all-targets --locked --features "$FEATURES"
cargo test --workspace --locked --features "$FEATURES" -- --test-threads="${REWIND_TEST_THREADS:-4}"
