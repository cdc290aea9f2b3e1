//! TLS for the tests: certificates made at test time (rcgen on ring) into the test's
//! directory, and a throwaway MariaDB server that serves TLS (the shared one at
//! 127.0.0.1:3306 is left as it is).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::dir::TempDir;
use crate::process::{free_addr, Process};
use crate::wait::eventually;

/// PEM files in a test's directory: one CA and what it signed, and a CA that signed
/// nothing here (a client trusting it must refuse every certificate below).
pub struct TestCerts {
    pub ca: PathBuf,
    /// For 127.0.0.1 and localhost, good for server and client authentication (as a
    /// coordinator cluster member's must be: it is shown to the other members too).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (a proxy's, to a coordinator asking for one).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A server certificate from `ca` for `backend.invalid` only: right CA, wrong name.
    pub other_name_cert: PathBuf,
    pub other_name_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestCerts {
    /// Makes every certificate and key under `dir/tls/`.
    pub fn generate(dir: &TempDir) -> TestCerts {
        let at = dir.0.join("tls");
        std::fs::create_dir_all(&at).expect("tls dir");
        let write = |name: &str, pem: String| {
            let p = at.join(name);
            std::fs::write(&p, pem).expect("writing a PEM file");
            p
        };
        let (ca_pem, ca) = authority("Rewind test CA");
        let (other_pem, _) = authority("Rewind unrelated CA");
        let leaf = |names: &[&str], cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let mut p = CertificateParams::new(names).expect("names");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = usages;
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &ca).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_cert, server_key) = leaf(
            &["127.0.0.1", "localhost"],
            "rewind test server",
            vec![ServerAuth, ClientAuth],
        );
        let (client_cert, client_key) = leaf(&[], "rewind test proxy", vec![ClientAuth]);
        let (other_cert, other_key) =
            leaf(&["backend.invalid"], "backend.invalid", vec![ServerAuth]);
        TestCerts {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            other_name_cert: write("other-name.pem", other_cert),
            other_name_key: write("other-name-key.pem", other_key),
            other_ca: write("other-ca.pem", other_pem),
        }
    }
}

/// A self-signed CA: its PEM and the issuer that signs with it.
fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    (cert.pem(), Issuer::new(p, key))
}

/// A MariaDB server of its own (`mariadb-install-db` into the test's directory, then
/// `mariadbd` on a free port) serving TLS with the given certificate, and a user `tls`
/// (password `tls-secret`) that may only log in over TLS. root has no password, from
/// 127.0.0.1 only. Grants are in force (no `--skip-grant-tables`). Stopped on drop.
pub struct TlsMariaDb {
    pub process: Process,
    pub addr: SocketAddr,
}

/// The user [`TlsMariaDb`] requires TLS of.
pub const TLS_USER: &str = "tls";
pub const TLS_PASSWORD: &str = "tls-secret";

impl TlsMariaDb {
    pub async fn start(dir: &TempDir, cert: &Path, key: &Path, ca: &Path) -> TlsMariaDb {
        let data = dir.0.join("mariadb-data");
        let installed = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("mariadb-install-db runs (MariaDB server package)");
        assert!(
            installed.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let addr = free_addr();
        let args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--port={}", addr.port()),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", dir.0.join("mariadb.sock").display()),
            format!("--pid-file={}", dir.0.join("mariadb.pid").display()),
            "--user=root".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=32M".into(),
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            format!("--ssl-ca={}", ca.display()),
        ];
        let process = Process::spawn(Path::new("mariadbd"), &args, dir.0.join("mariadb.log"));
        let root = root_opts(addr.port());
        eventually(
            "the throwaway MariaDB answers",
            Duration::from_secs(30),
            || {
                let root = root.clone();
                async move { mysql_async::Conn::new(root).await.is_ok() }
            },
        )
        .await;
        let mut c = mysql_async::Conn::new(root).await.expect("root");
        for sql in [
            format!("CREATE USER '{TLS_USER}'@'%' IDENTIFIED BY '{TLS_PASSWORD}' REQUIRE SSL"),
            format!("GRANT ALL ON *.* TO '{TLS_USER}'@'%'"),
            // The database the tests use, as on the shared server.
            "CREATE DATABASE IF NOT EXISTS test".into(),
        ] {
            c.query_drop(sql)
                .await
                .expect("setting up the throwaway MariaDB");
        }
        c.disconnect().await.ok();
        TlsMariaDb { process, addr }
    }

    /// `mysql://tls:…@127.0.0.1:<port>`: a login this server takes over TLS only.
    pub fn url(&self) -> String {
        format!(
            "mysql://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}",
            self.addr.port()
        )
    }
}

fn root_opts(port: u16) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
}
