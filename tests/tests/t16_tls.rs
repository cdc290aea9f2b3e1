//! TLS end to end, real processes and real clients; certificates made at test time
//! (`TestCerts`: a CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate, and an unrelated CA).
//!
//! - Client ↔ proxy: mysql_async verifying the proxy's certificate runs queries and a
//!   global AT transaction over TLS; the `mariadb` CLI with `--ssl-verify-server-cert`
//!   reports its own connection encrypted (its `status`); a client trusting another CA
//!   is refused. Under `require_secure_transport` a plain login gets 3159 and is
//!   disconnected while TLS sessions go on, and a garbage ClientHello after an SSLRequest
//!   costs only its own connection. Wrong certificate or key paths stop the proxy at
//!   start, naming the file.
//! - Proxy ↔ backend: a throwaway MariaDB of the test's own serving TLS (see
//!   `t16_backend_tls_modes` for why not a second proxy).
//! - Proxy ↔ coordinator and coordinator ↔ coordinator: gRPC over TLS with client
//!   certificates required; a proxy without one cannot reach the coordinator (1429); a
//!   three-member cluster over mutual TLS elects a leader and commits.
//!
//! Not covered: go-sql-driver/mysql over TLS (`tls=custom`): the machine this was written
//! on has no Go toolchain; `t95_go_driver` covers the driver in plain.

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use rewind_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// mysql_async's TLS options trusting only `ca` (the name is checked: 127.0.0.1).
fn verified(ca: &Path) -> SslOpts {
    SslOpts::default()
        .with_root_certs(vec![ca.to_path_buf().into()])
        .with_disable_built_in_roots(true)
}

fn over_tls(proxy: &Proxy, db: &str, ca: &Path) -> OptsBuilder {
    proxy.opts(db).ssl_opts(verified(ca))
}

/// Writes a proxy or coordinator configuration file into the test's directory.
fn config(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, text).expect("config file");
    path.display().to_string()
}

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

async fn value(c: &mut Conn, id: i64) -> i64 {
    c.exec_first("SELECT v FROM t WHERE id = ?", (id,))
        .await
        .unwrap()
        .expect("row")
}

/// BEGIN; tagged UPDATE; COMMIT: one AT branch of `xid`.
async fn at_branch(c: &mut Conn, xid: &str, id: i64, delta: i64) -> Result<(), mysql_async::Error> {
    c.query_drop("BEGIN").await?;
    let r = async {
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE t SET v = v + {delta} WHERE id = {id}"
        ))
        .await?;
        c.query_drop("COMMIT").await
    }
    .await;
    if r.is_err() {
        let _ = c.query_drop("ROLLBACK").await;
    }
    r
}

