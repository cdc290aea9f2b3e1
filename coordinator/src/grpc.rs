//! gRPC adapter: protobuf ↔ domain conversion and nothing else; every decision and
//! every read is the [`Coordinator`]'s.

use rewind_protocol::v1::{
    self, branch_result, outbox_redrive_result, proxy_message, register_branch_response,
    resolve_result, resource_manager_server::ResourceManager,
    transaction_manager_server::TransactionManager,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};
use tracing::Instrument;

use rewind_protocol::trace;

use crate::core::{parse_xid, Coordinator, RegisterAnswer};
use crate::engine::{CheckOutcome, ConsumedItem, DirtyRow, ProxyAnswer};
use crate::error::CoordinatorError;
use crate::locks::RowKey;
use crate::outbox::{DeadMessage, OutboxReport, RedriveOutcome};
use crate::traces::Call;
use crate::xa_waits::{XaLockReport, XaWaiter};

/// The gRPC services over the core.
#[derive(Clone)]
pub struct GrpcServices(pub Coordinator);

fn key_from_proto(
    branch_resource: Option<&str>,
    k: v1::LockKey,
) -> Result<(String, RowKey), CoordinatorError> {
    let resource = match branch_resource {
        Some(r) if k.resource_id.is_empty() || k.resource_id == r => r.to_string(),
        Some(r) => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "lock key resource {:?} differs from the branch's resource {r:?}",
                k.resource_id
            )))
        }
        None => k.resource_id,
    };
    Ok((
        resource,
        RowKey {
            table: k.table,
            pk: k.pk,
        },
    ))
}

fn key_to_proto(resource: String, k: RowKey) -> v1::LockKey {
    v1::LockKey {
        resource_id: resource,
        table: k.table,
        pk: k.pk,
    }
}

fn dirty_rows(d: v1::DirtyWrite) -> Vec<DirtyRow> {
    d.rows
        .into_iter()
        .map(|r| DirtyRow {
            table: r.table,
            pk: r.pk,
            before: r.before_json,
            after: r.after_json,
            current: r.current_json,
        })
        .collect()
}

fn xa_lock_report(r: v1::XaLockReport) -> XaLockReport {
    XaLockReport {
        resource_id: r.resource_id,
        proxy_id: r.proxy_id,
        pinned: r.pinned,
        waits: r
            .waits
            .into_iter()
            .map(|w| XaWaiter {
                xid: w.xid,
                bqual: w.bqual,
                thread_id: w.thread_id,
                query: w.query,
                waiting_ms: w.waiting_ms,
            })
            .collect(),
        read_at_ms: r.read_at_ms,
    }
}

fn outbox_report(r: v1::OutboxReport) -> OutboxReport {
    OutboxReport {
        resource_id: r.resource_id,
        proxy_id: r.proxy_id,
        broker: r.broker,
        new_count: r.new_count,
        held_count: r.held_count,
        oldest_new_age_ms: r.oldest_new_age_ms,
        dead_count: r.dead_count,
        published_total: r.published_total,
        failed_total: r.failed_total,
        last_error: r.last_error,
        dead: r
            .dead
            .into_iter()
            .map(|d| DeadMessage {
                message_id: d.message_id,
                topic: d.topic,
                msg_key: d.msg_key,
                attempts: d.attempts,
                last_error: d.last_error,
                created_at_ms: d.created_at_ms,
            })
            .collect(),
        barrier_rows: r.barrier_rows,
        barrier_duplicates: r.barrier_duplicates,
        read_at_ms: r.read_at_ms,
    }
}

fn redrive_outcome(o: Option<outbox_redrive_result::Outcome>) -> RedriveOutcome {
    match o {
        Some(outbox_redrive_result::Outcome::Done(_)) => RedriveOutcome::Done,
        Some(outbox_redrive_result::Outcome::NotDead(_)) => RedriveOutcome::NotDead,
        Some(outbox_redrive_result::Outcome::Failure(f)) => RedriveOutcome::Failed(f.message),
        None => RedriveOutcome::Failed("the proxy answered without an outcome".into()),
    }
}

