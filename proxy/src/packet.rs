//! MySQL packet framing on the client side: 3-byte length + sequence id, payloads of
//! 16 MB - 1 split across packets, and an output buffer flushed at ~64 KB so that result
//! rows are streamed, never collected. Underneath, the client's socket: plain TCP, or
//! TLS once the client asked for it ([`PacketStream::start_tls`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;
use tokio_rustls::TlsAcceptor;

use crate::error::ProxyError;

/// Largest payload of one physical packet; a payload of exactly this size is continued.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Flush threshold for the output buffer.
const FLUSH_AT: usize = 64 * 1024;
/// Once a packet has started, the rest must arrive within this (MySQL's net_read_timeout),
/// so a client that stalls mid-packet cannot hold a session forever.
const MID_PACKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read buffer of a client connection.
const READ_BUFFER: usize = 16 * 1024;

/// A client's socket: an enum rather than a boxed trait object, so the plain path costs
/// one match per read or write and no allocation.
pub enum ClientStream {
    Plain(TcpStream),
    /// Boxed once per connection: rustls's state is large, and the enum stays small for
    /// the plain sessions.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// During an upgrade, and after a failed one: nothing can be read or written.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client connection closed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// One client connection's framed stream.
pub struct PacketStream {
    /// The socket, read through a buffer; writes go through `out` and then straight to the
    /// socket (tokio's `BufReader` passes writes through).
    stream: BufReader<ClientStream>,
    /// Encoded packets not yet written; bounded by `FLUSH_AT` plus one row.
    out: Vec<u8>,
    /// Next sequence id, expected on read and used on write.
    pub seq: u8,
    /// Largest logical packet accepted from the client (max_allowed_packet).
    max_packet: usize,
    /// Writes so far: a [`Mark`] is good only while none happened since.
    writes: u64,
}

/// A point in the output to take back to (see [`PacketStream::rewind`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    len: usize,
    seq: u8,
    writes: u64,
}

impl PacketStream {
    pub fn new(stream: TcpStream, max_packet: usize) -> Self {
        let _ = stream.set_nodelay(true);
        PacketStream {
            stream: BufReader::with_capacity(READ_BUFFER, ClientStream::Plain(stream)),
            out: Vec::with_capacity(4096),
            seq: 0,
            max_packet,
            writes: 0,
        }
    }

    /// Reads one logical packet (joining split packets). `Ok(None)` on a clean EOF before
    /// the first header byte.
    pub async fn read_packet(&mut self) -> Result<Option<Vec<u8>>, ProxyError> {
        let mut first = [0u8; 1];
        match self.stream.read_exact(&mut first).await {
            Ok(_) => {}
            // A clean close between commands is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        match tokio::time::timeout(MID_PACKET_TIMEOUT, self.read_rest(first[0])).await {
            Ok(r) => r.map(Some),
            Err(_) => Err(ProxyError::Malformed(
                "client stalled in the middle of a packet",
            )),
        }
    }

