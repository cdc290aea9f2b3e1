//! Dirty writes: a global transaction's row is changed directly on MariaDB (bypassing the
//! proxy), then the transaction is rolled back. The row keeps the direct value, the
//! transaction is `rollback_failed` with its locks held, and the conflict shows before,
//! after and current. Each operator action then does what it says, and a resolution that
//! would overwrite a newer change is refused.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;
use serde_json::Value as Json;

const DB: &str = "rwt_dirty";

async fn setup() {
    fresh_db(DB).await;
    let mut c = direct(DB).await;
    c.query_drop("CREATE TABLE item (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(20), changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))")
        .await
        .unwrap();
    c.query_drop("INSERT INTO item (id, qty, note) VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c'), (4, 40, 'd'), (5, 50, 'e'), (6, 60, 'f')")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

async fn qty(id: i64) -> Option<i64> {
    let mut c = direct(DB).await;
    let q: Option<i64> = c
        .exec_first("SELECT qty FROM item WHERE id = ?", (id,))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    q
}

async fn direct_write(sql: &str) {
    direct_exec(DB, sql).await
}

/// A global transaction that set `qty` of the rows `ids` to `qty + 1` through the proxy,
/// then someone else wrote `dirty` directly; its rollback must stall on a conflict.
async fn conflicted(
    coord: &Coordinator,
    proxy: &Proxy,
    ids: &str,
    dirty: &str,
) -> (String, Vec<Json>) {
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(DB).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE item SET qty = qty + 1 WHERE id IN ({ids})"
    ))
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    direct_write(dirty).await;
    assert_eq!(coord.rollback(&xid).await, "rollback_failed");
    let conflicts: Vec<Json> = coord
        .conflicts()
        .await
        .into_iter()
        .filter(|c| c["xid"] == xid.as_str() && c["state"] == "open")
        .collect();
    (xid, conflicts)
}

async fn lock_held_by(coord: &Coordinator, xid: &str) -> usize {
    coord
        .locks()
        .await
        .iter()
        .filter(|l| l["xid"] == xid)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_dirty_write_is_kept_and_each_resolution_does_what_it_says() {
    let dir = TempDir::new("dirty");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    setup().await;

    // restore_before: the row goes back to its state before the global transaction.
    let (xid, conflicts) =
        conflicted(&coord, &proxy, "1", "UPDATE item SET qty = 99 WHERE id = 1").await;
    assert_eq!(
        qty(1).await,
        Some(99),
        "the direct write is not overwritten"
    );
    assert_eq!(coord.status(&xid).await, "rollback_failed");
    assert_eq!(lock_held_by(&coord, &xid).await, 1, "locks stay held");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    assert_eq!(
        (
            c["before"]["qty"].as_i64(),
            c["after"]["qty"].as_i64(),
            c["current"]["qty"].as_i64()
        ),
        (Some(10), Some(11), Some(99)),
        "{c}"
    );
    assert_eq!(c["table"], format!("{DB}.item"));
    assert_eq!(c["pk"], serde_json::json!(["1"]));
    let (code, body) = coord
        .resolve(c["id"].as_u64().unwrap(), "restore_before")
        .await;
    assert_eq!(code, 200, "{body}");
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    assert_eq!(qty(1).await, Some(10));
    assert_eq!(lock_held_by(&coord, &xid).await, 0);
    assert_eq!(undo_rows(Some(&xid)).await, (0, 0));

    // keep_current: the direct write stays, the rollback finishes.
    let (xid, conflicts) = conflicted(
        &coord,
        &proxy,
        "2",
        "UPDATE item SET note = 'someone' WHERE id = 2",
    )
    .await;
    let (code, body) = coord
        .resolve(conflicts[0]["id"].as_u64().unwrap(), "keep_current")
        .await;
    assert_eq!(code, 200, "{body}");
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    assert_eq!(
        qty(2).await,
        Some(21),
        "kept as it was, the transaction's value included"
    );

    // retry: an operator repaired the row by hand (back to the transaction's after image),
    // then the retried rollback restores it.
    let (xid, conflicts) =
        conflicted(&coord, &proxy, "3", "UPDATE item SET qty = 0 WHERE id = 3").await;
    direct_write("UPDATE item SET qty = 31 WHERE id = 3").await;
    let (code, body) = coord
        .resolve(conflicts[0]["id"].as_u64().unwrap(), "retry")
        .await;
    assert_eq!(code, 200, "{body}");
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    assert_eq!(qty(3).await, Some(30));

    // A resolution that would overwrite a newer change is refused and shown.
    let (xid, conflicts) =
        conflicted(&coord, &proxy, "4", "UPDATE item SET qty = 77 WHERE id = 4").await;
    let id = conflicts[0]["id"].as_u64().unwrap();
    direct_write("UPDATE item SET qty = 78 WHERE id = 4").await;
    let (code, body) = coord.resolve(id, "restore_before").await;
    assert_eq!(code, 200, "{body}");
    let now = coord
        .conflicts()
        .await
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap();
    assert_eq!(now["state"], "open", "{now}");
    assert!(
        now["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("changed again"),
        "{now}"
    );
    assert_eq!(
        now["current"]["qty"].as_i64(),
        Some(78),
        "the new current row is shown"
    );
    assert_eq!(qty(4).await, Some(78), "nothing overwritten");
    assert_eq!(coord.status(&xid).await, "rollback_failed");
    let (code, _) = coord.resolve(id, "restore_before").await;
    assert_eq!(code, 200);
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    assert_eq!(qty(4).await, Some(40));

    // Two rows in one statement, only one of them written by someone else: the conflict
    // names that row only; once it is settled, the retried rollback restores the other.
    let (xid, conflicts) =
        conflicted(&coord, &proxy, "5, 6", "DELETE FROM item WHERE id = 6").await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["pk"], serde_json::json!(["6"]));
    assert!(conflicts[0]["current"].is_null(), "the row is gone");
    assert_eq!(
        qty(5).await,
        Some(51),
        "nothing undone while a conflict is open"
    );
    let (code, _) = coord
        .resolve(conflicts[0]["id"].as_u64().unwrap(), "restore_before")
        .await;
    assert_eq!(code, 200);
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    assert_eq!((qty(5).await, qty(6).await), (Some(50), Some(60)));
    assert!(coord.locks().await.is_empty());
}
