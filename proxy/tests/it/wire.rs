//! The MySQL wire by hand, for input no real client sends.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One packet's payload.
pub async fn read_packet(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await?;
    Ok(p)
}

/// `payload` as packet number `seq`.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_le_bytes();
    let mut v = vec![l[0], l[1], l[2], seq];
    v.extend_from_slice(payload);
    v
}

/// Logs in as root with no password, by hand.
pub async fn raw_login(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let greeting = read_packet(&mut s).await.unwrap();
    assert_eq!(greeting[0], 10);
    // PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | LONG_PASSWORD | TRANSACTIONS
    let caps: u32 = 0x0200 | 0x8000 | 0x0008_0000 | 0x1 | 0x2000;
    let mut r = caps.to_le_bytes().to_vec();
    r.extend_from_slice(&(16u32 << 20).to_le_bytes());
    r.push(45);
    r.extend_from_slice(&[0u8; 23]);
    r.extend_from_slice(b"root\0");
    r.push(0);
    r.extend_from_slice(b"mysql_native_password\0");
    s.write_all(&frame(1, &r)).await.unwrap();
    let ok = read_packet(&mut s).await.unwrap();
    assert_eq!(ok[0], 0, "login OK");
    s
}
