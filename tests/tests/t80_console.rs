//! The admin console in a real headless Chromium (Debian's `chromium`, driven by
//! `tests/console/console.mjs` with playwright-core): real dirty-write conflicts made
//! through the proxy plus direct writes; an operator logs in (a wrong secret refused),
//! finds each conflict, sees its three images, resolves one with each action and has a
//! resolution that would overwrite a newer change refused; then the database and the
//! audit log say the same. Screenshots land in `tests/artifacts/console/`.
//!
//! Needs `node`, `chromium` and `tests/console/node_modules` (scripts/test.sh installs
//! them); without them this test fails and says what is missing.

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;
use serde_json::{json, Value as Json};

const DB: &str = "rwt_console";

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

/// A global transaction adds 1 to row `id` through the proxy, then `dirty` sets its qty
/// directly; the rollback stalls on one conflict, returned.
async fn conflicted(coord: &Coordinator, proxy: &Proxy, id: i64, dirty: i64) -> (String, Json) {
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(DB).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE item SET qty = qty + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    direct_write(&format!("UPDATE item SET qty = {dirty} WHERE id = {id}")).await;
    assert_eq!(coord.rollback(&xid).await, "rollback_failed");
    let conflict = coord
        .conflicts()
        .await
        .into_iter()
        .find(|c| c["xid"] == xid.as_str() && c["state"] == "open")
        .expect("an open conflict");
    (xid, conflict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t80_operator_resolves_conflicts_in_the_console() {
    let driver_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let browser = chromium();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/console");
    let _ = std::fs::remove_dir_all(&artifacts);

    let dir = TempDir::new("console");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    fresh_db(DB).await;
    let mut c = direct(DB).await;
    c.query_drop(
        "CREATE TABLE item (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(20) NOT NULL)",
    )
    .await
    .unwrap();
    c.query_drop("INSERT INTO item VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c'), (4, 40, 'd')")
        .await
        .unwrap();
    c.disconnect().await.unwrap();

    // One conflict per action, each row: before 10·k, after 10·k + 1, dirty 90 + k.
    let (x1, c1) = conflicted(&coord, &proxy, 1, 91).await;
    let (x2, c2) = conflicted(&coord, &proxy, 2, 92).await;
    let (x3, c3) = conflicted(&coord, &proxy, 3, 93).await;
    let (x4, c4) = conflicted(&coord, &proxy, 4, 94).await;
    // Retry: the operator repaired row 3 by hand back to the transaction's after image.
    direct_write("UPDATE item SET qty = 31 WHERE id = 3").await;
    // Stale: row 4 changed again after the conflict was recorded; restoring would
    // overwrite that newer change, so it must be refused.
    direct_write("UPDATE item SET qty = 95 WHERE id = 4").await;

    let entry = |c: &Json, xid: &str, action: &str, k: i64, expect: &str| {
        json!({
            "id": c["id"], "xid": xid, "resource_id": c["resource_id"], "action": action,
            "column": "qty", "before": (10 * k).to_string(), "after": (10 * k + 1).to_string(),
            "current": (90 + k).to_string(), "expect": expect,
        })
    };
    let plan = json!({
        "url": format!("http://{}/", coord.http),
        "secret": coord.token(),
        "chromium": browser,
        "artifacts": artifacts,
        "conflicts": {
            "restore": entry(&c1, &x1, "restore_before", 1, "resolved"),
            "keep": entry(&c2, &x2, "keep_current", 2, "resolved"),
            "retry": entry(&c3, &x3, "retry", 3, "resolved"),
            "stale": entry(&c4, &x4, "restore_before", 4, "refused"),
        },
    });

    run_console_driver(&driver_dir, "console.mjs", &plan).await;
    for name in ["02-transactions", "03-conflicts", "06-audit", "05-refused"] {
        let png = artifacts.join(format!("{name}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {} saved", png.display());
    }

    // The database says what the operator chose.
    for (xid, status) in [
        (&x1, "rolled_back"),
        (&x2, "rolled_back"),
        (&x3, "rolled_back"),
    ] {
        coord
            .wait_status(xid, status, Duration::from_secs(10))
            .await;
    }
    assert_eq!(
        qty(1).await,
        Some(10),
        "restore_before: the before image is back"
    );
    assert_eq!(
        qty(2).await,
        Some(92),
        "keep_current: the other writer's value stays"
    );
    assert_eq!(qty(3).await, Some(30), "retry after repair: rolled back");
    assert_eq!(
        qty(4).await,
        Some(95),
        "refused: the newer change is not overwritten"
    );
    assert_eq!(coord.status(&x4).await, "rollback_failed");
    let stale = coord
        .conflicts()
        .await
        .into_iter()
        .find(|c| c["id"] == c4["id"])
        .unwrap();
    assert_eq!(stale["state"], "open");
    assert_eq!(stale["current"]["qty"].as_i64(), Some(95), "{stale}");
    assert!(
        coord.locks().await.iter().all(|l| l["xid"] == x4.as_str()),
        "only the unresolved transaction holds locks"
    );

    // The audit API has every action with its result, newest first.
    let audit = coord.audit().await;
    let find = |target_id: &Json, action: &str| {
        audit
            .iter()
            .find(|a| {
                a["action"] == action
                    && a["who"] == "admin"
                    && a["target"]
                        .as_str()
                        .is_some_and(|t| t.starts_with(&format!("conflict {target_id} ")))
            })
            .unwrap_or_else(|| panic!("audit entry {action} for {target_id}: {audit:?}"))
            .clone()
    };
    assert!(find(&c1["id"], "resolve restore_before")["result"]
        .as_str()
        .unwrap()
        .starts_with("ok"));
    assert!(find(&c2["id"], "resolve keep_current")["result"]
        .as_str()
        .unwrap()
        .starts_with("ok"));
    assert!(find(&c3["id"], "resolve retry")["result"]
        .as_str()
        .unwrap()
        .starts_with("ok"));
    let refused = find(&c4["id"], "resolve restore_before");
    assert!(
        refused["result"].as_str().unwrap().starts_with("refused"),
        "{refused}"
    );
    let actions: Vec<&str> = audit.iter().filter_map(|a| a["action"].as_str()).collect();
    assert!(
        actions.contains(&"login") && actions.contains(&"logout"),
        "{actions:?}"
    );
}
