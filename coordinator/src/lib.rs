//! rewind-coordinator: global transactions, their branches, global row locks, timeouts
//! and phase-two retries, durable across kill -9.
//!
//! # Layout
//! Modules in the order a request travels through them:
//! - [`grpc`], [`http`]: adapters. rewind.v1 gRPC; the REST API of DESIGN.md with its
//!   OpenAPI description (generated from the handlers), the admin console, /metrics,
//!   /healthz. They parse, call the core, and format; [`auth`] says
//!   who the operator is, [`error`] maps every refusal to a gRPC or HTTP status.
//! - [`core`]: [`core::Coordinator`], the one type that decides (begin, register,
//!   report, commit, rollback, resolve, audit) and serves the bounded read models.
//! - [`locked_tables`]: write isolation, coordinator side: which tables each attached
//!   proxy confirmed it checks untagged writes on, before a branch may lock rows there.
//! - [`sequencer`]: group commit. Batches of typed commands, applied in order and made
//!   durable with one fsync (or, in a [`cluster`], one Raft entry) before answering.
//! - [`engine`]: the pure state machine (commands + time in, effects + records out):
//!   a global transaction is a `GlobalTx`, its branches `BranchEntry`s, its durable form
//!   a `GlobalRecord`. [`locks`] is its lock table (`RowKey`, interned).
//! - [`store`] behind [`wal`]: redb tables the records land in, reloaded on start.
//! - [`dispatch`]: sends the engine's phase-two and resolve commands to the proxies
//!   that announced the branch's resource; their answers come back through [`grpc`].
//! - [`outbox`]: the proxies' latest reports of their backends' outbox and barrier (a
//!   cache, not replicated) and operators' redrives of DEAD messages awaiting an answer.
//! - [`xa_waits`]: the sessions waiting on prepared XA branches' row locks, as the
//!   proxies holding those branches last saw them (a cache like [`outbox`]).
//! - [`config`], [`metrics`], [`tls`] (the gRPC listener's and the Raft clients'
//!   certificates), [`traces`] (OpenTelemetry spans, README "Traces"): the supporting
//!   cast.
//!
//! Words kept apart from the proxy's: the proxy's `session` is a client connection (here:
//! a global transaction is `GlobalTx`); its `phase_two` executes branch commands (here:
//! [`dispatch`] sends them); its `isolation` enforces write isolation (here:
//! [`locked_tables`] tracks what proxies confirmed).
//!
//! [`run`] wires it up on listeners the caller bound (tests use port 0).

mod auth;
mod cluster;
pub mod config;
mod core;
mod dispatch;
mod engine;
mod error;
mod grpc;
mod http;
mod locked_tables;
mod locks;
mod messages;
mod metrics;
mod outbox;
mod sequencer;
mod store;
mod tcc;
mod tls;
mod traces;
mod wal;
mod xa_waits;