/// The `mariadb` CLI against 127.0.0.1:`port` (TCP) with `args`: success and its output.
async fn mariadb_cli(port: u16, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=TCP",
                "-h",
                "127.0.0.1",
                "-uroot",
            ])
            .arg(format!("-P{port}"))
            .args(&args)
            .output()
            .expect("the mariadb CLI runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// A sample of the proxy's `/metrics`.
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let a = request(admin, "GET", "/metrics", None, &[])
        .await
        .expect("GET /metrics");
    let text = String::from_utf8(a.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_clients_over_tls_run_a_global_transaction() {
    const DB: &str = "t16_tls_clients";
    let dir = TempDir::new("tls-clients");
    let certs = TestCerts::generate(&dir);
    setup(DB).await;
    let coord = Coordinator::start(&dir, &[]).await;
    let cfg = config(
        &dir,
        "proxy.toml",
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            certs.server_cert, certs.server_key
        ),
    );
    let admin = free_addr();
    let admin_arg = admin.to_string();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", &cfg, "--admin-addr", &admin_arg],
    )
    .await;
    let before = metric(admin, "rewind_proxy_tls_sessions_total").await;

    // Phase 1: mysql_async verifies the proxy's certificate and runs a global
    // transaction over TLS.
    let mut c = Conn::new(over_tls(&proxy, DB, &certs.ca))
        .await
        .expect("a TLS connection to the proxy");
    assert_eq!(
        metric(admin, "rewind_proxy_tls_sessions_total").await - before,
        1.0
    );
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    let xid = coord.begin(30_000).await;
    at_branch(&mut c, &xid, 1, 7).await.unwrap();
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(value(&mut direct(DB).await, 1).await, 7);
    // A big result crosses many TLS records.
    let big: Option<String> = c.query_first("SELECT REPEAT('x', 300000)").await.unwrap();
    assert_eq!(big.map(|s| s.len()), Some(300_000));

    // Phase 2: a client that trusts another CA refuses the proxy's certificate; a plain
    // client is still served (TLS is not required here).
    let wrong = Conn::new(over_tls(&proxy, DB, &certs.other_ca)).await;
    assert!(
        matches!(&wrong, Err(mysql_async::Error::Io(_))),
        "a certificate from an unknown CA was accepted: {wrong:?}"
    );
    let mut plain = proxy.conn(DB).await;
    assert_eq!(value(&mut plain, 1).await, 7);

    // Phase 3: the mariadb CLI, verifying the certificate, reports its own connection
    // encrypted; with the wrong CA it does not connect.
    let port = proxy.addr.port();
    let ca = certs.ca.display().to_string();
    let (ok, out) = mariadb_cli(
        port,
        vec![
            "--ssl".into(),
            format!("--ssl-ca={ca}"),
            "--ssl-verify-server-cert".into(),
            DB.into(),
            "-e".into(),
            "status; SELECT v FROM t WHERE id = 1".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let ssl_line = out
        .lines()
        .find(|l| l.starts_with("SSL:"))
        .unwrap_or_else(|| panic!("no SSL line in the CLI's status:\n{out}"));
    assert!(ssl_line.contains("Cipher in use is"), "{ssl_line}");
    assert!(out.lines().any(|l| l.trim() == "7"), "{out}");
    let (ok, out) = mariadb_cli(
        port,
        vec![
            "--ssl".into(),
            format!("--ssl-ca={}", certs.other_ca.display()),
            "--ssl-verify-server-cert".into(),
            "-e".into(),
            "SELECT 1".into(),
        ],
    )
    .await;
    assert!(
        !ok,
        "the CLI accepted a certificate from an unknown CA:\n{out}"
    );
    let (ok, out) = mariadb_cli(
        port,
        vec!["--skip-ssl".into(), "-e".into(), "status".into()],
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("SSL:") && l.contains("Not in use")),
        "{out}"
    );
    c.disconnect().await.unwrap();
}

/// An SSLRequest: CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION |
/// CLIENT_PLUGIN_AUTH, max packet, utf8mb4, 23 zero bytes; as packet 1.
fn ssl_request() -> Vec<u8> {
    let caps: u32 = 0x200 | 0x800 | 0x8000 | 0x8_0000;
    let mut p = vec![32, 0, 0, 1];
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_require_secure_transport_refuses_plain_logins() {
    const DB: &str = "t16_tls_required";
    let dir = TempDir::new("tls-required");
    let certs = TestCerts::generate(&dir);
    setup(DB).await;
    let coord = Coordinator::start(&dir, &[]).await;
    let cfg = config(
        &dir,
        "proxy.toml",
        &format!(
            // A long handshake timeout: a garbage ClientHello must be refused at once, not
            // when the handshake times out.
            "tls_cert = {:?}\ntls_key = {:?}\nrequire_secure_transport = true\n\
             connect_timeout_secs = 60\n",
            certs.server_cert, certs.server_key
        ),
    );
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &["--config", &cfg]).await;

    // Phase 1: a TLS session opens; a plain login is refused with 3159.
    let mut tls = Conn::new(over_tls(&proxy, DB, &certs.ca)).await.unwrap();
    tls.query_drop("BEGIN").await.unwrap();
    tls.query_drop("UPDATE t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    let (code, state, message) = server_error(Conn::new(proxy.opts(DB)).await).unwrap();
    assert_eq!((code, state.as_str()), (3159, "HY000"));
    assert_eq!(
        message,
        "Connections using insecure transport are prohibited while --require_secure_transport=ON."
    );
    let (ok, out) = mariadb_cli(
        proxy.addr.port(),
        vec!["--skip-ssl".into(), "-e".into(), "SELECT 1".into()],
    )
    .await;
    assert!(!ok && out.contains("3159"), "{out}");

    // Phase 2: an SSLRequest followed by garbage instead of a ClientHello: that
    // connection is closed, nothing else is disturbed.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        // Application data before any handshake.
        &[0x17, 0x03, 0x03, 0x00, 0x03, 1, 2, 3][..],
    ] {
        let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut header = [0u8; 4];
        raw.read_exact(&mut header).await.unwrap();
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        let mut greeting = vec![0u8; len];
        raw.read_exact(&mut greeting).await.unwrap();
        raw.write_all(&ssl_request()).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest))
            .await
            .expect("the proxy closes a connection whose TLS handshake failed");
        // A TLS alert at most; never a MySQL packet.
        assert!(
            closed.is_err() || rest.first().is_none_or(|b| *b == 0x15),
            "{rest:?}"
        );
    }
    tls.query_drop("COMMIT").await.unwrap();
    assert_eq!(value(&mut tls, 2).await, 1);
    let mut again = Conn::new(over_tls(&proxy, DB, &certs.ca)).await.unwrap();
    assert_eq!(value(&mut again, 2).await, 1);
    let (ok, out) = mariadb_cli(
        proxy.addr.port(),
        vec![
            "--ssl".into(),
            format!("--ssl-ca={}", certs.ca.display()),
            "--ssl-verify-server-cert".into(),
            "-e".into(),
            "SELECT 'tls ok'".into(),
        ],
    )
    .await;
    assert!(ok && out.contains("tls ok"), "{out}");
    tls.disconnect().await.unwrap();
    again.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_bad_certificate_paths_stop_the_proxy_at_start() {
    let dir = TempDir::new("tls-bad-paths");
    let certs = TestCerts::generate(&dir);
    let missing = dir.0.join("nowhere/cert.pem");
    let cases = [
        (
            format!("tls_cert = {missing:?}\ntls_key = {:?}\n", certs.server_key),
            missing.display().to_string(),
        ),
        // A certificate where the key should be.
        (
            format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                certs.server_cert, certs.server_cert
            ),
            format!("tls_key {:?}", certs.server_cert.display().to_string()),
        ),
        (
            format!("backend_tls = \"verify_ca\"\nbackend_tls_ca = {missing:?}\n"),
            format!("backend_tls_ca {:?}", missing.display().to_string()),
        ),
        (
            format!(
                "coordinator = \"https://127.0.0.1:1\"\ncoordinator_tls_ca = {:?}\n\
                 coordinator_tls_cert = {:?}\ncoordinator_tls_key = {missing:?}\n",
                certs.ca, certs.client_cert
            ),
            format!("coordinator_tls_key {:?}", missing.display().to_string()),
        ),
    ];
    for (i, (text, named)) in cases.iter().enumerate() {
        let cfg = config(&dir, &format!("bad-{i}.toml"), text);
        let listen = free_addr().to_string();
        let mut p = Process::spawn(
            &binary("rewind-proxy"),
            &[
                "--config".into(),
                cfg,
                "--listen".into(),
                listen,
                "--admin-addr".into(),
                String::new(),
            ],
            dir.0.join(format!("bad-{i}.log")),
        );
        let status = p
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("case {i}: the proxy started anyway"));
        assert!(!status.success(), "case {i}");
        let log = p.log_text();
        assert!(
            log.contains("invalid configuration") && log.contains(named.as_str()),
            "case {i}: the error does not name {named}:\n{log}"
        );
    }
}

