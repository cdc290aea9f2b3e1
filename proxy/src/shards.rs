//! Session threads (opt-in, `session_threads` > 0): client sessions run on that many
//! single-threaded tokio runtimes, one OS thread each, instead of the process's
//! work-stealing runtime.
//!
//! Opt-in because it has not yet been shown to pay: on this project's shared 2-core
//! machine, with other builds running, bench/passthrough's 1-client point select
//! was too noisy to tell the two shapes apart (HAProxy itself added 100–250 µs there),
//! and strace showed the work-stealing runtime already serving a lone session from one
//! thread (2 epoll_wait, 2 sendto, 2 recvfrom per query, almost no futex calls). Measure
//! both on a quiet machine (`BENCH_PROXY_CONFIG`, see bench/passthrough) before
//! making it the default.
//!
//! A session is one task that alternates between its client socket and its backend
//! connection. On the work-stealing runtime each wake-up may land on another worker
//! thread, and a worker that finds a task in its queue wakes an idle sibling to share the
//! load: on a 2-vCPU VM those cross-thread wake-ups (futex + IPI) added 100–300 µs to every
//! point select at one client, while HAProxy added nothing (bench/passthrough; issue 17).
//! Here a session, its client socket, its backend connection (from its thread's own pools,
//! so a pooled connection is registered with the same thread's I/O driver) and its timers
//! all live on one thread: a query's round trip wakes only that thread. Sessions are
//! spread by count (fewest open first), so every core serves clients.
//!
//! What sessions share (the isolation registry, metrics, the coordinator client's leader
//! and queued reports) stays thread-safe and is reached across threads as before; but each
//! thread makes its own channels to the coordinator, so a session's status, register and
//! report calls stay on its thread (`coordinator::use_thread_channels`). Phase two, the
//! Attach stream, the outbox relay and the admin listener keep running on the process's
//! runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

use crate::ProxyError;

/// One session thread: its runtime's handle, its backend pools, how many sessions it has.
pub(crate) struct Shard {
    pub(crate) handle: Handle,
    /// By the client's CLIENT_FOUND_ROWS, as [`crate::Shared::pools`].
    pub(crate) pools: [mysql_async::Pool; 2],
    sessions: AtomicUsize,
}

impl Shard {
    /// Counts a session on this thread until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.clone())
    }
}

pub(crate) struct SessionGuard(Arc<Shard>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The session threads; [`Shards::stop`] ends them.
pub(crate) struct Shards {
    shards: Vec<Arc<Shard>>,
    threads: Vec<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Shards {
    /// Starts `n` (≥ 1) session threads, each with pools made by `pools`.
    pub(crate) fn start(
        n: usize,
        pools: impl Fn() -> Result<[mysql_async::Pool; 2], ProxyError>,
    ) -> Result<Shards, ProxyError> {
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ProxyError::BackendUnavailable(format!("session thread: {e}")))?;
            let (stop, stopped) = oneshot::channel::<()>();
            shards.push(Arc::new(Shard {
                handle: rt.handle().clone(),
                pools: pools()?,
                sessions: AtomicUsize::new(0),
            }));
            let thread = std::thread::Builder::new()
                .name(format!("rewind-session-{i}"))
                .spawn(move || {
                    crate::coordinator::use_thread_channels();
                    // Runs the thread's sessions until told to stop (or the sender is gone).
                    let _ = rt.block_on(stopped);
                    // Whatever a session left running (a decision being sent) gets a moment.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })
                .map_err(|e| ProxyError::BackendUnavailable(format!("session thread: {e}")))?;
            threads.push((stop, thread));
        }
        Ok(Shards { shards, threads })
    }

    /// The thread with the fewest open sessions (the first of equals).
    pub(crate) fn pick(&self) -> &Arc<Shard> {
        self.shards
            .iter()
            .min_by_key(|s| s.sessions.load(Ordering::Relaxed))
            .expect("at least one session thread")
    }

    /// Closes every thread's idle backend connections, then ends the threads. Called once
    /// sessions are done.
    pub(crate) async fn stop(self) {
        for s in &self.shards {
            for p in s.pools.iter() {
                // A pool's recycler lives on the thread that first used it.
                let done = s.handle.spawn(p.clone().disconnect());
                let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
            }
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for (stop, thread) in threads {
                let _ = stop.send(());
                if thread.join().is_err() {
                    warn!("a session thread panicked");
                }
            }
        })
        .await;
    }
}
