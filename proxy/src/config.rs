//! Proxy configuration: one source of defaults (`Default`), TOML with unknown keys
//! rejected, flags applied on top by `main.rs`, then `validate`.

use serde::Deserialize;

/// Everything the proxy needs to run; passed explicitly, never global.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the MySQL listener binds.
    pub listen: String,
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); empty:
    /// none.
    pub admin_addr: String,
    /// Backend MySQL/MariaDB URL; its user+password are the only accepted login when
    /// `users` is empty.
    pub backend: String,
    /// Coordinator gRPC address(es), comma-separated for a cluster.
    pub coordinator: String,
    /// Schema holding `undo_log` on the backend; created on start.
    pub undo_schema: String,
    /// Name of the backend as a resource in the coordinator. Every proxy in front of the
    /// same backend must use the same one (any of them can then run phase two for a
    /// branch); empty means `host:port` of `backend`.
    pub resource_id: String,
    /// Global-lock retries at a branch's COMMIT (and for locking reads and isolated
    /// writes): this many further tries, this many milliseconds apart, then error 1205.
    pub lock_retry_interval_ms: u64,
    pub lock_retry_count: u32,
    /// One coordinator call's deadline, and how long a call keeps retrying (following the
    /// leader, skipping dead nodes) before the client gets an error.
    pub coordinator_timeout_ms: u64,
    pub coordinator_retry_ms: u64,
    /// How long a branch's phase-one success report may wait to ride on another call
    /// (the next registration through this proxy) or to be made moot by the branch's
    /// phase-two command, before it goes in a call of its own; meanwhile the console shows
    /// the branch `registered` rather than `phase_one_done`. 0: every report at once.
    pub phase_one_report_hold_ms: u64,
    /// Backend connections the proxy keeps for phase two (undo, undo-record deletes).
    pub phase_two_connections: usize,
    /// Undo housekeeping: every this many seconds, look at undo records older than
    /// `undo_retention_secs` and delete those whose global transaction has finished.
    pub undo_housekeeping_secs: u64,
    pub undo_retention_secs: u64,
    /// Client sessions served at once; the next one gets error 1040.
    pub max_connections: usize,
    /// Threads client sessions run on, each a single-threaded runtime with its own
    /// backend connections (a session never changes thread: no cross-thread wake-up on
    /// a query's path). 0 (default): sessions share the process's work-stealing runtime.
    /// Experimental: see `shards`.
    pub session_threads: usize,
    /// Worker threads of the process's runtime. 0 (default): one per CPU core. On a small
    /// host shared with the database, fewer workers wake each other less often: on 2 cores
    /// beside MariaDB, 1 worker served sysbench through the proxy faster than 2 (see
    /// `bench/passthrough`) and AT transfers as fast.
    pub worker_threads: usize,
    /// Seconds running statements get to finish after SIGTERM before connections are cut.
    pub shutdown_grace_secs: u64,
    /// Seconds allowed for a client handshake and for getting a backend connection.
    pub connect_timeout_secs: u64,
    /// TCP keep-alive on client and backend connections: after this many idle seconds the
    /// kernel probes the peer, so a client host that vanished without closing its
    /// connection (powered off, cut off) ends its session, rolling its open transaction
    /// back, instead of holding the session, its backend connection and the transaction's
    /// row locks until the backend's `wait_timeout`. 0: no keep-alive.
    pub tcp_keepalive_secs: u64,
    /// Accepted client logins. Empty: exactly the backend URL's user and password.
    pub users: Vec<User>,
    /// Whether UPDATE and DELETE statements without an XID wait for the global locks of
    /// the rows they touch (on tables that hold any) instead of overwriting them.
    pub write_isolation: WriteIsolation,
    /// Consumer barrier: a (consumer, message id) pair is remembered this many seconds; a
    /// duplicate delivered later than that is processed again.
    pub barrier_retention_secs: u64,
    /// TCC fence: a branch's phase rows are remembered this many seconds; a Confirm or
    /// Cancel repeated later than that runs again, a Try later than its Cancel applies.
    pub tcc_fence_retention_secs: u64,
    /// How often an idle client session pings its backend connection, so a backend
    /// session ended by KILL, a restart or a failover closes the client's connection while
    /// the client is idle (its pool then replaces it). 0: never (the client finds out on its
    /// next command).
    pub idle_check_ms: u64,
    /// The local message table's relay (`[outbox]`).
    pub outbox: OutboxConfig,
    /// What a plain `/*+ XID('…') */` tag makes of a local transaction: an AT branch
    /// (undo from row images) or an XA branch (XA START … XA PREPARE). `XA('…')` always
    /// means XA.
    pub branch_mode: BranchMode,
    /// Prepared XA branches whose backend connection is kept for phase two; past this,
    /// a prepared branch's connection is closed and phase two runs on another (the
    /// prepared transaction survives the disconnect).
    pub xa_max_pinned: usize,
    /// How often prepared XA transactions in the backend (XA RECOVER) are matched against
    /// the coordinator, so one whose proxy died before registering it is rolled back.
    pub xa_recovery_secs: u64,
    /// Proof rows of XA branches (what tells a committed branch from a rolled-back one
    /// after a lost answer) are kept this many seconds.
    pub xa_proof_retention_secs: u64,
    /// Client TLS: the MySQL listener's certificate chain and private key (PEM files).
    /// Set, the handshake offers TLS and a client that asks for it gets it; empty: the
    /// listener is plain only.
    pub tls_cert: String,
    pub tls_key: String,
    /// A client that logs in without TLS gets MySQL's error 3159 and is disconnected
    /// (MySQL's `require_secure_transport`); needs `tls_cert`.
    pub require_secure_transport: bool,
    /// TLS on the backend connections (see [`BackendTls`]).
    pub backend_tls: BackendTls,
    /// The CA certificate(s) (PEM) the backend's certificate must chain to.
    pub backend_tls_ca: String,
    /// TLS to the coordinator: the CA certificate(s) (PEM) its gRPC certificate must chain
    /// to. Set, the coordinator addresses are `https://` (a bare `host:port` is taken as
    /// one); empty, `http://`.
    pub coordinator_tls_ca: String,
    /// The certificate chain and key (PEM) this proxy shows a coordinator that asks for
    /// client certificates (mutual TLS); needs `coordinator_tls_ca`.
    pub coordinator_tls_cert: String,
    pub coordinator_tls_key: String,
    /// OTLP/gRPC endpoint to export traces to (e.g. `http://127.0.0.1:4317`); empty:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else traces are off (no spans are made).
    pub otlp_endpoint: String,
}