/// Backend TLS against a MariaDB server of the test's own: `mariadb-install-db` and
/// `mariadbd` with `ssl_cert`/`ssl_key`/`ssl_ca`, grants in force, and a user that may
/// only log in over TLS (`REQUIRE SSL`). A real server rather than a second Rewind proxy
/// serving TLS: the proxy's backend TLS is then checked against another TLS stack
/// (MariaDB's OpenSSL) and against the server's own enforcement of TLS, and the test
/// does not depend on the proxy's listener being right to show its client side right.
/// Its certificate is signed by the test CA for `backend.invalid` only, so one server
/// tells `verify_ca` (accepted) from `verify_identity` (refused: not 127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_backend_tls_modes() {
    let dir = TempDir::new("tls-backend");
    let certs = TestCerts::generate(&dir);
    let db = TlsMariaDb::start(
        &dir,
        &certs.other_name_cert,
        &certs.other_name_key,
        &certs.ca,
    )
    .await;
    let root = || {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(db.addr.port())
            .user(Some("root"))
            .db_name(Some("test"))
            .prefer_socket(false)
    };
    let mut admin = Conn::new(root()).await.unwrap();
    admin
        .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    admin
        .query_drop("INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let coord = Coordinator::start(&dir, &[]).await;
    let url = db.url();
    let backend = |name: &str, mode: &str, ca: &Path| {
        config(
            &dir,
            &format!("{name}.toml"),
            &format!("backend_tls = {mode:?}\nbackend_tls_ca = {ca:?}\n"),
        )
    };

    // Phase 1: verify_ca with the CA that signed the server's certificate: sessions,
    // phase two and the undo table all go over TLS (the backend's user takes nothing
    // else); the backend sees the session encrypted.
    let cfg = backend("verify-ca", "verify_ca", &certs.ca);
    let proxy = Proxy::start(
        &dir,
        "proxy-verify-ca",
        &coord.grpc_url(),
        &["--config", &cfg, "--backend", &url],
    )
    .await;
    let mut c = Conn::new(
        proxy
            .opts("test")
            .user(Some("tls"))
            .pass(Some("tls-secret")),
    )
    .await
    .expect("a session on the TLS backend");
    let cipher: Option<(String, String)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap();
    let cipher = cipher.expect("Ssl_cipher").1;
    assert!(!cipher.is_empty(), "the backend session is not encrypted");
    let xid = coord.begin(30_000).await;
    at_branch(&mut c, &xid, 1, 5).await.unwrap();
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    let xid = coord.begin(30_000).await;
    at_branch(&mut c, &xid, 1, 100).await.unwrap();
    coord.rollback(&xid).await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    let v: Option<i64> = admin
        .query_first("SELECT v FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(v, Some(5), "one branch committed, one undone over TLS");
    c.disconnect().await.unwrap();

    // Phase 2: "required" (encrypted, certificate unchecked) is served too.
    let cfg = config(&dir, "required.toml", "backend_tls = \"required\"\n");
    let required = Proxy::start_unattached(
        &dir,
        "proxy-required",
        &coord.grpc_url(),
        &["--config", &cfg, "--backend", &url],
    )
    .await;
    let mut c = Conn::new(
        required
            .opts("test")
            .user(Some("tls"))
            .pass(Some("tls-secret")),
    )
    .await
    .expect("a session with backend_tls = required");
    let v: Option<i64> = c.query_first("SELECT v FROM t WHERE id = 1").await.unwrap();
    assert_eq!(v, Some(5));
    c.disconnect().await.unwrap();

    // Phase 3: the wrong CA, and the right CA with the name checked: the proxy refuses
    // the backend, the client gets 1429 and the proxy logs why.
    for (name, mode, ca) in [
        ("proxy-wrong-ca", "verify_ca", &certs.other_ca),
        ("proxy-identity", "verify_identity", &certs.ca),
    ] {
        let cfg = backend(name, mode, ca);
        let p = Proxy::start_unattached(
            &dir,
            name,
            &coord.grpc_url(),
            &["--config", &cfg, "--backend", &url],
        )
        .await;
        let opts = p.opts("test").user(Some("tls")).pass(Some("tls-secret"));
        let (code, _, message) = server_error(Conn::new(opts).await).unwrap();
        assert_eq!(code, 1429, "{name}: {message}");
        assert!(message.contains("cannot reach its backend"), "{message}");
        let log = p.process.log_text();
        assert!(
            log.contains("no backend connection") && log.to_lowercase().contains("certificate"),
            "{name}: the refusal is not logged with its reason:\n{log}"
        );
    }
    admin.disconnect().await.unwrap();
}

/// The coordinator's gRPC with `[tls]` and client certificates required.
fn coordinator_tls(certs: &TestCerts, extra: &str) -> String {
    format!(
        "{extra}[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        certs.server_cert, certs.server_key, certs.ca
    )
}

fn proxy_to_coordinator(certs: &TestCerts, with_cert: bool) -> String {
    let mut text = format!(
        "coordinator_tls_ca = {:?}\ncoordinator_retry_ms = 1000\n",
        certs.ca
    );
    if with_cert {
        text += &format!(
            "coordinator_tls_cert = {:?}\ncoordinator_tls_key = {:?}\n",
            certs.client_cert, certs.client_key
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_grpc_over_mutual_tls() {
    const DB: &str = "t16_tls_grpc";
    let dir = TempDir::new("tls-grpc");
    let certs = TestCerts::generate(&dir);
    setup(DB).await;
    let cfg = config(&dir, "coordinator.toml", &coordinator_tls(&certs, ""));
    let coord = Coordinator::start(&dir, &["--config", &cfg]).await;
    let url = format!("https://{}", coord.grpc);

    // Phase 1: a proxy with its client certificate attaches over TLS (Proxy::start
    // waits for that) and a global transaction commits, phase two included.
    let cfg = config(&dir, "proxy.toml", &proxy_to_coordinator(&certs, true));
    let proxy = Proxy::start(&dir, "proxy", &url, &["--config", &cfg]).await;
    let mut c = proxy.conn(DB).await;
    let xid = coord.begin(30_000).await;
    at_branch(&mut c, &xid, 1, 3).await.unwrap();
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(value(&mut c, 1).await, 3);

    // Phase 2: a proxy without a client certificate is refused by the coordinator: its
    // client's tagged work fails with 1429, nothing applied.
    let cfg = config(
        &dir,
        "proxy-nocert.toml",
        &proxy_to_coordinator(&certs, false),
    );
    let nocert = Proxy::start_unattached(&dir, "proxy-nocert", &url, &["--config", &cfg]).await;
    let mut c2 = nocert.conn(DB).await;
    let xid = coord.begin(30_000).await;
    let err = at_branch(&mut c2, &xid, 2, 1).await.unwrap_err();
    let (code, _, message) = server_error::<()>(Err(err)).unwrap();
    assert_eq!(code, 1429, "{message}");
    assert!(
        message.contains("cannot reach the coordinator"),
        "{message}"
    );
    assert_eq!(value(&mut c2, 2).await, 0, "nothing applied");
    assert!(
        nocert.process.log_count("attached to the coordinator") == 0,
        "a proxy without a certificate attached"
    );
    coord.rollback(&xid).await;
    c.disconnect().await.unwrap();
    c2.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t16_a_cluster_over_mutual_tls_elects_and_commits() {
    const DB: &str = "t16_tls_cluster";
    let dir = TempDir::new("tls-cluster");
    let certs = TestCerts::generate(&dir);
    setup(DB).await;
    // Raft between members over the same mutual TLS as the proxies' calls.
    let member = coordinator_tls(&certs, "tick_ms = 50\n");
    let (cluster, _) = CoordinatorCluster::start(&dir, &member).await;
    let urls = cluster
        .addrs
        .iter()
        .map(|(g, _)| format!("https://{g}"))
        .collect::<Vec<_>>()
        .join(",");
    let cfg = config(&dir, "proxy.toml", &proxy_to_coordinator(&certs, true));
    let proxy = Proxy::start(&dir, "proxy", &urls, &["--config", &cfg]).await;
    let mut c = proxy.conn(DB).await;
    let xid = cluster
        .call(
            "POST",
            "/api/v1/transactions",
            Some(&serde_json::json!({"timeout_ms": 30_000})),
        )
        .await["xid"]
        .as_str()
        .unwrap()
        .to_string();
    at_branch(&mut c, &xid, 1, 11).await.unwrap();
    cluster
        .call("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    eventually("committed", Duration::from_secs(20), || async {
        cluster.status(&xid).await == "committed"
    })
    .await;
    assert_eq!(value(&mut c, 1).await, 11);
    // Every member applied the commit: the log reached the followers over TLS.
    let (_, leader) = cluster.leader(Duration::from_secs(10)).await;
    let applied = |h| async move {
        match http(h, "GET", "/healthz", None).await {
            Ok((200, v)) => v["last_applied"].as_u64().unwrap_or(0),
            _ => 0,
        }
    };
    let committed_at = applied(leader).await;
    assert!(committed_at > 0);
    for (i, (_, h)) in cluster.addrs.iter().enumerate() {
        eventually(
            &format!("member {} applied the log", i + 1),
            Duration::from_secs(10),
            || async { applied(*h).await >= committed_at },
        )
        .await;
    }
    c.disconnect().await.unwrap();
}
