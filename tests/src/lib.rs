//! Shared helpers for Rewind's integration tests.
