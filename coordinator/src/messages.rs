//! The message service outside the engine: what an application, a proxy or an operator
//! asks of half messages ([`Coordinator`]'s message calls), the check-back commands sent
//! to proxies, and the publisher that hands confirmed messages to the broker. The state
//! machine itself (statuses, write-once decisions, schedules) is
//! [`crate::engine::messages`]; everything here reaches it through the sequencer, so a
//! decision is durable (and, in a cluster, committed by a quorum) before anyone hears of it.
//!
//! Delivery is at least once with a stable id: a publish whose confirmation is lost (the
//! broker link, this process or the leadership gone) is simply published again by
//! whichever node leads next, under the same message id (AMQP `message_id`, NATS
//! `Nats-Msg-Id`, which JetStream deduplicates).

use std::sync::Arc;
use std::time::Duration;

use rewind_protocol::v1::{self, coordinator_message, CoordinatorMessage};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::MessagesConfig;
use crate::core::Coordinator;
use crate::dispatch::Proxies;
use crate::engine::messages::valid_message_id;
use crate::engine::{
    BindMessage, CheckOutcome, ConsumedItem, DecideMessage, MessageChecked, MessagePublished,
    MessageRecord, MessageStatus, MessagesConsumed, PrepareMessage, PublishOutcome, RedriveMessage,
    XidNum,
};
use crate::error::CoordinatorError;
use crate::sequencer::Sequencer;

/// Most messages one list answers.
pub const MESSAGE_LIST_LIMIT: usize = 1_000;

/// The body of `POST /api/v1/messages` (and of a message branch, which takes no
/// `resource_id` or `check_after_ms`: its global transaction decides it).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// 1 to 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub topic: String,
    /// Ordering key, at most 255 bytes.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub key: Option<String>,
    /// A string is published as it is; any other JSON value (not `null`) as its JSON
    /// text.
    #[schema(value_type = Value)]
    pub payload: serde_json::Value,
    /// String values only.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// The resource the producer's local transaction runs on, when known in advance.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// When check-back starts for a message still prepared (default 5000).
    #[serde(default)]
    pub check_after_ms: Option<u64>,
    /// Optional: the caller's own id (letters, digits, `-_.:`), which makes a retried
    /// prepare answer the same message. Absent: the coordinator picks one.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub message_id: Option<String>,
}

/// A message id nobody else picks: 128 random bits.
fn new_message_id() -> String {
    format!("msg-{:032x}", rand::random::<u128>())
}

impl NewMessage {
    fn into_command(self, xid: Option<XidNum>) -> Result<PrepareMessage, CoordinatorError> {
        let bad = |m: String| Err(CoordinatorError::InvalidArgument(m));
        if self.topic.is_empty() || self.topic.len() > 255 {
            return bad("topic: 1 to 255 bytes".into());
        }
        if self.key.as_ref().is_some_and(|k| k.len() > 255) {
            return bad("key: at most 255 bytes".into());
        }
        let payload = match self.payload {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => return bad("payload is required".into()),
            other => other.to_string(),
        };
        let mut headers = Vec::new();
        for (k, v) in self.headers.unwrap_or_default() {
            match v {
                serde_json::Value::String(s) => headers.push((k, s)),
                _ => return bad(format!("header {k:?}: values must be strings")),
            }
        }
        let message_id = match self.message_id {
            Some(id) if !valid_message_id(&id) => {
                return bad(format!(
                    "message_id {id:?}: 1 to 128 letters, digits, '-', '_', '.' or ':'"
                ))
            }
            Some(id) => id,
            None => new_message_id(),
        };
        if xid.is_some() && (self.resource_id.is_some() || self.check_after_ms.is_some()) {
            return bad(
                "a message branch takes no resource_id or check_after_ms: its global \
                 transaction decides it"
                    .into(),
            );
        }
        Ok(PrepareMessage {
            message_id,
            topic: self.topic,
            key: self.key.filter(|k| !k.is_empty()),
            payload,
            headers,
            resource_id: self.resource_id,
            check_after_ms: self.check_after_ms.unwrap_or(0),
            xid,
        })
    }
}

impl Coordinator {
    /// Prepares a message (with `xid`: a message branch of that global transaction).
    pub async fn prepare_message(
        &self,
        m: NewMessage,
        xid: Option<XidNum>,
    ) -> Result<MessageRecord, CoordinatorError> {
        let cmd = m.into_command(xid)?;
        self.seq().ask(cmd).await
    }

