//! AT mode: everything the proxy does for a statement bound to a global transaction, from
//! its SQL to the undo record committed with it.
//!
//! - [`sql`]: from a DML statement's text to its plan (table, images to read, the write
//!   narrowed to the locked keys); refuses shapes AT cannot undo.
//! - [`begun`]: the XIDs this proxy knows to be running (the XID check without a call).
//! - [`branch`]: the branch a local transaction is bound to (its undo items, savepoints).
//! - [`statement`]: the context a statement runs in ([`StatementRun`]), the definition
//!   check against stale table metadata, and dispatch by statement kind to [`update`],
//!   [`delete`] and [`insert`].
//! - [`locks`]: waiting for global locks (locking reads, polling the coordinator).
//! - [`isolated`]: write isolation's slow path for writes without an XID.
//! - [`definitions`] and [`sentinel`]: confirming table definitions without a query per
//!   write (metadata locks held by other transactions, or by a sentinel per busy table).
//! - [`commit`]: the branch's commit protocol (register → undo record → COMMIT).
//! - [`refusals`]: what AT refuses, in one place.
//! - [`session`]: the AT path of a client session: binding a local transaction to a
//!   global one, what runs inside it and what is refused, write isolation's routing.

pub(crate) mod begun;
pub(crate) mod branch;
pub(crate) mod commit;
pub(crate) mod definitions;
pub(crate) mod delete;
pub(crate) mod housekeeping;
pub(crate) mod inline;
pub(crate) mod insert;
pub(crate) mod isolated;
pub(crate) mod isolation;
pub(crate) mod locks;
pub(crate) mod refusals;
pub(crate) mod rollback;
pub(crate) mod sentinel;
pub(crate) mod session;
pub mod sql;
pub(crate) mod statement;
pub(crate) mod undo_table;
pub(crate) mod update;

pub(crate) use branch::Branch;
pub(crate) use commit::{abort, commit};
pub(crate) use session::{Route, Stmt};
pub(crate) use statement::{Failure, Original, StmtCache};
