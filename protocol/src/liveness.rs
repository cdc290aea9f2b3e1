//! How either end of a gRPC connection (proxy and coordinator, coordinator and
//! coordinator) notices a peer that has gone silent: stopped, hung, or cut off without its
//! connections being reset. Nothing else would: a silent peer's kernel may still accept
//! what is sent, so a stream waiting for its next message waits forever.
//!
//! A proxy stuck so on a leader that went silent never re-attached to the new leader, and
//! phase two of its resource stopped; a coordinator stuck so on a silent proxy kept waiting
//! for it to confirm every newly locked table of its resource, and every such first lock
//! was refused (tests `t90_a_proxy_leaves_a_leader_that_went_silent`,
//! `t63_a_silent_proxy_holds_up_no_registration`). Both ends send HTTP/2 PINGs after
//! [`PING_AFTER`] without a frame from the peer and close the connection, every stream on
//! it, when one goes unanswered for [`PING_TIMEOUT`]: a silent peer is let go within about
//! six seconds. A peer that is only slow answers a PING from its connection task, without
//! waiting for any request, so it has seconds to spare even on a loaded machine.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// A PING goes out after this long without a frame from the peer.
pub const PING_AFTER: Duration = Duration::from_secs(2);

/// A PING unanswered this long closes the connection.
pub const PING_TIMEOUT: Duration = Duration::from_secs(4);

/// TCP keep-alive too, for the kernel to drop a connection to a host that has gone.
const TCP_KEEPALIVE: Duration = Duration::from_secs(10);

/// A client endpoint that lets a silent server go (idle connections included: a proxy's
/// Attach stream is idle for long stretches).
pub fn client(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(PING_AFTER)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
}

/// A server that lets a silent client go.
pub fn server<L>(server: Server<L>) -> Server<L> {
    server
        .http2_keepalive_interval(Some(PING_AFTER))
        .http2_keepalive_timeout(Some(PING_TIMEOUT))
        .tcp_keepalive(Some(TCP_KEEPALIVE))
}
