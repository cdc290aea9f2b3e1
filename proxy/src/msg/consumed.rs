//! Committed barrier pairs on their way to the coordinator, which marks the half messages
//! among them consumed (it ignores ids it does not know, so every pair is sent: the proxy
//! cannot tell a half message from any other message id).
//!
//! Sessions queue a pair once its transaction's COMMIT answered OK; the Attach stream's
//! sender takes what is queued every [`EVERY`], or at once when a batch is full. The queue
//! is bounded: with no stream attached for long, the oldest pairs go (counted), since a
//! pair only moves a message from `sent` to `consumed` in the console.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_protocol::v1::{self, proxy_message};
use tokio::sync::{mpsc, Notify};

use crate::Shared;

/// Most pairs kept waiting for a stream.
const CAPACITY: usize = 10_000;
/// Pairs per message on the stream; this many queued are sent without waiting.
const BATCH: usize = 256;
/// How long a pair may wait for its batch.
const EVERY: Duration = Duration::from_millis(200);

/// The pairs waiting, and what became of earlier ones.
#[derive(Default)]
pub struct Queue {
    pairs: Mutex<VecDeque<v1::ConsumedMessage>>,
    /// Wakes the sender when a batch is full.
    full: Notify,
    /// Pairs sent on a stream since start.
    pub reported: AtomicU64,
    /// Pairs dropped from a full queue since start.
    pub dropped: AtomicU64,
}

impl Queue {
    /// Queues the pairs of a transaction that committed now.
    pub(crate) fn push(&self, pairs: Vec<(String, String)>) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut q = self.lock();
        for (consumer, message_id) in pairs {
            if q.len() >= CAPACITY {
                q.pop_front();
                self.dropped.fetch_add(1, Relaxed);
            }
            q.push_back(v1::ConsumedMessage {
                message_id,
                consumer,
                at_ms,
            });
        }
        if q.len() >= BATCH {
            self.full.notify_one();
        }
    }

    /// Up to one batch, oldest first.
    fn take(&self) -> Vec<v1::ConsumedMessage> {
        let mut q = self.lock();
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    /// A batch the stream did not take goes back in front, within the bound.
    fn put_back(&self, batch: Vec<v1::ConsumedMessage>) {
        let mut q = self.lock();
        for pair in batch.into_iter().rev() {
            if q.len() >= CAPACITY {
                self.dropped.fetch_add(1, Relaxed);
                continue;
            }
            q.push_front(pair);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<v1::ConsumedMessage>> {
        // Pairs are pushed and drained whole; a panic elsewhere cannot leave one half-made.
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends the queued pairs on the Attach stream `tx` until it closes (the caller aborts
/// this with the stream).
pub(crate) async fn send_loop(shared: Arc<Shared>, tx: mpsc::Sender<v1::ProxyMessage>) {
    let q = &shared.messages.consumed;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = q.full.notified() => {}
        }
        loop {
            let batch = q.take();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let msg = v1::ProxyMessage {
                kind: Some(proxy_message::Kind::MessagesConsumed(
                    v1::MessagesConsumed {
                        resource_id: shared.resource_id.clone(),
                        consumed: batch,
                    },
                )),
            };
            match tx.send(msg).await {
                Ok(()) => {
                    q.reported.fetch_add(n, Relaxed);
                }
                Err(mpsc::error::SendError(msg)) => {
                    // The stream is gone: the next one sends them.
                    if let Some(proxy_message::Kind::MessagesConsumed(m)) = msg.kind {
                        q.put_back(m.consumed);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| ("c".to_string(), format!("m-{i}")))
            .collect()
    }

    #[test]
    fn the_queue_is_bounded_and_keeps_the_newest() {
        let q = Queue::default();
        q.push(pairs(CAPACITY + 5));
        assert_eq!(q.dropped.load(Relaxed), 5);
        let first = q.take();
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0].message_id, "m-5");
        assert_eq!(first[0].consumer, "c");
        // Back in front, in order; room for all of them again.
        q.put_back(first);
        assert_eq!(q.take()[0].message_id, "m-5");
        assert_eq!(q.dropped.load(Relaxed), 5);
    }

    #[test]
    fn batches_take_the_oldest_first() {
        let q = Queue::default();
        q.push(pairs(3));
        let b = q.take();
        let ids: Vec<_> = b.iter().map(|p| p.message_id.as_str()).collect();
        assert_eq!(ids, ["m-0", "m-1", "m-2"]);
        assert!(q.take().is_empty());
    }
}
