//! The MySQL wire by hand: input no real client sends, and parameter types no Rust
//! driver sends (mysql_async types every string VAR_STRING, every date DATETIME).

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

/// Prepares `sql` by hand on a connection from [`raw_login`] (no DEPRECATE_EOF): the
/// statement id, once its parameter and column definitions are read.
pub async fn prepare(s: &mut TcpStream, sql: &str) -> [u8; 4] {
    let mut prep = vec![0x16];
    prep.extend_from_slice(sql.as_bytes());
    s.write_all(&frame(0, &prep)).await.unwrap();
    let head = read_packet(s).await.unwrap();
    assert_eq!(head[0], 0, "prepare OK: {}", String::from_utf8_lossy(&head));
    let columns = u16::from_le_bytes([head[5], head[6]]) as usize;
    let params = u16::from_le_bytes([head[7], head[8]]) as usize;
    let defs = |n: usize| if n == 0 { 0 } else { n + 1 };
    for _ in 0..defs(params) + defs(columns) {
        read_packet(s).await.unwrap();
    }
    [head[1], head[2], head[3], head[4]]
}

/// Executes statement `id` by hand with `params`: each one's wire type and its value as
/// encoded on the wire (none NULL). Answers the reply's first packet.
pub async fn execute(s: &mut TcpStream, id: [u8; 4], params: &[(u8, &[u8])]) -> Vec<u8> {
    let mut ex = vec![0x17];
    ex.extend_from_slice(&id);
    ex.push(0);
    ex.extend_from_slice(&1u32.to_le_bytes());
    if !params.is_empty() {
        ex.extend(std::iter::repeat_n(0, params.len().div_ceil(8)));
        ex.push(1);
        for (ty, _) in params {
            ex.extend_from_slice(&[*ty, 0]);
        }
        for (_, value) in params {
            ex.extend_from_slice(value);
        }
    }
    s.write_all(&frame(0, &ex)).await.unwrap();
    read_packet(s).await.unwrap()
}
