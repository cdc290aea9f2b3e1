//! What the console shows of this backend's outbox and barrier, sent to the coordinator on
//! the Attach stream every `report_interval_ms` (together with the XA lock waits, read by
//! [`crate::xa::lock_waits`]), and the operator's redrive of a DEAD message, which arrives
//! on the same stream.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Row};
use rewind_protocol::v1::{self, outbox_redrive_result, proxy_message};
use tokio::sync::mpsc;

use crate::Shared;

/// At most this many DEAD messages are listed in a report.
const DEAD_LISTED: u64 = 100;

/// Reads the tables and counters into a report.
pub(crate) async fn read(
    shared: &Shared,
    pool: &Pool,
    proxy_id: &str,
) -> Result<v1::OutboxReport, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let counts: Vec<Row> = conn.query(shared.outbox_table.counts()).await?;
    let o = &shared.outbox;
    let mut report = v1::OutboxReport {
        resource_id: shared.resource_id.clone(),
        proxy_id: proxy_id.to_string(),
        broker: broker_for_display(&shared.config.outbox.broker),
        published_total: o.published.load(Ordering::Relaxed),
        failed_total: o.failed.load(Ordering::Relaxed),
        barrier_duplicates: o.barrier_duplicates.load(Ordering::Relaxed),
        last_error: o.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        ..Default::default()
    };
    for r in &counts {
        let status: Option<String> = r.get_opt(0).and_then(Result::ok);
        let n: u64 = r.get_opt(1).and_then(Result::ok).unwrap_or(0);
        let held: u64 = r
            .get_opt::<Option<u64>, _>(2)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(0);
        let age_us: i64 = r
            .get_opt::<Option<i64>, _>(3)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(0);
        match status.as_deref() {
            Some("NEW") => {
                report.new_count = n;
                report.held_count = held;
                report.oldest_new_age_ms = (age_us.max(0) / 1000) as u64;
            }
            Some("DEAD") => report.dead_count = n,
            _ => {}
        }
    }
    if report.dead_count > 0 {
        let dead: Vec<Row> = conn
            .exec(shared.outbox_table.dead(), (DEAD_LISTED,))
            .await?;
        for mut r in dead {
            report.dead.push(v1::DeadMessage {
                message_id: r.take_opt(0).and_then(Result::ok).unwrap_or_default(),
                topic: r.take_opt(1).and_then(Result::ok).unwrap_or_default(),
                msg_key: r.take_opt(2).and_then(Result::ok).unwrap_or_default(),
                attempts: r.take_opt(3).and_then(Result::ok).unwrap_or_default(),
                last_error: r.take_opt(4).and_then(Result::ok).unwrap_or_default(),
                created_at_ms: r.take_opt(5).and_then(Result::ok).unwrap_or_default(),
            });
        }
    }
    let rows: Option<u64> = conn.query_first(shared.barrier.count()).await?;
    report.barrier_rows = rows.unwrap_or(0);
    report.read_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(report)
}

/// Sends a report, and one of the XA lock waits, every `report_interval_ms` until the
/// stream closes (the caller aborts this with the stream). Each is read on its own: an
/// outbox that cannot be read does not hide who waits on a prepared branch.
pub(crate) async fn report_loop(
    shared: std::sync::Arc<Shared>,
    pool: Pool,
    proxy_id: String,
    tx: mpsc::Sender<v1::ProxyMessage>,
) {
    let every = Duration::from_millis(shared.config.outbox.report_interval_ms);
    loop {
        match read(&shared, &pool, &proxy_id).await {
            Ok(report) => {
                let msg = v1::ProxyMessage {
                    kind: Some(proxy_message::Kind::OutboxReport(report)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox report not read"),
        }
        match crate::xa::lock_waits::read(&shared, &pool, &proxy_id).await {
            Ok(report) => {
                let msg = v1::ProxyMessage {
                    kind: Some(proxy_message::Kind::XaLockReport(report)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "XA lock waits not read"),
        }
        tokio::time::sleep(every).await;
    }
}

/// An operator's redrive: the DEAD message is NEW again with its attempts cleared.
pub(crate) async fn redrive(
    shared: &Shared,
    pool: &Pool,
    message_id: &str,
) -> outbox_redrive_result::Outcome {
    let r = async {
        let mut conn = pool.get_conn().await?;
        conn.exec_drop(shared.outbox_table.redrive(), (message_id,))
            .await?;
        Ok::<_, mysql_async::Error>(conn.affected_rows())
    }
    .await;
    match r {
        Ok(0) => outbox_redrive_result::Outcome::NotDead(v1::Done {}),
        Ok(_) => {
            tracing::info!(%message_id, "outbox message redriven by an operator");
            shared.outbox.kick();
            outbox_redrive_result::Outcome::Done(v1::Done {})
        }
        Err(e) => outbox_redrive_result::Outcome::Failure(v1::RetryableFailure {
            message: format!("backend: {e}"),
        }),
    }
}

/// The broker URL without its password.
pub(crate) fn broker_for_display(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_password_is_not_shown() {
        use super::broker_for_display as d;
        assert_eq!(
            d("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(d("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(d(""), "");
    }
}