impl GrpcServices {
    /// RegisterBranch without the reports riding on it.
    async fn register(
        &self,
        caller: Option<trace::SpanContext>,
        r: v1::RegisterBranchRequest,
    ) -> Result<Response<v1::RegisterBranchResponse>, GrpcStatus> {
        let xid = parse_xid(&r.xid)?;
        let span = Call::register(xid, &r.resource_id, caller);
        let xa = !r.xa_bqual.is_empty();
        if xa && r.xa_bqual != r.request_id {
            return Err(GrpcStatus::invalid_argument(
                "an XA branch's xa_bqual must equal its request_id",
            ));
        }
        let keys = r
            .lock_keys
            .into_iter()
            .map(|k| key_from_proto(Some(&r.resource_id), k).map(|(_, k)| k))
            .collect::<Result<Vec<_>, _>>()?;
        let answer = self
            .0
            .register(xid, r.resource_id, keys, r.request_id, xa, r.proxy_id)
            .instrument(tracing::debug_span!("register", xid = %r.xid))
            .await;
        if let Ok(RegisterAnswer::Registered(id)) = &answer {
            span.set("branch_id", *id as i64);
        }
        span.end(&answer, |a| match a {
            RegisterAnswer::Registered(_) => "registered".into(),
            RegisterAnswer::LockConflict { .. } => "lock_conflict".into(),
            RegisterAnswer::Unconfirmed { .. } => "unconfirmed".into(),
        });
        let answer = answer?;
        let outcome = match answer {
            RegisterAnswer::Registered(id) => {
                register_branch_response::Outcome::Registered(v1::Registered { branch_id: id })
            }
            RegisterAnswer::LockConflict {
                key,
                holder,
                holder_rolling_back,
            } => register_branch_response::Outcome::Conflict(v1::LockConflict {
                key: Some(key_to_proto(key.0, key.1)),
                holder_xid: rewind_protocol::xid::format(holder),
                holder_rolling_back,
            }),
            // No holder to name; "rolling back" makes the branch's proxy give way at once.
            RegisterAnswer::Unconfirmed { key } => {
                register_branch_response::Outcome::Conflict(v1::LockConflict {
                    key: Some(key_to_proto(key.0, key.1)),
                    holder_xid: String::new(),
                    holder_rolling_back: true,
                })
            }
        };
        Ok(Response::new(v1::RegisterBranchResponse {
            outcome: Some(outcome),
        }))
    }

    /// Phase-one reports sent along another call: each applied on its own (their own
    /// `more` too), so a late, unknown or refused one changes nothing for the rest or for
    /// the call they came with.
    async fn reports_along(&self, reports: Vec<v1::ReportBranchRequest>) {
        if reports.is_empty() {
            return;
        }
        let flat = reports.into_iter().flat_map(|mut m| {
            let more = std::mem::take(&mut m.more);
            std::iter::once(m).chain(more)
        });
        let applied = futures::future::join_all(flat.map(|m| self.apply_report(m))).await;
        for e in applied.into_iter().filter_map(Result::err) {
            tracing::debug!(error = %e.message(), "a report sent along was not applied");
        }
    }