/// See [`Config::backend_tls`]; MySQL's `--ssl-mode` values of the same names.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendTls {
    /// Plain connections.
    #[default]
    Off,
    /// Encrypted; the backend's certificate is not checked.
    Required,
    /// Encrypted; the certificate must chain to `backend_tls_ca`, whatever name it has.
    VerifyCa,
    /// Encrypted; the certificate must chain to `backend_tls_ca` (or, without one, to a
    /// public root) and name the host in `backend`.
    VerifyIdentity,
}

/// See [`Config::branch_mode`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BranchMode {
    #[default]
    At,
    Xa,
}

/// `[outbox]`: where and how the relay publishes `<undo_schema>.outbox` rows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// `amqp://…` / `amqps://…` (RabbitMQ: exchange below, routing key = topic,
    /// persistent) or `nats://…` / `tls://…` (JetStream: subject = topic). Empty: no relay;
    /// rows wait in the table.
    pub broker: String,
    /// AMQP exchange.
    pub exchange: String,
    /// AMQP: a message no queue is bound for is refused (retried, then DEAD) instead of
    /// being dropped by the broker.
    pub mandatory: bool,
    /// Refusals by the broker before a row is DEAD.
    pub max_attempts: u32,
    /// Backoff after a refusal: doubles from `backoff_initial_ms` up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Bound on connecting and on one publish's confirm.
    pub publish_timeout_ms: u64,
    /// Sweep for rows written directly or stranded by a crash this often.
    pub sweep_interval_ms: u64,
    /// Rows taken per sweep.
    pub batch: usize,
    /// PUBLISHED rows are deleted this long after publication.
    pub retention_secs: u64,
    /// How often the proxy reports the outbox and barrier, and the lock waits on its
    /// prepared XA branches, to the coordinator's console.
    pub report_interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            broker: String::new(),
            exchange: "amq.topic".into(),
            mandatory: true,
            max_attempts: 10,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            publish_timeout_ms: 5_000,
            sweep_interval_ms: 1_000,
            batch: 256,
            retention_secs: 24 * 3600,
            report_interval_ms: 5_000,
        }
    }
}

