//! Broker urls, unique names, and a consumer (the test harness's own, shared with the
//! integration tests).

pub use rewind_test_support::{amqp_addr, amqp_url, nats_addr, nats_url, AmqpQueue as Queue};

/// `url` with its host:port replaced by `addr` (to go through a relay).
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url with scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{tail}", userinfo.unwrap_or_default())
}

/// `prefix` and a random suffix: a name no other test (run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}
