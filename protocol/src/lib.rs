//! Rewind's wire contract between proxies and the coordinator.
//!
//! Filled in by the coordinator work (issue 3).
