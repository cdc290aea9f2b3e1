//! Entry points for the cargo-fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`,
//! which cargo-fuzz sets): thin wrappers that reach the private parsers of client bytes
//! without a socket, a backend or a tokio runtime, so those parsers stay private in every
//! other build. Each wrapper also checks what must hold for any input (asserts: a failed
//! one is a crash the fuzzer reports).

use tokio::io::AsyncReadExt;

use crate::config::BranchMode;
use crate::error::ProxyError;
use crate::packet::{self, Cursor};

/// Reads logical packets from `input` as a session reads them from its client (framing,
/// sequence ids, 16 MB splits, the `max_packet` limit) until the bytes end or a packet is
/// refused. Returns the packets read and the error that stopped the reading, if any.
pub fn read_packets(input: &[u8], max_packet: usize) -> (Vec<Vec<u8>>, Option<ProxyError>) {
    futures::executor::block_on(async {
        let mut reader = input;
        let mut seq = 0u8;
        let mut packets = Vec::new();
        loop {
            let mut first = [0u8; 1];
            if reader.read_exact(&mut first).await.is_err() {
                return (packets, None);
            }
            match packet::read_frames(&mut reader, first[0], &mut seq, max_packet).await {
                Ok(p) => {
                    assert!(p.len() <= max_packet, "packet over max_packet accepted");
                    packets.push(p);
                }
                Err(e) => {
                    // Every refusal maps to a MySQL error packet.
                    let _ = e.to_mysql();
                    return (packets, Some(e));
                }
            }
        }
    })
}

/// The cursor's readers over arbitrary bytes, driven by the bytes themselves.
pub fn cursor(input: &[u8]) {
    let Some((&ops, rest)) = input.split_first() else {
        return;
    };
    let mut c = Cursor::new(rest);
    for i in 0..8 {
        let before = c.remaining().len();
        let ok = match (ops >> i) & 0b111 {
            0 => c.u8().is_ok(),
            1 => c.u16().is_ok(),
            2 => c.u32().is_ok(),
            3 => c.lenenc_int().is_ok(),
            4 => c.lenenc_bytes().is_ok(),
            5 => c.take(usize::from(ops)).is_ok(),
            _ => {
                c.nul_str();
                true
            }
        };
        assert!(c.remaining().len() <= before);
        if !ok || c.is_empty() {
            return;
        }
    }
}

/// A client's handshake response, as the connection phase parses it, then checked against
/// a login (so the auth data reaches the scramble check).
pub fn handshake_response(pkt: &[u8]) -> Result<(), ProxyError> {
    let r = crate::handshake::parse_response(pkt)?;
    assert!(
        crate::handshake::server_capabilities().contains(r.caps),
        "capabilities we never offered"
    );
    let scramble = [b'a'; 20];
    let _ = crate::handshake::password_matches(&scramble, "pw", &r.auth);
    let _ = crate::handshake::password_matches(&scramble, "", &r.auth);
    Ok(())
}

/// Every cheap scanner a statement's text goes through before (or instead of) parsing:
/// the leading-comment hints (XID, XA, MSG, TCC, BARRIER and any name), the stacked
/// statement detector and the first-keyword classifier.
pub fn scan(sql: &[u8]) {
    let _ = crate::xid::leading_xid(sql);
    for name in [&b"XID"[..], b"XA", b"MSG", b"TCC", b"BARRIER", b"", b"X"] {
        if let Some(Ok(args)) = crate::xid::leading_hint(sql, name) {
            for a in args {
                let _ = a.number();
            }
        }
    }
    let _ = crate::msg::Msg::of(sql);
    let _ = crate::tcc::Tcc::of(sql);
    for mode in [BranchMode::At, BranchMode::Xa] {
        let _ = crate::xa::tag_of(sql, mode);
    }
    if let Some(Ok(b)) = crate::barrier::Barrier::of(sql) {
        // Hint values go into SQL as hex literals: they can never add a statement.
        let insert =
            crate::barrier::BarrierTable::new("rewind").insert_literal(&b.consumer, &b.message_id);
        assert_eq!(
            crate::stacked::second_statement(insert.as_bytes(), true),
            None
        );
    }
    for backslash in [true, false] {
        if let Some(at) = crate::stacked::second_statement(sql, backslash) {
            assert!(at > 0 && at <= sql.len());
        }
    }
    let _ = crate::classify::classify(sql);
    let _ = crate::classify::mentions_autocommit(sql);
    let _ = crate::classify::may_change_database(sql);
    let _ = crate::classify::may_change_schema(sql);
    let _ = crate::classify::mentions_for_update(sql);
}