use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use rewind_protocol::v1::{
    raft_server::RaftServer, resource_manager_server::ResourceManagerServer,
    transaction_manager_server::TransactionManagerServer,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// gRPC metadata key in which a non-leader names the leader's gRPC address (the
/// proxy's coordinator client follows it).
pub const LEADER_METADATA: &str = "rewind-leader";
pub use error::CoordinatorError;

/// Runs the coordinator on the given listeners until `shutdown` is cancelled.
///
/// If the durable store fails mid-run, the process exits (status 70): memory would be
/// ahead of the disk, and a restart reloads exactly what was acknowledged.
pub async fn run(
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    config
        .validate()
        .map_err(|e| CoordinatorError::InvalidArgument(e.to_string()))?;
    // rustls on ring everywhere (gRPC TLS, TCC calls); no aws-lc.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let grpc_tls = config.tls.as_ref().map(tls::load).transpose()?;
    let mut grpc_server = rewind_protocol::liveness::server(tonic::transport::Server::builder());
    if let Some(t) = &grpc_tls {
        grpc_server = grpc_server
            .tls_config(t.server.clone())
            .map_err(|e| CoordinatorError::InvalidArgument(format!("tls: {e}")))?;
        tracing::info!(
            mutual = config
                .tls
                .as_ref()
                .is_some_and(|t| !t.client_ca.as_os_str().is_empty()),
            "gRPC over TLS"
        );
    }
    let (store, loaded) = store::Store::open(&config.data_dir, config.wal_bytes)?;
    let auth = Arc::new(auth::Auth::load(
        &config.operators,
        &config.data_dir,
        config.operator_session_secs,
    )?);
    match &auth.generated {
        Some(path) => tracing::info!(
            "admin console: http://{}/ ; operator \"{}\", secret in {} (readable by this user only)",
            config.http_addr,
            auth::GENERATED_OPERATOR,
            path.display()
        ),
        None => tracing::info!(
            "admin console: http://{}/ ; operators from the configuration",
            config.http_addr
        ),
    }
    tracing::info!(
        active = loaded.active.len(),
        conflicts = loaded.conflicts.len(),
        "state loaded from {}",
        config.data_dir.display()
    );
    let metrics = Arc::new(metrics::Metrics::default());
    let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
    let seq = match &config.cluster {
        None => {
            let mut counters = loaded.counters;
            if counters.next_xid == 0 {
                // A fresh data directory. XIDs name undo records and markers in every
                // backend, which outlive this directory if it is ever lost or a second
                // coordinator shares a backend: starting from 1 again would collide with
                // them (a new branch failing on an old marker). A random base keeps XIDs
                // unique in practice; the counter is persisted with the first transaction.
                counters.next_xid = engine::random_xid_base();
            } else {
                // Past any XID a begin lost with the log's unsynced tail had issued.
                counters.after_restart();
            }
            let mut engine =
                engine::Engine::restore(config.engine(), counters, loaded.active, loaded.conflicts);
            engine.restore_audit(loaded.audit);
            engine.restore_messages(loaded.messages);
            sequencer::Sequencer::start(engine, store, config.max_batch, effects_tx, metrics)
        }
        Some(c) => {
            // The XID base comes through the log (see `cluster::Batch`).
            let o = cluster::open(
                c,
                &config.data_dir,
                config.engine(),
                store,
                loaded,
                effects_tx,
                metrics.clone(),
                grpc_tls.as_ref().and_then(|t| t.peers.clone()),
                config.wal_bytes,
            )
            .await?;
            tracing::info!(node = c.node_id, members = c.members.len(), "cluster mode");
            sequencer::Sequencer::start_replicated(
                o.cluster,
                o.engine,
                o.store,
                o.applied,
                config.max_batch,
                metrics,
            )
        }
    };
    let core = core::Coordinator::new(
        seq.clone(),
        Duration::from_millis(config.rollback_wait_ms),
        Duration::from_millis(config.write_isolation_wait_ms),
        shutdown.clone(),
    );

    // Confirmed half messages go to the broker from whichever node leads.
    let publisher = messages::Publisher::new(&config.messages, seq.clone())?;

    // Tables whose last lock went leave the proxies' write-isolation sets.
    let isolation_pruner = {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                core.prune_locked_tables();
            }
        })
    };

    let dispatcher = tokio::spawn(dispatch::run(
        effects_rx,
        core.proxies(),
        tcc::Caller::new(config.tcc_call_timeout()),
        publisher.clone(),
        seq.clone(),
        shutdown.clone(),
    ));

    // Time drives timeouts and retries: one tick command per interval. The first tick
    // right away resumes phase two left unfinished by a previous run.
    let ticker = {
        let (core, shutdown, every) = (
            core.clone(),
            shutdown.clone(),
            Duration::from_millis(config.tick_ms),
        );
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = iv.tick() => core.tick().await,
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };

    let pruner = {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        let every = Duration::from_secs(config.prune_interval_secs);
        let keep = config.finished_retention_secs * 1000;
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match core.prune_finished(keep).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned finished transactions"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%e, "pruning failed"),
                }
            }
        })
    };

    let grpc = {
        let core = core.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // In cluster mode only the leader serves applications and proxies; the
            // interceptor answers the others `unavailable` with the leader's address.
            let gate = {
                let core = core.clone();
                move |req: tonic::Request<()>| match core.leader_only() {
                    Ok(()) => Ok(req),
                    Err(e) => Err(tonic::Status::from(e)),
                }
            };
            let raft = core.cluster().map(|c| {
                RaftServer::new(cluster::network::RaftService {
                    raft: c.raft.clone(),
                    auth: c.auth.clone(),
                })
                .max_decoding_message_size(c.auth.max_message_bytes())
                .max_encoding_message_size(c.auth.max_message_bytes())
            });
            grpc_server
                .add_service(TransactionManagerServer::with_interceptor(
                    grpc::GrpcServices(core.clone()),
                    gate.clone(),
                ))
                .add_service(ResourceManagerServer::with_interceptor(
                    grpc::GrpcServices(core),
                    gate,
                ))
                .add_optional_service(raft)
                .serve_with_incoming_shutdown(
                    grpc_incoming(grpc_listener),
                    shutdown.cancelled_owned(),
                )
                .await
        })
    };
    let http = {
        let app = http::router(core, config.http_body_limit_bytes, auth, config.api_auth);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(http_listener.tap_io(no_delay), app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    };

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if let Some(c) = &seq.cluster {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.raft.shutdown()).await;
    }
    ticker.abort();
    pruner.abort();
    isolation_pruner.abort();
    dispatcher.abort();
    publisher.close().await;
    Ok(())
}

/// The gRPC listener's connections, each with TCP_NODELAY. Set here: the server builder's
/// `tcp_nodelay` is ignored for a listener handed in, and with Nagle on, an answer written
/// as several HTTP/2 frames waited for the peer's delayed ACK (40 ms on one call in twenty
/// at one client under bench/at; p99 of a global transfer 53 ms, 9 ms with it).
fn grpc_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// TCP_NODELAY on an accepted HTTP connection (axum's `serve` leaves Nagle on): a response
/// written in pieces must not wait for the client's delayed ACK.
fn no_delay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut grpc = grpc_incoming(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = grpc.next().await.unwrap().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "gRPC connection without TCP_NODELAY"
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut http = listener.tap_io(no_delay);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = http.accept().await;
        assert!(
            accepted.nodelay().unwrap(),
            "HTTP connection without TCP_NODELAY"
        );
    }
}
