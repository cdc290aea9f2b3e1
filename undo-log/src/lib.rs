//! Row images, the undo record codec, undo SQL generation and the dirty-write check.
//!
//! Filled in by the AT-mode work (issue 4).
