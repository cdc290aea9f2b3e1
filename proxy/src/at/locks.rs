//! Global-lock waits: locking reads in a global transaction, and the polling of the
//! coordinator until rows are free.

use std::time::Duration;

use crate::at::sql::LockingSelect;
use mysql_async::Value;
use rewind_protocol::v1;

use crate::error::ProxyError;
use crate::Shared;

use super::statement::*;

impl StatementRun<'_> {
    /// A `SELECT … FOR UPDATE` in a global transaction: lock the rows locally first (so no
    /// other global transaction can take them afterwards), then wait until no other global
    /// transaction holds a global lock on any of them. The caller runs the statement itself
    /// afterwards, which re-reads the rows now locked.
    pub async fn wait_for_locked_rows(
        &mut self,
        select: &LockingSelect,
        params: Vec<Value>,
        xid: Option<&str>,
    ) -> Result<(), ProxyError> {
        let mut metas = Vec::with_capacity(select.tables.len());
        for (table, _) in &select.tables {
            metas.push(self.meta(table).await?);
        }
        let tables: Vec<&rewind_undo_log::TableMeta> = metas.iter().map(|m| &**m).collect();
        let found = self
            .rows_of(&tables, &select.keys_sql(&metas), params, self.types)
            .await?;
        let keys = select
            .keys(&metas, &found)
            .map_err(|e| refused(e, "SELECT … FOR UPDATE"))?;
        let keys: Vec<v1::LockKey> = keys
            .into_iter()
            .map(|k| proto_key(self.shared, k))
            .collect();
        wait_until_unlocked(self.shared, &keys, xid).await
    }
}

/// Polls the coordinator until none of `keys` is held by another global transaction:
/// `lock_retry_count` tries `lock_retry_interval_ms` apart, failing at once when a holder
/// is rolling back (its undo may need the local row locks this session holds).
pub async fn wait_until_unlocked(
    shared: &Shared,
    keys: &[v1::LockKey],
    xid: Option<&str>,
) -> Result<(), ProxyError> {
    if keys.is_empty() {
        return Ok(());
    }
    let interval = Duration::from_millis(shared.config.lock_retry_interval_ms);
    for attempt in 0..=shared.config.lock_retry_count {
        let held = shared
            .coordinator
            .query_locks(keys, xid)
            .await
            .map_err(|e| ProxyError::CoordinatorUnavailable(e.to_string()))?;
        let Some(first) = held.first() else {
            return Ok(());
        };
        let describe = || {
            format!(
                "global lock on {} held by global transaction {}",
                describe_key(first.key.as_ref()),
                first.xid
            )
        };
        if held.iter().any(|h| h.rolling_back) {
            return Err(ProxyError::GlobalLockTimeout(format!(
                "{} which is rolling back and may need rows this session has locked",
                describe()
            )));
        }
        if attempt == shared.config.lock_retry_count {
            return Err(ProxyError::GlobalLockTimeout(describe()));
        }
        tokio::time::sleep(interval).await;
    }
    unreachable!("the loop returns on its last attempt")
}

/// A lock key of this proxy's resource, on the wire.
pub fn proto_key(shared: &Shared, k: rewind_undo_log::LockKey) -> v1::LockKey {
    v1::LockKey {
        resource_id: shared.resource_id.clone(),
        table: k.schema_table,
        pk: k.pk,
    }
}

/// `schema.table (pk1, pk2)` for messages: key values are shown only as their byte
/// length, never their content (error messages reach logs).
pub(super) fn describe_key(k: Option<&v1::LockKey>) -> String {
    match k {
        Some(k) => {
            let table = rewind_undo_log::lock_key::unescape_table(&k.table);
            format!("a row of {table}")
        }
        None => "a row".into(),
    }
}
