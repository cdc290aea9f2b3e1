//! Connection phase: HandshakeV10 with a fresh scramble (offering CLIENT_SSL when the
//! listener has a certificate), the client's SSLRequest and the switch to TLS if it sent
//! one, its HandshakeResponse41, an AuthSwitch to mysql_native_password when the client
//! wanted another plugin, and the scramble check (mysql_common's `scramble_native`).

use mysql_async::consts::{CapabilityFlags, StatusFlags};
use rand::Rng;

use crate::config::User;
use crate::error::ProxyError;
use crate::packet::{Cursor, PacketStream};
use crate::tls::ClientTls;

const NATIVE: &[u8] = b"mysql_native_password";

/// What the proxy offers a session (CLIENT_SSL aside, offered with a certificate and not
/// part of what a session negotiates). No compression, no session tracking (the proxy
/// does not relay them); CLIENT_LONG_PASSWORD also tells MariaDB clients "this is a MySQL
/// server", so they use no MariaDB-only extensions.
pub fn server_capabilities() -> CapabilityFlags {
    use CapabilityFlags as C;
    C::CLIENT_LONG_PASSWORD
        | C::CLIENT_FOUND_ROWS
        | C::CLIENT_LONG_FLAG
        | C::CLIENT_CONNECT_WITH_DB
        | C::CLIENT_NO_SCHEMA
        | C::CLIENT_ODBC
        | C::CLIENT_IGNORE_SPACE
        | C::CLIENT_PROTOCOL_41
        | C::CLIENT_INTERACTIVE
        | C::CLIENT_LOCAL_FILES
        | C::CLIENT_IGNORE_SIGPIPE
        | C::CLIENT_TRANSACTIONS
        | C::CLIENT_RESERVED
        | C::CLIENT_SECURE_CONNECTION
        | C::CLIENT_MULTI_STATEMENTS
        | C::CLIENT_MULTI_RESULTS
        | C::CLIENT_PS_MULTI_RESULTS
        | C::CLIENT_PLUGIN_AUTH
        | C::CLIENT_CONNECT_ATTRS
        | C::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | C::CLIENT_DEPRECATE_EOF
}

/// The client as it introduced itself.
#[derive(Debug)]
pub struct ClientHello {
    pub caps: CapabilityFlags,
    pub charset: u8,
    pub user: String,
    pub database: Option<Vec<u8>>,
}

/// Runs the whole connection phase up to (not including) the final OK, which the session
/// sends once it holds a backend connection. With `tls`, a client may switch to TLS first
/// (and must, when it is required).
pub async fn accept(
    ps: &mut PacketStream,
    conn_id: u32,
    server_version: &str,
    logins: &[User],
    peer_host: &str,
    tls: Option<&ClientTls>,
) -> Result<ClientHello, ProxyError> {
    let scramble = new_scramble();
    ps.seq = 0;
    ps.push(&handshake_v10(
        conn_id,
        server_version,
        &scramble,
        tls.is_some(),
    ));
    ps.flush().await?;

    let closed = ProxyError::Malformed("connection closed during handshake");
    let mut pkt = ps.read_packet().await?.ok_or(closed)?;
    if let Some(tls) = tls {
        if asks_for_tls(&pkt) {
            // The SSLRequest (seq 1); the full response follows over TLS (seq 2).
            ps.start_tls(&tls.acceptor).await?;
            pkt = ps.read_packet().await?.ok_or(ProxyError::Malformed(
                "connection closed after the TLS handshake",
            ))?;
        } else if tls.required {
            return Err(ProxyError::InsecureTransport);
        }
    }
    let Response {
        caps,
        charset,
        user,
        mut auth,
        database,
        plugin,
    } = parse_response(&pkt)?;

    if plugin != NATIVE && caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
        // Ask for mysql_native_password with the same scramble.
        let mut sw = vec![0xFE];
        sw.extend_from_slice(NATIVE);
        sw.push(0);
        sw.extend_from_slice(&scramble);
        sw.push(0);
        ps.push(&sw);
        ps.flush().await?;
        auth = ps.read_packet().await?.ok_or(ProxyError::Malformed(
            "connection closed during auth switch",
        ))?;
    }

    let ok = logins
        .iter()
        .any(|u| u.name == user && password_matches(&scramble, &u.password, &auth));
    if !ok {
        return Err(ProxyError::AccessDenied {
            user,
            host: peer_host.to_string(),
            using: if auth.is_empty() { "NO" } else { "YES" },
        });
    }
    Ok(ClientHello {
        caps,
        charset,
        user,
        database,
    })
}

/// Whether the client's first answer asks for TLS: CLIENT_SSL in its capabilities (an
/// SSLRequest is the response's first 32 bytes, the rest of it comes over TLS).
pub(crate) fn asks_for_tls(pkt: &[u8]) -> bool {
    Cursor::new(pkt).u32().is_ok_and(|caps| {
        CapabilityFlags::from_bits_truncate(caps).contains(CapabilityFlags::CLIENT_SSL)
    })
}

/// A client's HandshakeResponse41, as sent.
#[derive(Debug)]
pub(crate) struct Response {
    /// The client's capabilities, narrowed to what we offered.
    pub caps: CapabilityFlags,
    pub charset: u8,
    pub user: String,
    pub auth: Vec<u8>,
    pub database: Option<Vec<u8>>,
    /// The client's auth plugin (mysql_native_password when it names none).
    pub plugin: Vec<u8>,
}