    async fn read_rest(&mut self, first: u8) -> Result<Vec<u8>, ProxyError> {
        read_frames(&mut self.stream, first, &mut self.seq, self.max_packet).await
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream.get_ref(), ClientStream::Tls(_))
    }

    /// Switches a plain connection to TLS, right after the client's SSLRequest: the TLS
    /// handshake, then packets continue over TLS with their sequence ids going on.
    ///
    /// The client sends its ClientHello right behind the SSLRequest, so the read buffer
    /// may already hold part of it: those bytes are handed to rustls before anything more
    /// is read from the socket. A failed handshake leaves the stream closed.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> Result<(), ProxyError> {
        let plain = std::mem::replace(&mut self.stream, BufReader::new(ClientStream::Closed));
        let early = plain.buffer().to_vec();
        let ClientStream::Plain(tcp) = plain.into_inner() else {
            return Err(ProxyError::Malformed("a second SSLRequest"));
        };
        let mut fed = Ok(());
        let accept = acceptor.accept_with(tcp, |conn| fed = feed(conn, &early));
        fed?;
        let tls = accept.await?;
        self.stream = BufReader::with_capacity(READ_BUFFER, ClientStream::Tls(Box::new(tls)));
        Ok(())
    }

    /// Appends one logical packet to the output buffer, splitting it as needed.
    pub fn push(&mut self, payload: &[u8]) {
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PAYLOAD);
            let len = (n as u32).to_le_bytes();
            self.out
                .extend_from_slice(&[len[0], len[1], len[2], self.seq]);
            self.seq = self.seq.wrapping_add(1);
            self.out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if n < MAX_PAYLOAD {
                return;
            }
        }
    }

    /// The current end of the output.
    pub fn mark(&self) -> Mark {
        Mark {
            len: self.out.len(),
            seq: self.seq,
            writes: self.writes,
        }
    }

    /// Takes back every packet pushed since `mark`; false (and nothing changed) when some
    /// of them were written out already.
    pub fn rewind(&mut self, mark: Mark) -> bool {
        if mark.writes != self.writes || mark.len > self.out.len() {
            return false;
        }
        self.out.truncate(mark.len);
        self.seq = mark.seq;
        true
    }

    /// Writes the buffer out if it has grown past the flush threshold.
    pub async fn maybe_flush(&mut self) -> Result<(), ProxyError> {
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ProxyError> {
        if !self.out.is_empty() {
            self.writes += 1;
            self.stream.write_all(&self.out).await?;
            // rustls may keep records back until flushed; a no-op on plain TCP.
            self.stream.flush().await?;
            self.out.clear();
            if self.out.capacity() > 4 * FLUSH_AT {
                // A huge row grew the buffer: give the memory back.
                self.out.shrink_to(FLUSH_AT);
            }
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Hands bytes read from the socket before the TLS handshake to rustls, and lets it
/// process them: the handshake then answers a ClientHello that is already complete
/// instead of waiting on the socket for bytes that were already read.
fn feed(conn: &mut ServerConnection, mut early: &[u8]) -> io::Result<()> {
    while !early.is_empty() {
        if conn.read_tls(&mut early)? == 0 {
            break;
        }
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// The rest of one logical packet whose first header byte is `first`: its frames joined,
/// `seq` checked and advanced per frame, at most `max_packet` bytes. Generic over the reader
/// so the framing can be fed from memory (`fuzz/`).
///
/// A frame's payload is taken as it arrives, never allocated from its header up front: a
/// client sending only a header that claims 16 MB would otherwise make the session hold
/// 16 MB while it waits for bytes that never come.
pub(crate) async fn read_frames<R: AsyncRead + Unpin>(
    reader: &mut R,
    first: u8,
    seq: &mut u8,
    max_packet: usize,
) -> Result<Vec<u8>, ProxyError> {
    let mut payload = Vec::new();
    let mut started = false;
    loop {
        let mut header = [0u8; 4];
        if !started {
            header[0] = first;
            started = true;
            reader.read_exact(&mut header[1..]).await?;
        } else {
            reader.read_exact(&mut header).await?;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        if header[3] != *seq {
            return Err(ProxyError::OutOfOrder);
        }
        *seq = seq.wrapping_add(1);
        if payload.len() + len > max_packet {
            return Err(ProxyError::PacketTooLarge);
        }
        let got = (&mut *reader)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await?;
        if got < len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if len < MAX_PAYLOAD {
            return Ok(payload);
        }
    }
}

/// Little helpers for building payloads.
pub fn put_lenenc_int(buf: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => buf.push(v as u8),
        251..=0xFFFF => {
            buf.push(0xFC);
            buf.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            buf.push(0xFD);
            buf.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            buf.push(0xFE);
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn put_lenenc_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_lenenc_int(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A cursor over client bytes that never panics: every read is checked.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProxyError> {
        if self.buf.len() < n {
            return Err(ProxyError::Malformed("truncated packet"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ProxyError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProxyError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, ProxyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn lenenc_int(&mut self) -> Result<u64, ProxyError> {
        Ok(match self.u8()? {
            0xFC => u64::from(self.u16()?),
            0xFD => {
                let b = self.take(3)?;
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], 0]))
            }
            0xFE => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            }
            x => u64::from(x),
        })
    }
    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], ProxyError> {
        let n = self.lenenc_int()?;
        let n = usize::try_from(n).map_err(|_| ProxyError::Malformed("length"))?;
        self.take(n)
    }
    /// Bytes up to a NUL (consumed); the whole rest if there is none.
    pub fn nul_str(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = &self.buf[..i];
                self.buf = &self.buf[i + 1..];
                s
            }
            None => std::mem::take(&mut self.buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payloads_over_16mb_are_split_and_joined() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let payload: Vec<u8> = (0..MAX_PAYLOAD * 2 + 5).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            let mut w = PacketStream::new(TcpStream::connect(addr).await.unwrap(), 1 << 26);
            w.push(&sent);
            w.push(&[0xAB; MAX_PAYLOAD]); // exactly 16 MB - 1: needs an empty trailer
            w.flush().await.unwrap();
            w.shutdown().await;
        });
        let (sock, _) = listener.accept().await.unwrap();
        let mut r = PacketStream::new(sock, 1 << 26);
        assert_eq!(r.read_packet().await.unwrap().unwrap(), payload);
        assert_eq!(r.seq, 3);
        assert_eq!(r.read_packet().await.unwrap().unwrap().len(), MAX_PAYLOAD);
        assert!(r.read_packet().await.unwrap().is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn out_of_order_and_oversized_packets_are_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let mut r = PacketStream::new(sock, 10);
        c.write_all(&[1, 0, 0, 5, 0x03]).await.unwrap();
        assert!(matches!(r.read_packet().await, Err(ProxyError::OutOfOrder)));
        r.seq = 0;
        c.write_all(&[11, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            r.read_packet().await,
            Err(ProxyError::PacketTooLarge)
        ));
    }

    #[tokio::test]
    async fn a_header_without_its_payload_is_an_error() {
        // 16 MB - 1 announced, 3 bytes sent, then the end: read as they come (nothing is
        // allocated for the rest), and the short frame is an error.
        let mut input: &[u8] = &[0xFF, 0xFF, 0, b'a', b'b', b'c'];
        let mut seq = 0;
        let r = read_frames(&mut input, 0xFF, &mut seq, 1 << 26).await;
        assert!(
            matches!(&r, Err(ProxyError::ClientIo(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{r:?}"
        );
        // An empty frame is an empty packet; the limit holds for a frame read from memory.
        let mut seq = 0;
        let empty = read_frames(&mut &[0u8, 0, 0][..], 0, &mut seq, 0).await;
        assert_eq!(empty.unwrap(), b"");
        let two = [0u8, 0, 1, b'x', b'y'];
        let r = read_frames(&mut &two[..], 2, &mut seq, 1).await;
        assert!(matches!(r, Err(ProxyError::PacketTooLarge)), "{r:?}");
        seq = 1;
        let r = read_frames(&mut &two[..], 2, &mut seq, 2).await;
        assert_eq!(r.unwrap(), b"xy");
    }

    /// A TLS acceptor for "localhost" and a connector trusting it.
    fn tls_pair() -> (TlsAcceptor, tokio_rustls::TlsConnector) {
        use std::sync::Arc;
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            TlsAcceptor::from(Arc::new(server)),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    #[tokio::test]
    async fn tls_starts_with_the_client_hello_already_buffered() {
        let (acceptor, connector) = tls_pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&[4, 0, 0, 1, b's', b's', b'l', b'!'])
                .await
                .unwrap();
            let name = "localhost".try_into().unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(&[2, 0, 0, 2, b'h', b'i']).await.unwrap();
            tls.flush().await.unwrap();
            let mut answer = [0u8; 6];
            tls.read_exact(&mut answer).await.unwrap();
            answer
        });
        let (sock, _) = listener.accept().await.unwrap();
        // The ClientHello follows the SSLRequest at once: wait until both are in, so the
        // first read takes the two together.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut ps = PacketStream::new(sock, 1024);
        ps.seq = 1; // after the greeting
        assert_eq!(ps.read_packet().await.unwrap().unwrap(), b"ssl!");
        assert!(
            !ps.stream.buffer().is_empty(),
            "the ClientHello was read early"
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), ps.start_tls(&acceptor))
            .await
            .expect("the handshake answers the buffered ClientHello")
            .unwrap();
        assert!(ps.is_tls());
        assert_eq!(ps.read_packet().await.unwrap().unwrap(), b"hi");
        ps.push(b"ok");
        ps.flush().await.unwrap();
        assert_eq!(client.await.unwrap(), [2, 0, 0, 3, b'o', b'k']);
    }

    #[tokio::test]
    async fn a_garbage_client_hello_fails_the_upgrade_only() {
        let (acceptor, _) = tls_pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[1, 0, 0, 1, b'x']).await.unwrap();
        c.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let mut ps = PacketStream::new(sock, 1024);
        ps.seq = 1;
        ps.read_packet().await.unwrap().unwrap();
        let r = ps.start_tls(&acceptor).await;
        assert!(matches!(r, Err(ProxyError::ClientIo(_))), "{r:?}");
        assert!(!ps.is_tls());
        // The stream is closed: reads fail, a shutdown is harmless.
        assert!(ps.read_packet().await.is_err());
        ps.shutdown().await;
    }

    #[test]
    fn lenenc_roundtrip() {
        for v in [
            0u64,
            250,
            251,
            65535,
            65536,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_lenenc_int(&mut b, v);
            assert_eq!(Cursor::new(&b).lenenc_int().unwrap(), v);
        }
    }

    #[test]
    fn cursor_never_panics_on_truncation() {
        let mut c = Cursor::new(&[0xFE, 1, 2]);
        assert!(c.lenenc_int().is_err());
        let mut c = Cursor::new(&[]);
        assert!(c.u32().is_err());
        assert_eq!(Cursor::new(b"ab").nul_str(), b"ab");
    }
}
