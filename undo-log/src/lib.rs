//! Row images, the undo record codec, undo SQL generation and the dirty-write check for
//! Rewind's AT mode.
//!
//! The proxy drives this crate; it does no I/O of its own except loading table metadata.
//! In phase one the proxy analyzes a DML statement (its `at::sql`), reads the before image
//! with the SELECT it derives, runs the write restricted to the locked keys, reads the after image,
//! and stores the resulting [`UndoRecord`] (and registers its [`LockKey`]s) in the same
//! local transaction. In phase two (rollback) it decodes the record, reads the current
//! rows with the `SELECT … FOR UPDATE` from [`undo_sql`], asks [`check`](fn@check) whether the rows
//! are still as the branch left them, and only then runs the undo statements.
//!
//! Images must be read with the binary protocol (prepared statements) on a session set up
//! with [`undo_sql::UNDO_SESSION_SETUP`] (UTC time zone); [`value`] says why.
//!
//! Tests: `cargo test -p rewind-undo-log` (unit tests); the proxy's `tests/images.rs`
//! drives these pieces against MariaDB.
//!
//! Everything here exists to close the data-loss holes listed in `AT_NOTES.md`: values are
//! stored losslessly with their MySQL type, comparisons are type-aware, on-update timestamp
//! columns do not fake dirty writes, and lock keys are escaped and unbounded.
//!
//! # Layout
//! - [`value`]: one column value, kept exactly ([`TypedValue`]), decoded from either
//!   protocol and turned back into a statement parameter.
//! - [`image`]: table metadata from information_schema ([`TableMeta`], [`MetaCache`]) and
//!   rows of values ([`Row`], [`RowImage`]).
//! - [`record`]: undo items (kind, table summary, before and after image) and the versioned,
//!   compressed byte format of a branch's [`UndoRecord`].
//! - [`undo_sql`]: the parameterized SQL that reads the current rows and undoes an item.
//! - [`check`](mod@check): the dirty-write check that decides between restore, skip and conflict.
//! - [`lock_key`]: global lock keys with a canonical, unambiguous string encoding.
//! - [`error`]: the crate's error type.

pub mod check;
pub mod error;
pub mod image;
pub mod lock_key;
pub mod record;
pub mod undo_sql;
pub mod value;

pub use check::{check, CheckOutcome, DirtyWrite, RowConflict};
pub use error::{Error, Result};
pub use image::{ColumnMeta, MetaCache, Row, RowImage, TableMeta, TableName};
pub use lock_key::LockKey;
pub use record::{SqlKind, TableSummary, UndoItem, UndoRecord};
pub use undo_sql::Statement;
pub use value::{ColumnType, TypeKind, TypedValue, Value};
