//! Rewind's cross-process integration tests: the real `rewind-coordinator` and
//! `rewind-proxy` binaries against real MariaDB, one database per test. This library
//! is empty on purpose; the harness is `rewind-test-support`.
//!
//! # Layout
//! - `tests/t10_shapes.rs` … `tests/t90_cluster_bank.rs`: one test binary per area,
//!   numbered (shapes of statements, schema changes, the bank, dirty writes, crashes,
//!   types, isolation, housekeeping, the console, a coordinator cluster).
//! - `console/`: the headless-Chromium driver of `t80_console`.
//! - `examples/at_bench.rs`: the load generator `bench/at` runs.