/// Parses a HandshakeResponse41. Every field is bounds-checked: a short or garbled packet
/// is [`ProxyError::Malformed`], never a panic.
pub(crate) fn parse_response(pkt: &[u8]) -> Result<Response, ProxyError> {
    let mut c = Cursor::new(pkt);
    let client_caps = CapabilityFlags::from_bits_truncate(c.u32()?);
    if !client_caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(ProxyError::Unsupported("pre-4.1 client protocol"));
    }
    let caps = client_caps & server_capabilities();
    let _max_packet = c.u32()?;
    let charset = c.u8()?;
    c.take(23)?;
    let user = String::from_utf8_lossy(c.nul_str()).into_owned();
    let auth = if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
        c.lenenc_bytes()?.to_vec()
    } else if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
        let n = c.u8()? as usize;
        c.take(n)?.to_vec()
    } else {
        c.nul_str().to_vec()
    };
    let database = if caps.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB) && !c.is_empty() {
        Some(c.nul_str().to_vec()).filter(|d| !d.is_empty())
    } else {
        None
    };
    let plugin = if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !c.is_empty() {
        c.nul_str().to_vec()
    } else {
        NATIVE.to_vec()
    };
    // Connection attributes (if any) are accepted and ignored.
    Ok(Response {
        caps,
        charset,
        user,
        auth,
        database,
        plugin,
    })
}

/// Sends an AuthSwitchRequest to mysql_native_password and returns the client's answer.
pub async fn auth_switch(
    ps: &mut PacketStream,
    scramble: &[u8; 20],
) -> Result<Vec<u8>, ProxyError> {
    let mut sw = vec![0xFE];
    sw.extend_from_slice(NATIVE);
    sw.push(0);
    sw.extend_from_slice(scramble);
    sw.push(0);
    ps.push(&sw);
    ps.flush().await?;
    ps.read_packet().await?.ok_or(ProxyError::Malformed(
        "connection closed during auth switch",
    ))
}

/// Accepts `user` if its scrambled password matches one of the configured logins.
pub fn check_login(
    logins: &[User],
    user: &str,
    scramble: &[u8; 20],
    auth: &[u8],
    peer_host: &str,
) -> Result<(), ProxyError> {
    let ok = logins
        .iter()
        .any(|u| u.name == user && password_matches(scramble, &u.password, auth));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::AccessDenied {
            user: user.to_string(),
            host: peer_host.to_string(),
            using: if auth.is_empty() { "NO" } else { "YES" },
        })
    }
}

pub(crate) fn password_matches(scramble: &[u8; 20], password: &str, response: &[u8]) -> bool {
    // Some clients terminate an empty response with a NUL.
    let response = if response == [0] { &[][..] } else { response };
    match mysql_common::scramble::scramble_native(scramble, password.as_bytes()) {
        None => response.is_empty(),
        Some(expected) => constant_time_eq(&expected, response),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn new_scramble() -> [u8; 20] {
    let mut rng = rand::rng();
    let mut s = [0u8; 20];
    for b in &mut s {
        // Printable, never NUL or '$', like MySQL's own.
        *b = loop {
            let c: u8 = rng.random_range(33..127);
            if c != b'$' {
                break c;
            }
        };
    }
    s
}

fn handshake_v10(conn_id: u32, version: &str, scramble: &[u8; 20], tls: bool) -> Vec<u8> {
    let mut caps = server_capabilities();
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let caps = caps.bits();
    let mut b = Vec::with_capacity(128);
    b.push(10);
    b.extend_from_slice(version.as_bytes());
    b.push(0);
    b.extend_from_slice(&conn_id.to_le_bytes());
    b.extend_from_slice(&scramble[..8]);
    b.push(0);
    b.extend_from_slice(&(caps as u16).to_le_bytes());
    b.push(45); // utf8mb4_general_ci
    b.extend_from_slice(&StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits().to_le_bytes());
    b.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    b.push(21);
    b.extend_from_slice(&[0u8; 10]);
    b.extend_from_slice(&scramble[8..]);
    b.push(0);
    b.extend_from_slice(NATIVE);
    b.push(0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_offered_only_with_a_certificate_and_asked_for_by_client_ssl() {
        let offered = |tls| {
            let hs = handshake_v10(1, "v", &[b'a'; 20], tls);
            // Lower capability half after version, id, scramble part and filler.
            let at = 1 + 2 + 4 + 8 + 1;
            let lower = u16::from_le_bytes([hs[at], hs[at + 1]]);
            u32::from(lower) & CapabilityFlags::CLIENT_SSL.bits() != 0
        };
        assert!(offered(true));
        assert!(!offered(false));
        let mut request = (CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_PROTOCOL_41)
            .bits()
            .to_le_bytes()
            .to_vec();
        request.resize(32, 0);
        assert!(asks_for_tls(&request));
        request[1] = 0; // CLIENT_SSL is 0x800
        assert!(!asks_for_tls(&request));
        assert!(!asks_for_tls(&[0x00, 0x08]));
    }

    #[test]
    fn scramble_check() {
        let s = new_scramble();
        let good = mysql_common::scramble::scramble_native(&s, b"pw").unwrap();
        assert!(password_matches(&s, "pw", &good));
        assert!(!password_matches(&s, "other", &good));
        assert!(password_matches(&s, "", &[]));
        assert!(!password_matches(&s, "", &good));
        assert!(!password_matches(&s, "pw", &[]));
    }
}