    /// A proxy saw the MSG tag: the message's resource, durable before the check row is
    /// written.
    pub async fn bind_message(
        &self,
        message_id: String,
        resource_id: String,
        proxy_id: String,
    ) -> Result<MessageStatus, CoordinatorError> {
        if resource_id.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "resource_id must not be empty".into(),
            ));
        }
        self.seq()
            .ask(BindMessage {
                message_id,
                resource_id,
                proxy_id,
            })
            .await
    }

    /// Commit or roll back a message; `operator` also decides `undecided` ones (audited
    /// by the caller).
    pub async fn decide_message(
        &self,
        message_id: String,
        commit: bool,
        by: String,
        operator: bool,
    ) -> Result<MessageStatus, CoordinatorError> {
        match self
            .seq()
            .ask(DecideMessage {
                message_id: message_id.clone(),
                commit,
                by,
                operator,
            })
            .await
        {
            // Gone from memory: the stored record says whether this is a repeat.
            Err(CoordinatorError::MessageNotFound(_)) => {
                let rec = self.message(&message_id).await?;
                match rec.status {
                    s if s.committed() == commit && s != MessageStatus::Undecided => Ok(s),
                    s => Err(CoordinatorError::MessageDecided {
                        message_id,
                        status: s,
                        wanted: if commit { "commit" } else { "roll back" },
                    }),
                }
            }
            other => other,
        }
    }

    pub async fn redrive_message(
        &self,
        message_id: String,
        by: String,
    ) -> Result<MessageStatus, CoordinatorError> {
        self.seq().ask(RedriveMessage { message_id, by }).await
    }

    /// A message from memory, else from the store.
    pub async fn message(&self, id: &str) -> Result<MessageRecord, CoordinatorError> {
        self.seq().linearizable().await?;
        if let Some(m) = crate::sequencer::lock_engine(&self.seq().engine).message(id) {
            return Ok(m);
        }
        self.seq()
            .store
            .message(id)?
            .ok_or_else(|| CoordinatorError::MessageNotFound(id.to_string()))
    }

    /// Messages newest first (by creation time, then id): those the engine holds, then
    /// stored ones; `before` = (created_ms, message_id) pages on from the last one shown.
    pub async fn list_messages(
        &self,
        status: Option<MessageStatus>,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, CoordinatorError> {
        self.seq().linearizable().await?;
        let limit = limit.clamp(1, MESSAGE_LIST_LIMIT);
        let cursor = before.unwrap_or((u64::MAX, ""));
        let mut out: Vec<MessageRecord> = crate::sequencer::lock_engine(&self.seq().engine)
            .messages_in_memory(status)
            .into_iter()
            .filter(|m| (m.created_ms, m.message_id.as_str()) < cursor)
            .collect();
        let held: std::collections::HashSet<String> =
            out.iter().map(|m| m.message_id.clone()).collect();
        for m in self.seq().store.list_messages(status, before, limit)? {
            if !held.contains(&m.message_id) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| b.message_id.cmp(&a.message_id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// A proxy's answer to a check-back.
    pub async fn message_checked(
        &self,
        message_id: String,
        command_id: u64,
        outcome: CheckOutcome,
    ) {
        self.seq()
            .post(MessageChecked {
                message_id,
                command_id,
                outcome,
            })
            .await;
    }

    /// Barrier rows committed through a proxy.
    pub async fn messages_consumed(&self, items: Vec<ConsumedItem>) {
        if items.is_empty() {
            return;
        }
        self.seq().post(MessagesConsumed { items }).await;
    }
}

/// Sends a check-back to a proxy of the message's resource; with none attached the
/// engine hears at once that this check decided nothing.
pub async fn send_check(
    proxies: &Proxies,
    seq: &Sequencer,
    command_id: u64,
    message_id: String,
    resource_id: String,
) {
    let msg = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::MessageCheck(v1::MessageCheck {
            command_id,
            message_id: message_id.clone(),
            resource_id: resource_id.clone(),
        })),
    };
    if !proxies.send(&resource_id, msg) {
        seq.post(MessageChecked {
            message_id,
            command_id,
            outcome: CheckOutcome::Failed(format!(
                "no proxy attached for resource {resource_id:?}"
            )),
        })
        .await;
    }
}

/// Publishes confirmed messages, at most `max_in_flight` at once, and tells the engine
/// how each went.
#[derive(Clone)]
pub struct Publisher {
    broker: Option<rewind_broker::Publisher>,
    slots: Arc<Semaphore>,
    seq: Sequencer,
}

impl Publisher {
    pub fn new(cfg: &MessagesConfig, seq: Sequencer) -> Result<Publisher, CoordinatorError> {
        let broker =
            if cfg.broker.is_empty() {
                None
            } else {
                let mut b = rewind_broker::BrokerConfig::new(cfg.broker.clone());
                b.exchange = cfg.exchange.clone();
                b.timeout = Duration::from_millis(cfg.publish_timeout_ms);
                Some(rewind_broker::Publisher::new(b).map_err(|e| {
                    CoordinatorError::InvalidArgument(format!("messages.broker: {e}"))
                })?)
            };
        if let Some(b) = &broker {
            tracing::info!(broker = %b.describe(), "message service publishes confirmed messages");
        }
        Ok(Publisher {
            broker,
            slots: Arc::new(Semaphore::new(cfg.max_in_flight)),
            seq,
        })
    }

    /// Publishes on its own task once a slot is free.
    pub async fn publish(&self, command_id: u64, message: Box<MessageRecord>) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.publish_one(&message).await;
            drop(slot);
            if let PublishOutcome::Retryable(e) | PublishOutcome::Permanent(e) = &outcome {
                tracing::warn!(message_id = %message.message_id, error = %e, "publishing a confirmed message failed");
            }
            this.seq
                .post(MessagePublished {
                    message_id: message.message_id.clone(),
                    command_id,
                    outcome,
                })
                .await;
        });
    }

    async fn publish_one(&self, m: &MessageRecord) -> PublishOutcome {
        let Some(broker) = &self.broker else {
            return PublishOutcome::Retryable(
                "no broker configured ([messages] broker in the coordinator's config)".into(),
            );
        };
        let msg = rewind_broker::Message {
            message_id: &m.message_id,
            topic: &m.topic,
            key: m.key.as_deref(),
            payload: m.payload.as_bytes(),
            headers: &m.headers,
        };
        match broker.publish(&msg).await {
            Ok(()) => PublishOutcome::Confirmed,
            Err(e @ rewind_broker::PublishError::InvalidMessage(_)) => {
                PublishOutcome::Permanent(e.to_string())
            }
            Err(e) => PublishOutcome::Retryable(e.to_string()),
        }
    }

    pub async fn close(&self) {
        if let Some(b) = &self.broker {
            b.close().await;
        }
    }
}
