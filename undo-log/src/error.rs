//! The crate's one error type.
//!
//! A dirty write is deliberately *not* here: it is an expected outcome of the rollback check
//! (see [`crate::check::CheckOutcome`]) that the proxy must report to an operator, not a
//! failure of this library.

use crate::value::TypeKind;

/// Everything that can go wrong while building images, encoding records or generating SQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the server sent does not parse as the column's type says it should. `got`
    /// describes the value's shape only, never its content.
    #[error("column `{column}` ({kind:?}): cannot decode {got}")]
    Decode {
        column: String,
        kind: TypeKind,
        got: String,
    },

    /// MariaDB prints FLOAT with 6 significant digits in the text protocol, so such a value
    /// cannot be restored exactly. Images must be read with the binary protocol.
    #[error(
        "column `{column}`: FLOAT read with the text protocol is rounded by the server; \
         read row images with the binary protocol (prepared statements)"
    )]
    InexactFloatText { column: String },

    /// A column type AT mode does not know how to store losslessly.
    #[error("column `{column}`: unsupported column type {ty}")]
    UnsupportedType { column: String, ty: String },

    /// information_schema has no such table.
    #[error("table `{schema}`.`{table}` does not exist")]
    UnknownTable { schema: String, table: String },

    /// Without a primary key a row cannot be found again for the undo.
    #[error("table `{schema}`.`{table}` has no primary key; AT mode cannot undo writes to it")]
    NoPrimaryKey { schema: String, table: String },

    /// A row (or image) lacks a column the operation needs, usually a primary-key column.
    #[error("row has no column `{0}`")]
    MissingColumn(String),

    /// A primary-key value is NULL, which a primary key cannot hold: the image is corrupt.
    #[error("primary-key column `{0}` is NULL")]
    NullPrimaryKey(String),

    /// The undo record bytes are malformed.
    #[error("undo record is malformed: {0}")]
    Codec(String),

    /// The record was written by a newer (or unknown) format version.
    #[error("undo record format version {0} is not supported")]
    UnsupportedVersion(u8),

    /// A lock key string does not follow the canonical encoding.
    #[error("malformed lock key {0:?}")]
    BadLockKey(String),

    /// SQL whose effects AT mode cannot undo safely; the message names the construct.
    #[error("not supported in a global transaction: {0}")]
    Refused(String),

    /// The statement text does not parse.
    #[error("cannot parse statement: {0}")]
    Parse(String),

    /// The backend failed while loading table metadata.
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