/// See [`Config::write_isolation`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteIsolation {
    /// Every UPDATE/DELETE through the proxy respects global locks.
    #[default]
    All,
    /// Writes without an XID are never checked (Seata's behaviour without @GlobalLock).
    Off,
}

/// One accepted client login.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub password: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:3307".into(),
            admin_addr: "127.0.0.1:9307".into(),
            backend: "mysql://root@127.0.0.1:3306".into(),
            coordinator: "http://127.0.0.1:8091".into(),
            undo_schema: "rewind".into(),
            resource_id: String::new(),
            lock_retry_interval_ms: 10,
            lock_retry_count: 30,
            coordinator_timeout_ms: 2_000,
            coordinator_retry_ms: 5_000,
            phase_one_report_hold_ms: 100,
            phase_two_connections: 8,
            undo_housekeeping_secs: 300,
            undo_retention_secs: 3_600,
            max_connections: 1024,
            session_threads: 0,
            worker_threads: 0,
            shutdown_grace_secs: 30,
            connect_timeout_secs: 10,
            tcp_keepalive_secs: 60,
            users: Vec::new(),
            write_isolation: WriteIsolation::All,
            barrier_retention_secs: 7 * 24 * 3600,
            tcc_fence_retention_secs: 7 * 24 * 3600,
            idle_check_ms: 1_000,
            outbox: OutboxConfig::default(),
            branch_mode: BranchMode::At,
            xa_max_pinned: 256,
            xa_recovery_secs: 30,
            xa_proof_retention_secs: 7 * 24 * 3600,
            tls_cert: String::new(),
            tls_key: String::new(),
            require_secure_transport: false,
            backend_tls: BackendTls::Off,
            backend_tls_ca: String::new(),
            coordinator_tls_ca: String::new(),
            coordinator_tls_cert: String::new(),
            coordinator_tls_key: String::new(),
            otlp_endpoint: String::new(),
        }
    }
}

