//! The proxy's client-side packet reader: framing (3-byte length, sequence id, 16 MB
//! splits, the max-packet limit) over arbitrary bytes, then the payload cursor's readers
//! over what it returns. Also checks that re-framing the packets read reads them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rewind_proxy::fuzzing;

/// As `PacketStream::push` frames a payload (split at 16 MB - 1).
fn frame(out: &mut Vec<u8>, payload: &[u8], seq: &mut u8) {
    const MAX: usize = 0xFF_FFFF;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX);
        let len = (n as u32).to_le_bytes();
        out.extend_from_slice(&[len[0], len[1], len[2], *seq]);
        *seq = seq.wrapping_add(1);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if n < MAX {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    // The session's limit (64 MB), and small ones so the limit itself is reached.
    let max_packet = match limit % 4 {
        0 => 64 << 20,
        1 => 0,
        2 => 16,
        _ => usize::from(limit) * 8,
    };
    let (packets, _) = fuzzing::read_packets(stream, max_packet);
    let mut again = Vec::new();
    let mut seq = 0;
    for p in &packets {
        fuzzing::cursor(p);
        frame(&mut again, p, &mut seq);
    }
    let (reread, error) = fuzzing::read_packets(&again, max_packet);
    assert!(error.is_none(), "re-framed packets refused: {error:?}");
    assert_eq!(reread, packets);
    fuzzing::cursor(stream);
});
