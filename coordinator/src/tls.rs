//! gRPC TLS (`[tls]`), rustls on ring: the listener's identity and, with `client_ca`, the
//! client certificates it requires; and, in a cluster, the TLS with which this member
//! calls the others (their certificates checked against `ca`, or `client_ca`, and this
//! member's own certificate shown to a member that asks for one).
//!
//! Every file is read and parsed at start, so a wrong path or a file that is not what
//! its key says stops the coordinator there, naming both.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::CoordinatorError;

/// The gRPC listener's TLS, and the Raft clients' (cluster mode).
pub struct GrpcTls {
    pub server: ServerTlsConfig,
    /// For calls to the other members (`https://`); `None` without a CA to check them by
    /// (a single node).
    pub peers: Option<ClientTlsConfig>,
}

pub fn load(t: &TlsConfig) -> Result<GrpcTls, CoordinatorError> {
    certificates("tls.cert", &t.cert)?;
    private_key("tls.key", &t.key)?;
    let identity = Identity::from_pem(read("tls.cert", &t.cert)?, read("tls.key", &t.key)?);
    let mut server = ServerTlsConfig::new().identity(identity.clone());
    if !t.client_ca.as_os_str().is_empty() {
        certificates("tls.client_ca", &t.client_ca)?;
        server = server.client_ca_root(Certificate::from_pem(read("tls.client_ca", &t.client_ca)?));
    }
    let (what, ca) = if t.ca.as_os_str().is_empty() {
        ("tls.client_ca", &t.client_ca)
    } else {
        ("tls.ca", &t.ca)
    };
    let peers = if ca.as_os_str().is_empty() {
        None
    } else {
        certificates(what, ca)?;
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(what, ca)?))
                .identity(identity),
        )
    };
    Ok(GrpcTls { server, peers })
}

fn invalid(key: &str, path: &Path, what: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::InvalidArgument(format!("{key} {}: {what}", path.display()))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, CoordinatorError> {
    std::fs::read(path).map_err(|e| invalid(key, path, e))
}

/// Checks that the PEM file at `path` holds at least one certificate.
fn certificates(key: &str, path: &Path) -> Result<(), CoordinatorError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "no certificate in the file"));
    }
    Ok(())
}

/// Checks that the PEM file at `path` holds a private key.
fn private_key(key: &str, path: &Path) -> Result<(), CoordinatorError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(drop)
        .map_err(|e| invalid(key, path, format!("no PEM private key in the file ({e})")))
}
