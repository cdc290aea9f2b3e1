//! TLS material, read once at start so that a wrong path or a file that is not what its
//! key says stops the proxy there, naming the file and the key:
//! - the client listener's certificate and key (`tls_cert`, `tls_key`): the handshake then
//!   offers CLIENT_SSL and a client's SSLRequest switches its connection to TLS (see
//!   [`crate::handshake`] and [`crate::packet::PacketStream::start_tls`]);
//! - the backend connections' `SslOpts` (`backend_tls`, `backend_tls_ca`);
//! - the coordinator channels' TLS (`coordinator_tls_ca`, and `coordinator_tls_cert` /
//!   `coordinator_tls_key` when the coordinator asks for client certificates).
//!
//! Everything is rustls on ring (no OpenSSL, no aws-lc).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{BackendTls, Config};

/// TLS on the client listener.
pub struct ClientTls {
    pub acceptor: TlsAcceptor,
    /// `require_secure_transport`: a login without TLS is refused (3159).
    pub required: bool,
}

/// The client listener's TLS, when `tls_cert` and `tls_key` are set.
pub fn client_tls(config: &Config) -> Result<Option<ClientTls>, String> {
    if config.tls_cert.is_empty() {
        return Ok(None);
    }
    let certs = certificates("tls_cert", &config.tls_cert)?;
    let key = private_key("tls_key", &config.tls_key)?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        format!(
            "tls_cert {:?} and tls_key {:?} do not go together: {e}",
            config.tls_cert, config.tls_key
        )
    })?;
    Ok(Some(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        required: config.require_secure_transport,
    }))
}

/// The backend connections' TLS options (`None`: `backend_tls = "off"`).
pub fn backend_ssl(config: &Config) -> Result<Option<mysql_async::SslOpts>, String> {
    // Read now (mysql_async would read a path at every connect) and checked to hold
    // certificates.
    let ca = || -> Result<Vec<Vec<u8>>, String> {
        if config.backend_tls_ca.is_empty() {
            return Ok(Vec::new());
        }
        certificates("backend_tls_ca", &config.backend_tls_ca)?;
        Ok(vec![read("backend_tls_ca", &config.backend_tls_ca)?])
    };
    let opts = mysql_async::SslOpts::default();
    Ok(Some(match config.backend_tls {
        BackendTls::Off => return Ok(None),
        // Encrypted, the server's certificate taken as it comes (MySQL's
        // --ssl-mode=REQUIRED).
        BackendTls::Required => opts.with_danger_accept_invalid_certs(true),
        // Signed by the CA; any name.
        BackendTls::VerifyCa => opts
            .with_root_certs(ca()?.into_iter().map(Into::into).collect())
            .with_disable_built_in_roots(true)
            .with_danger_skip_domain_validation(true),
        // Signed by the CA (the public web roots when none is given) and naming the host
        // of `backend`.
        BackendTls::VerifyIdentity => {
            let roots = ca()?;
            let own = !roots.is_empty();
            opts.with_root_certs(roots.into_iter().map(Into::into).collect())
                .with_disable_built_in_roots(own)
        }
    }))
}

/// The coordinator channels' TLS, when `coordinator_tls_ca` is set.
pub fn coordinator_tls(
    config: &Config,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    if config.coordinator_tls_ca.is_empty() {
        return Ok(None);
    }
    certificates("coordinator_tls_ca", &config.coordinator_tls_ca)?;
    let ca = read("coordinator_tls_ca", &config.coordinator_tls_ca)?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if !config.coordinator_tls_cert.is_empty() {
        certificates("coordinator_tls_cert", &config.coordinator_tls_cert)?;
        private_key("coordinator_tls_key", &config.coordinator_tls_key)?;
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("coordinator_tls_cert", &config.coordinator_tls_cert)?,
            read("coordinator_tls_key", &config.coordinator_tls_key)?,
        ));
    }
    Ok(Some(tls))
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {path:?}: {e}"))
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {path:?}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key} {path:?}: no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
fn private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{key} {path:?}: no PEM private key in the file ({e})"))
}
