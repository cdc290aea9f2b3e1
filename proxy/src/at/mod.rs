//! AT mode: everything the proxy does for a statement bound to a global transaction, from
//! its SQL to the undo record committed with it.
//!
//! - [`sql`]: from a DML statement's text to its plan (table, images to read, the write
//!   narrowed to the locked keys); refuses shapes AT cannot undo.
//! - [`branch`]: the branch a local transaction is bound to (its undo items, savepoints).
//! - [`statement`]: the context a statement runs in ([`StatementRun`]), the definition
//!   check against stale table metadata, and dispatch by statement kind to [`update`],
//!   [`delete`] and [`insert`].
//! - [`locks`]: waiting for global locks (locking reads, polling the coordinator).
//! - [`isolated`]: write isolation's slow path for writes without an XID.
//! - [`commit`]: the branch's commit protocol (register → undo record → COMMIT).
//! - [`refusals`]: what AT refuses, in one place.
//! - [`session`]: the AT path of a client session: binding a local transaction to a
//!   global one, what runs inside it and what is refused, write isolation's routing.

pub mod branch;
pub mod commit;
pub mod delete;
pub mod housekeeping;
pub mod insert;
pub mod isolated;
pub mod isolation;
pub mod locks;
pub mod refusals;
pub mod rollback;
pub mod session;
pub mod sql;
pub mod statement;
pub mod undo_table;
pub mod update;

pub use branch::Branch;
pub use commit::{abort, commit};
pub use session::{Route, Stmt};
pub use statement::{Failure, Original, StatementRun, StmtCache};