    async fn apply_report(&self, m: v1::ReportBranchRequest) -> Result<(), GrpcStatus> {
        let xid = parse_xid(&m.xid)?;
        self.0.report(xid, m.branch_id, m.committed).await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl TransactionManager for GrpcServices {
    async fn begin(
        &self,
        req: Request<v1::BeginRequest>,
    ) -> Result<Response<v1::BeginResponse>, GrpcStatus> {
        let span = Call::begin(trace::extract(req.metadata()), "grpc");
        let r = req.into_inner();
        let xid = self.0.begin(r.name, r.timeout_ms).await;
        if let Ok(x) = &xid {
            span.begun(*x);
        }
        span.end(&xid, |_| "begin".into());
        let xid = xid?;
        Ok(Response::new(v1::BeginResponse {
            xid: rewind_protocol::xid::format(xid),
        }))
    }

    async fn commit(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let caller = trace::extract(req.metadata());
        let xid_s = req.into_inner().xid;
        let xid = parse_xid(&xid_s)?;
        let span = Call::decide(xid, true, caller);
        let st = self
            .0
            .commit(xid)
            .instrument(tracing::info_span!("commit", xid = %xid_s))
            .await;
        span.end(&st, |s| s.name().to_string());
        let st = st?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }

    async fn rollback(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let caller = trace::extract(req.metadata());
        let xid_s = req.into_inner().xid;
        let xid = parse_xid(&xid_s)?;
        let span = Call::decide(xid, false, caller);
        let st = self
            .0
            .rollback(xid)
            .instrument(tracing::info_span!("rollback", xid = %xid_s))
            .await;
        span.end(&st, |s| s.name().to_string());
        let st = st?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }

    async fn register_tcc_branch(
        &self,
        req: Request<v1::RegisterTccBranchRequest>,
    ) -> Result<Response<v1::RegisterTccBranchResponse>, GrpcStatus> {
        let r = req.into_inner();
        let xid = parse_xid(&r.xid)?;
        let call = crate::engine::TccCall {
            confirm_url: r.confirm_url,
            cancel_url: r.cancel_url,
            payload: (!r.payload_json.is_empty()).then_some(r.payload_json),
        };
        let branch_id = self.0.register_tcc(xid, r.name, call, r.request_id).await?;
        Ok(Response::new(v1::RegisterTccBranchResponse { branch_id }))
    }

    async fn status(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let xid_s = req.into_inner().xid;
        let st = self.0.status(parse_xid(&xid_s)?).await?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }
}

#[tonic::async_trait]
impl ResourceManager for GrpcServices {
    async fn register_branch(
        &self,
        req: Request<v1::RegisterBranchRequest>,
    ) -> Result<Response<v1::RegisterBranchResponse>, GrpcStatus> {
        let caller = trace::extract(req.metadata());
        let mut r = req.into_inner();
        // Other branches' phase-one reports riding on this call: applied beside it (one
        // batch of the sequencer with it), whatever its outcome.
        let along = std::mem::take(&mut r.reports);
        let (answer, ()) = tokio::join!(self.register(caller, r), self.reports_along(along));
        answer
    }

    async fn xa_branch_state(
        &self,
        req: Request<v1::XaBranchStateRequest>,
    ) -> Result<Response<v1::XaBranchStateResponse>, GrpcStatus> {
        let r = req.into_inner();
        let xid = parse_xid(&r.xid)?;
        let answer = match self.0.xa_branch_state(xid, &r.xa_bqual).await? {
            None => v1::XaBranchStateResponse::default(),
            Some((status, branch)) => v1::XaBranchStateResponse {
                global_found: true,
                status: status.to_proto() as i32,
                branch_id: branch.as_ref().map_or(0, |b| b.branch_id),
                branch_finished: branch.is_some_and(|b| {
                    matches!(
                        b.status,
                        crate::engine::BranchStatus::Committed
                            | crate::engine::BranchStatus::RolledBack
                    )
                }),
            },
        };
        Ok(Response::new(answer))
    }

    async fn bind_message(
        &self,
        req: Request<v1::BindMessageRequest>,
    ) -> Result<Response<v1::BindMessageResponse>, GrpcStatus> {
        let r = req.into_inner();
        self.0
            .bind_message(r.message_id, r.resource_id, r.proxy_id)
            .await?;
        Ok(Response::new(v1::BindMessageResponse {}))
    }

    async fn decide_message(
        &self,
        req: Request<v1::DecideMessageRequest>,
    ) -> Result<Response<v1::DecideMessageResponse>, GrpcStatus> {
        let r = req.into_inner();
        let by = if r.resource_id.is_empty() {
            "producer".to_string()
        } else {
            format!("producer on {}", r.resource_id)
        };
        let status = self
            .0
            .decide_message(r.message_id, r.commit, by, false)
            .await?;
        Ok(Response::new(v1::DecideMessageResponse {
            status: status.name().to_string(),
        }))
    }

    async fn report_branch(
        &self,
        req: Request<v1::ReportBranchRequest>,
    ) -> Result<Response<v1::ReportBranchResponse>, GrpcStatus> {
        let mut r = req.into_inner();
        // The reports sent along are applied together with this one (one batch of the
        // sequencer); the answer is this one's.
        let more = std::mem::take(&mut r.more);
        let (first, ()) = tokio::join!(self.apply_report(r), self.reports_along(more));
        first?;
        Ok(Response::new(v1::ReportBranchResponse {}))
    }

    async fn query_locks(
        &self,
        req: Request<v1::QueryLocksRequest>,
    ) -> Result<Response<v1::QueryLocksResponse>, GrpcStatus> {
        let r = req.into_inner();
        let asking = if r.xid.is_empty() {
            None
        } else {
            Some(parse_xid(&r.xid)?)
        };
        let keys = r
            .keys
            .into_iter()
            .map(|k| key_from_proto(None, k))
            .collect::<Result<Vec<_>, _>>()?;
        let found = self.0.query_locks(&keys, asking).await?;
        let held = found
            .into_iter()
            .map(|(i, xid, rolling_back)| v1::LockHolder {
                key: Some(key_to_proto(keys[i].0.clone(), keys[i].1.clone())),
                xid: rewind_protocol::xid::format(xid),
                rolling_back,
            })
            .collect();
        Ok(Response::new(v1::QueryLocksResponse { held }))
    }

    type AttachStream = ReceiverStream<Result<v1::CoordinatorMessage, GrpcStatus>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::ProxyMessage>>,
    ) -> Result<Response<Self::AttachStream>, GrpcStatus> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let core = self.0.clone();
        let conn = core.new_proxy_conn();
        tokio::spawn(
            async move {
                // Phase two is sent only by the leader, so a stream on a node that stops
                // leading (stepped down, or a restarted node that led a moment on its old
                // term) is closed: its proxy attaches again, following the leader hint.
                // Kept open, the leader would find no proxy for the resource and the
                // transactions' phase two would wait until the stream broke by itself.
                let lost = core.lost_leadership();
                tokio::pin!(lost);
                loop {
                    let msg = tokio::select! {
                        m = inbound.next() => m,
                        _ = core.shutdown().cancelled() => None,
                        _ = &mut lost => {
                            tracing::info!("no longer the leader: closing the proxy's stream");
                            // With the leader's address when known, for the proxy to follow.
                            if let Err(e) = core.leader_only() {
                                let _ = tx.send(Err(GrpcStatus::from(e))).await;
                            }
                            None
                        }
                    };
                    let Some(Ok(msg)) = msg else { break };
                    match msg.kind {
                        Some(proxy_message::Kind::Announce(a)) => {
                            tracing::info!(proxy = %a.proxy_id, resources = ?a.resource_ids, "proxy attached");
                            if let Err(e) = core.proxy_attached(conn, &tx, a.proxy_id, a.resource_ids).await {
                                tracing::info!(error = %e, "proxy not attached");
                                let _ = tx.send(Err(GrpcStatus::from(e))).await;
                                break;
                            }
                        }
                        Some(proxy_message::Kind::BranchResult(r)) => {
                            let Ok(xid) = parse_xid(&r.xid) else { continue };
                            let outcome = match r.outcome {
                                Some(branch_result::Outcome::Done(_)) => ProxyAnswer::Done,
                                Some(branch_result::Outcome::DirtyWrite(d)) => ProxyAnswer::DirtyWrite(dirty_rows(d)),
                                Some(branch_result::Outcome::Failure(f)) => ProxyAnswer::Retryable(f.message),
                                None => ProxyAnswer::Retryable("result without outcome".into()),
                            };
                            core.branch_result(xid, r.branch_id, r.command_id, outcome).await;
                        }
                        Some(proxy_message::Kind::ResolveResult(r)) => {
                            let outcome = match r.outcome {
                                Some(resolve_result::Outcome::Done(_)) => ProxyAnswer::Done,
                                Some(resolve_result::Outcome::DirtyWrite(d)) => ProxyAnswer::DirtyWrite(dirty_rows(d)),
                                Some(resolve_result::Outcome::Failure(f)) => ProxyAnswer::Retryable(f.message),
                                None => ProxyAnswer::Retryable("result without outcome".into()),
                            };
                            core.resolve_result(r.conflict_id, r.command_id, outcome).await;
                        }
                        Some(proxy_message::Kind::TableLocksAck(a)) => {
                            core.table_locks_ack(conn, &a.resource_id, a.epoch);
                        }
                        Some(proxy_message::Kind::OutboxReport(r)) => {
                            core.outbox_report(conn, outbox_report(r));
                        }
                        Some(proxy_message::Kind::OutboxRedriveResult(r)) => {
                            core.outbox_redrive_result(conn, r.command_id, redrive_outcome(r.outcome));
                        }
                        Some(proxy_message::Kind::XaLockReport(r)) => {
                            core.xa_lock_report(conn, xa_lock_report(r));
                        }
                        Some(proxy_message::Kind::MessageCheckResult(r)) => {
                            use v1::message_check_result::Outcome;
                            let outcome = match r.outcome {
                                Some(Outcome::Committed(_)) => CheckOutcome::Committed,
                                Some(Outcome::RolledBack(_)) => CheckOutcome::RolledBack,
                                Some(Outcome::Running(_)) => CheckOutcome::Running,
                                Some(Outcome::Failure(f)) => CheckOutcome::Failed(f.message),
                                None => CheckOutcome::Failed("check result without outcome".into()),
                            };
                            core.message_checked(r.message_id, r.command_id, outcome).await;
                        }
                        Some(proxy_message::Kind::MessagesConsumed(m)) => {
                            if !core.proxies().serves(conn, &m.resource_id) {
                                tracing::warn!(resource = %m.resource_id, "consumed report for a resource this stream did not announce: ignored");
                                continue;
                            }
                            let items = m.consumed.into_iter().map(|c| ConsumedItem {
                                message_id: c.message_id,
                                consumer: c.consumer,
                                at_ms: c.at_ms,
                            }).collect();
                            core.messages_consumed(items).await;
                        }
                        None => {}
                    }
                }
                core.proxy_detached(conn);
                tracing::info!("proxy detached");
            }
            .instrument(tracing::info_span!("attach", conn)),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
