//! `LOAD DATA LOCAL INFILE`, relayed: the backend asks for a file, the proxy asks the
//! client for it with the same file name, and streams the client's packets to the backend
//! as they come (bounded: a slow backend slows the client, memory stays flat).
//!
//! mysql_async asks a handler for the file's bytes while it runs the statement, inside the
//! session's own task; the pools' handler ([`Relay`]) finds the session through a task-local
//! [`Bridge`] and hands it the request; the session, which runs the statement and the
//! client side concurrently ([`Session::query_relaying_infile`]), asks its client.
//!
//! A client that fails mid-file must not leave a partial load behind: mysql_async would end
//! the upload normally when the data stream ends, so the session kills the backend
//! connection instead (the server then rolls the statement back), as the server does when
//! its own client goes away mid-file.

use std::io;

use bytes::Bytes;
use futures::future::BoxFuture;
use mysql_async::prelude::{GlobalHandler, Queryable};
use mysql_async::{InfileData, LocalInfileError};
use tokio::sync::mpsc;

use crate::error::ProxyError;
use crate::session::Session;

tokio::task_local! {
    static BRIDGE: Bridge;
}

/// A session's side of a LOCAL INFILE request.
pub(crate) struct Request {
    pub file_name: Vec<u8>,
    pub data: mpsc::Sender<io::Result<Bytes>>,
}

/// The way from the pools' handler to the session running the statement.
#[derive(Clone)]
pub(crate) struct Bridge(mpsc::Sender<Request>);

/// The handler every backend pool has: serves a request through the current task's
/// [`Bridge`]; outside one (the proxy's own statements) there is no file to give.
pub(crate) struct Relay;

impl GlobalHandler for Relay {
    fn handle(&self, file_name: &[u8]) -> BoxFuture<'static, Result<InfileData, LocalInfileError>> {
        let bridge = BRIDGE.try_with(|b| b.clone()).ok();
        let file_name = file_name.to_vec();
        Box::pin(async move {
            let Some(Bridge(requests)) = bridge else {
                return Err(LocalInfileError::NoHandler);
            };
            let (data, rx) = mpsc::channel(4);
            requests
                .send(Request { file_name, data })
                .await
                .map_err(|_| LocalInfileError::NoHandler)?;
            Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })) as InfileData)
        })
    }
}

impl Session {
    /// Runs `sql` on the backend, serving any LOCAL INFILE request it makes from the
    /// client. The statement's results are left pending for the relay, as `query_iter`
    /// leaves them.
    pub(crate) async fn query_relaying_infile(&mut self, sql: &[u8]) -> Result<(), ProxyError> {
        let (tx, mut requests) = mpsc::channel::<Request>(1);
        let backend_thread = self.conn.id();
        let pool = self.pools[0].clone();
        let conn = &mut self.conn;
        let ps = &mut self.ps;
        let query = BRIDGE.scope(
            Bridge(tx),
            async move { conn.query_iter(sql).await.map(drop) },
        );
        let client = async move {
            let mut failed: Option<ProxyError> = None;
            while let Some(req) = requests.recv().await {
                if failed.is_some() {
                    // The backend was killed; nothing more is asked of the client.
                    continue;
                }
                let mut ask = Vec::with_capacity(1 + req.file_name.len());
                ask.push(0xFB);
                ask.extend_from_slice(&req.file_name);
                ps.push(&ask);
                if let Err(e) = ps.flush().await {
                    failed = Some(e);
                    continue;
                }
                loop {
                    match ps.read_packet().await {
                        Ok(Some(p)) if p.is_empty() => break,
                        Ok(Some(p)) => {
                            // A closed receiver: mysql_async gave up on the upload (the
                            // backend failed); the client's bytes are read and dropped.
                            let _ = req.data.send(Ok(Bytes::from(p))).await;
                        }
                        Ok(None) => {
                            failed =
                                Some(ProxyError::ClientIo(io::ErrorKind::UnexpectedEof.into()));
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    // End the statement on the backend before the upload ends, so the
                    // server rolls it back instead of loading part of the file.
                    kill(&pool, backend_thread).await;
                    let _ = req
                        .data
                        .send(Err(io::Error::other("the client went away mid-file")))
                        .await;
                }
            }
            failed
        };
        let (ran, failed) = tokio::join!(query, client);
        if let Some(e) = failed {
            return Err(e);
        }
        ran.map_err(Into::into)
    }
}

/// Ends a backend connection from another one (its statement is rolled back).
pub(crate) async fn kill(pool: &mysql_async::Pool, thread: u32) {
    if let Ok(mut c) = pool.get_conn().await {
        let _ = c.query_drop(format!("KILL CONNECTION {thread}")).await;
    }
}
