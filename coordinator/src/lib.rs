//! rewind-coordinator. Filled in by issue 3.
