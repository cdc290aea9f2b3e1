//! The connection phase's parsing of a client's HandshakeResponse41 (capabilities, user,
//! auth data in its three encodings, database, plugin) and the scramble check on the auth
//! data; the input is taken both as a bare payload and as a framed packet stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rewind_proxy::fuzzing;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::handshake_response(data);
    // As the session reads it: the first packet of the stream (the proxy's own limit).
    let (packets, _) = fuzzing::read_packets(data, 64 << 20);
    if let Some(first) = packets.first() {
        let _ = fuzzing::handshake_response(first);
    }
});
