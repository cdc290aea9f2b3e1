//! A TCP relay that a test puts between a client and a server to cut the line: every
//! relayed connection closed at once ([`TcpRelay::cut`]), or the server made to look down
//! ([`TcpRelay::set_down`]) while the real one keeps running for other tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Relays every connection made to [`TcpRelay::addr`] to the upstream address, on
/// tokio tasks of the runtime that started it. Dropping it stops accepting and closes
/// every relayed connection.
pub struct TcpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped by each cut; relayed connections end when it changes or is dropped.
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

struct Shared {
    down: AtomicBool,
    live: AtomicUsize,
    accepted: AtomicUsize,
}

impl TcpRelay {
    /// Listens on a free port of 127.0.0.1 and relays to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpRelay {
        let listener = bind().await;
        let addr = listener.local_addr().expect("relay local addr");
        let shared = Arc::new(Shared {
            down: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let (cuts, _) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            shared.clone(),
            cuts.clone(),
        ));
        TcpRelay {
            addr,
            shared,
            cuts,
            accept,
        }
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection now; new connections are relayed as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// While down, existing connections are cut and new ones are accepted and closed at
    /// once, as a server that is down behind a load balancer looks to a client.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Relayed connections open right now.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start, relayed or (while down) closed at once.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping `cuts` (with self) ends every relayed connection too; cut anyway so
        // they end even while a receiver outlives the sender's last clone.
        self.cut();
    }
}

/// A listener on [`crate::free_addr`]; the port is free when handed out but may be taken
/// before we bind it, so try a few.
async fn bind() -> TcpListener {
    let mut last = None;
    for _ in 0..20 {
        match TcpListener::bind(crate::process::free_addr()).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
    }
    panic!("relay: no free port to listen on: {last:?}");
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    cuts: watch::Sender<u64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.down.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut cut = cuts.subscribe();
        cut.borrow_and_update();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            shared.live.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.changed() => {}
            }
            shared.live.fetch_sub(1, Ordering::SeqCst);
            // Both sockets close here, in the middle of whatever was in flight.
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server, and the relay in front of it.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream) -> std::io::Result<()> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn relays_cuts_and_goes_down() {
        let relay = TcpRelay::start(echo().await).await;
        let mut a = TcpStream::connect(relay.addr()).await.unwrap();
        roundtrip(&mut a).await.unwrap();
        assert_eq!(relay.connections(), 1);

        relay.cut();
        let mut buf = [0u8; 1];
        assert_eq!(
            a.read(&mut buf).await.unwrap_or(0),
            0,
            "cut connection is closed"
        );
        let mut b = TcpStream::connect(relay.addr()).await.unwrap();
        roundtrip(&mut b).await.unwrap();

        relay.set_down(true);
        assert_eq!(
            b.read(&mut buf).await.unwrap_or(0),
            0,
            "down cuts existing ones"
        );
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        assert!(roundtrip(&mut c).await.is_err(), "down closes new ones");

        relay.set_down(false);
        let mut d = TcpStream::connect(relay.addr()).await.unwrap();
        roundtrip(&mut d).await.unwrap();
        assert_eq!(relay.accepted(), 4);
    }
}
