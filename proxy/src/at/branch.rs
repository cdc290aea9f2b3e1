//! The branch a local transaction is bound to: its global transaction and the undo items
//! its statements recorded so far, with savepoints.

use rewind_undo_log::UndoItem;

/// The global transaction a local transaction is bound to, and what it must undo.
#[derive(Debug)]
pub struct Branch {
    pub xid: String,
    /// Undo items in statement order.
    pub items: Vec<UndoItem>,
    /// `SAVEPOINT` names (lower-cased: MySQL compares them case-insensitively) and how
    /// many items existed when each was set, so `ROLLBACK TO` drops the later items.
    savepoints: Vec<(String, usize)>,
    /// The proxy opened the local transaction for an autocommit statement and commits it.
    pub implicit: bool,
    /// The `at.branch` span (traces on, from the first DML statement on); it ends with
    /// the branch.
    pub trace: Option<rewind_protocol::trace::Context>,
    /// Table definitions this local transaction confirmed or still has to (see
    /// `at::definitions`).
    pub checks: super::definitions::Checks,
}

impl Branch {
    pub fn new(xid: String, implicit: bool) -> Self {
        Branch {
            xid,
            items: Vec::new(),
            savepoints: Vec::new(),
            implicit,
            trace: None,
            checks: Default::default(),
        }
    }

    /// `SAVEPOINT name`: a name set again moves to the present.
    pub fn savepoint(&mut self, name: &str) {
        let name = name.to_lowercase();
        self.savepoints.retain(|(n, _)| *n != name);
        self.savepoints.push((name, self.items.len()));
    }

    /// `ROLLBACK TO name` succeeded: the statements after it are undone locally, so their
    /// items go (the savepoint itself stays, later ones go, as in MySQL).
    pub fn rollback_to(&mut self, name: &str) {
        // MariaDB releases metadata locks taken after the savepoint.
        self.checks.lost();
        let name = name.to_lowercase();
        if let Some(i) = self.savepoints.iter().position(|(n, _)| *n == name) {
            let keep = self.savepoints[i].1;
            self.items.truncate(keep);
            self.savepoints.truncate(i + 1);
        }
    }

    /// `RELEASE SAVEPOINT name` succeeded: it and later savepoints go.
    pub fn release(&mut self, name: &str) {
        let name = name.to_lowercase();
        if let Some(i) = self.savepoints.iter().position(|(n, _)| *n == name) {
            self.savepoints.truncate(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_undo_log::{RowImage, SqlKind, TableSummary};

    #[test]
    fn savepoints_drop_later_items() {
        let item = |n: &str| UndoItem {
            kind: SqlKind::Insert,
            table: TableSummary {
                name: rewind_undo_log::TableName::new("s", n),
                primary_key: vec!["id".into()],
                on_update_now: vec![],
                generated: vec![],
            },
            set_columns: vec![],
            before: RowImage::empty(rewind_undo_log::TableName::new("s", n)),
            after: RowImage::empty(rewind_undo_log::TableName::new("s", n)),
        };
        let mut b = Branch::new("rw-1".into(), false);
        b.items.push(item("a"));
        b.savepoint("S1");
        b.items.push(item("b"));
        b.savepoint("s2");
        b.items.push(item("c"));
        b.rollback_to("s1");
        assert_eq!(b.items.len(), 1);
        b.items.push(item("d"));
        b.rollback_to("s2"); // released by the rollback to s1: nothing happens
        assert_eq!(b.items.len(), 2);
        b.release("s1");
        b.rollback_to("s1");
        assert_eq!(b.items.len(), 2);
    }
}