impl Config {
    /// Parses a TOML config file's text (unknown keys are an error).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.worker_threads > 1024 {
            return Err("worker_threads must be at most 1024 (0: one per CPU core)".into());
        }
        if self.tcp_keepalive_secs > crate::keepalive::MAX_IDLE_SECS {
            return Err(format!(
                "tcp_keepalive_secs must be at most {} (0: no keep-alive)",
                crate::keepalive::MAX_IDLE_SECS
            ));
        }
        if self.phase_one_report_hold_ms > 60_000 {
            return Err("phase_one_report_hold_ms must be at most 60000 (0: at once)".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        mysql_async::Opts::from_url(&self.backend)
            .map_err(|e| format!("backend URL {:?}: {e}", self.backend))?;
        if !self.admin_addr.is_empty() && !self.admin_addr.contains(':') {
            return Err(format!(
                "admin_addr {:?}: expected host:port, or empty for no admin listener",
                self.admin_addr
            ));
        }
        if self.undo_schema.is_empty() {
            return Err("undo_schema must not be empty".into());
        }
        if self.coordinator.split(',').all(|c| c.trim().is_empty()) {
            return Err("coordinator must name at least one address".into());
        }
        if self.coordinator_timeout_ms == 0 || self.phase_two_connections == 0 {
            return Err("coordinator_timeout_ms and phase_two_connections must be positive".into());
        }
        if self.undo_housekeeping_secs == 0 {
            return Err("undo_housekeeping_secs must be positive".into());
        }
        if self.xa_recovery_secs == 0 || self.xa_proof_retention_secs == 0 {
            return Err("xa_recovery_secs and xa_proof_retention_secs must be positive".into());
        }
        if self.barrier_retention_secs == 0 || self.tcc_fence_retention_secs == 0 {
            return Err(
                "barrier_retention_secs and tcc_fence_retention_secs must be positive".into(),
            );
        }
        let o = &self.outbox;
        if !o.broker.is_empty() {
            let scheme = o.broker.split("://").next().unwrap_or("");
            if !o.broker.contains("://") || !["amqp", "amqps", "nats", "tls"].contains(&scheme) {
                return Err(format!(
                    "outbox.broker {:?}: expected amqp://, amqps://, nats:// or tls://",
                    o.broker
                ));
            }
        }
        if o.max_attempts == 0 || o.batch == 0 {
            return Err("outbox.max_attempts and outbox.batch must be positive".into());
        }
        if o.backoff_initial_ms == 0 || o.backoff_max_ms < o.backoff_initial_ms {
            return Err("outbox: 0 < backoff_initial_ms <= backoff_max_ms".into());
        }
        if o.publish_timeout_ms == 0
            || o.sweep_interval_ms == 0
            || o.retention_secs == 0
            || o.report_interval_ms == 0
        {
            return Err(
                "outbox: publish_timeout_ms, sweep_interval_ms, retention_secs and \
                 report_interval_ms must be positive"
                    .into(),
            );
        }
        self.validate_tls()
    }

    /// The TLS keys' combinations (the files themselves are read at start, see
    /// [`crate::tls`]).
    fn validate_tls(&self) -> Result<(), String> {
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err("tls_cert and tls_key go together: set both or neither".into());
        }
        if self.require_secure_transport && self.tls_cert.is_empty() {
            return Err("require_secure_transport needs tls_cert and tls_key".into());
        }
        match self.backend_tls {
            BackendTls::Off if !self.backend_tls_ca.is_empty() => {
                return Err("backend_tls_ca is set but backend_tls is \"off\"".into());
            }
            BackendTls::VerifyCa if self.backend_tls_ca.is_empty() => {
                return Err("backend_tls = \"verify_ca\" needs backend_tls_ca".into());
            }
            _ => {}
        }
        if self.coordinator_tls_cert.is_empty() != self.coordinator_tls_key.is_empty() {
            return Err(
                "coordinator_tls_cert and coordinator_tls_key go together: set both or neither"
                    .into(),
            );
        }
        let tls = !self.coordinator_tls_ca.is_empty();
        if !tls && !self.coordinator_tls_cert.is_empty() {
            return Err("coordinator_tls_cert needs coordinator_tls_ca".into());
        }
        // tonic would connect to an http:// address in the clear even with TLS set up.
        let wrong = if tls { "http://" } else { "https://" };
        if let Some(url) = self
            .coordinator
            .split(',')
            .map(str::trim)
            .find(|u| u.starts_with(wrong))
        {
            return Err(if tls {
                format!("coordinator {url:?}: with coordinator_tls_ca set, use https://")
            } else {
                format!("coordinator {url:?}: https:// needs coordinator_tls_ca")
            });
        }
        Ok(())
    }

    /// The resource id this proxy registers branches under.
    pub fn resource(&self) -> String {
        if !self.resource_id.is_empty() {
            return self.resource_id.clone();
        }
        match mysql_async::Opts::from_url(&self.backend) {
            Ok(o) => format!("{}:{}", o.ip_or_hostname(), o.tcp_port()),
            Err(_) => self.backend.clone(),
        }
    }

    /// The accepted (user, password) pairs after applying the "backend URL user" rule.
    pub fn logins(&self) -> Vec<User> {
        if !self.users.is_empty() {
            return self.users.clone();
        }
        match mysql_async::Opts::from_url(&self.backend) {
            Ok(o) => vec![User {
                name: o.user().unwrap_or("").to_string(),
                password: o.pass().unwrap_or("").to_string(),
            }],
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../rewind-proxy.example.toml");
        let c = Config::from_toml(text).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.admin_addr, Config::default().admin_addr);
    }

    #[test]
    fn admin_addr_is_host_port_or_empty() {
        let with = |admin_addr: &str| Config {
            admin_addr: admin_addr.into(),
            ..Config::default()
        };
        assert!(with("").validate().is_ok());
        assert!(with("0.0.0.0:9307").validate().is_ok());
        assert!(with("9307").validate().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("listen = \"x\"\nbogus = 1\n").is_err());
        assert!(Config::from_toml("[[users]]\nname = \"a\"\npasword = \"typo\"\n").is_err());
    }

    #[test]
    fn tls_keys_come_in_working_combinations() {
        let ok = |text: &str| Config::from_toml(text).unwrap().validate();
        assert!(
            ok("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nrequire_secure_transport = true")
                .is_ok()
        );
        assert!(ok("tls_cert = \"c.pem\"").is_err());
        assert!(ok("require_secure_transport = true").is_err());
        assert!(ok("backend_tls = \"verify_ca\"").is_err());
        assert!(ok("backend_tls = \"verify_ca\"\nbackend_tls_ca = \"ca.pem\"").is_ok());
        assert!(ok("backend_tls = \"required\"").is_ok());
        assert!(ok("backend_tls_ca = \"ca.pem\"").is_err());
        assert!(Config::from_toml("backend_tls = \"verify\"").is_err());
        assert!(ok("coordinator = \"https://c:1\"").is_err());
        assert!(ok("coordinator = \"https://c:1\"\ncoordinator_tls_ca = \"ca.pem\"").is_ok());
        assert!(ok("coordinator = \"c:1\"\ncoordinator_tls_ca = \"ca.pem\"").is_ok());
        assert!(ok("coordinator = \"http://c:1\"\ncoordinator_tls_ca = \"ca.pem\"").is_err());
        assert!(ok("coordinator = \"c:1\"\ncoordinator_tls_cert = \"c.pem\"\ncoordinator_tls_key = \"k.pem\"").is_err());
    }

    #[test]
    fn worker_threads_are_bounded() {
        let ok = |text: &str| Config::from_toml(text).unwrap().validate();
        assert!(ok("worker_threads = 0").is_ok());
        assert!(ok("worker_threads = 1").is_ok());
        assert!(ok("worker_threads = 1025").is_err());
        assert!(Config::from_toml("worker_threads = -1").is_err());
        assert!(ok("tcp_keepalive_secs = 0").is_ok());
        assert!(ok("tcp_keepalive_secs = 32767").is_ok());
        assert!(ok("tcp_keepalive_secs = 32768").is_err());
        assert!(ok("phase_one_report_hold_ms = 0").is_ok());
        assert!(ok("phase_one_report_hold_ms = 60000").is_ok());
        assert!(ok("phase_one_report_hold_ms = 60001").is_err());
    }

    #[test]
    fn backend_url_user_is_the_default_login() {
        let c = Config {
            backend: "mysql://app:s3cret@db:3306/x".into(),
            ..Config::default()
        };
        assert_eq!(
            c.logins(),
            vec![User {
                name: "app".into(),
                password: "s3cret".into()
            }]
        );
    }
}
