//! Configuration: one source of defaults ([`Config::default`]), a TOML file with
//! unknown keys rejected, command-line flags on top, then [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::EngineConfig;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub finished_retention_secs: u64,
    pub prune_interval_secs: u64,
    pub tick_ms: u64,
    pub phase_two_backoff_base_ms: u64,
    pub phase_two_backoff_cap_ms: u64,
    pub phase_two_command_timeout_ms: u64,
    /// How long a TCC Confirm or Cancel call may take (capped at the command timeout,
    /// so that a configuration written before TCC existed keeps starting).
    pub tcc_call_timeout_ms: u64,
    /// Failed Confirm / Cancel calls after which a TCC branch is `stalled` and waits for
    /// an operator (retry / mark done); 0 retries for ever.
    pub tcc_max_attempts: u32,
    pub rollback_wait_ms: u64,
    pub write_isolation_wait_ms: u64,
    pub max_batch: usize,
    /// Size of the pre-zeroed write-ahead log file in front of redb: the store's
    /// (`coordinator.wal`) and, in a cluster, the Raft log's (`raft-log.wal`) each.
    pub wal_bytes: u64,
    pub http_body_limit_bytes: usize,
    pub shutdown_grace_ms: u64,
    /// Operator name → secret (token or password) for the console and operator API.
    /// Empty: one is generated for `admin` in `data_dir/operator-token`.
    pub operators: std::collections::BTreeMap<String, String>,
    /// How long a console login lasts.
    pub operator_session_secs: u64,
    /// Who may call the API: `operator` (default) asks the operator credential for
    /// operator actions (conflict resolution, outbox redrive), the audit log and
    /// membership, and leaves the application calls and reads of DESIGN.md open (begin,
    /// commit, rollback, status, list, locks, conflicts, outbox); `all` asks it for
    /// every /api/v1 call.
    pub api_auth: ApiAuth,
    /// Cluster mode (Raft): absent for a single node.
    pub cluster: Option<ClusterConfig>,
    /// The message service: half messages, their check-back and their broker.
    pub messages: MessagesConfig,
    /// TLS on the gRPC listener (`[tls]`): absent, plain. HTTP stays plain.
    pub tls: Option<TlsConfig>,
    /// OTLP/gRPC endpoint to export traces to (e.g. `http://127.0.0.1:4317`); empty:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else traces are off.
    pub otlp_endpoint: String,
}

/// `[tls]`: the gRPC listener's certificate, and whom it asks for one.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain and private key (PEM files). Served to gRPC clients;
    /// in a cluster also shown to another member that asks for a client certificate (so
    /// a member's certificate is for both server and client authentication).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificate(s) (PEM): set, every gRPC client (proxies, the other members,
    /// applications) must present a certificate that chains to one (mutual TLS).
    pub client_ca: PathBuf,
    /// CA certificate(s) (PEM) the other members' certificates must chain to (cluster
    /// mode). Empty: `client_ca`.
    pub ca: PathBuf,
}

/// `[messages]`: half messages (`POST /api/v1/messages`) and message branches.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// Where confirmed messages are published: `amqp://…` (RabbitMQ) or `nats://…`
    /// (JetStream). Empty: confirmed messages wait, their publish failing with
    /// "no broker configured", until one is (or they are `dead`).
    pub broker: String,
    /// AMQP exchange (routing key = topic).
    pub exchange: String,
    /// A message still `prepared` this long after it was created is checked back, unless
    /// its prepare asked for another delay.
    pub check_after_ms: u64,
    /// Check-backs deciding nothing before the message is `undecided` (0: never).
    pub max_checks: u32,
    /// Cap on the wait between check-backs (they double from `check_after_ms`).
    pub check_backoff_cap_ms: u64,
    /// Failed publishes before a message is `dead` (0: retried for ever).
    pub max_publish_attempts: u32,
    /// Bound on one publish (connecting included).
    pub publish_timeout_ms: u64,
    /// Publishes in flight at once.
    pub max_in_flight: usize,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            broker: String::new(),
            exchange: "amq.topic".into(),
            check_after_ms: 5_000,
            max_checks: 10,
            check_backoff_cap_ms: 60_000,
            max_publish_attempts: 20,
            publish_timeout_ms: 5_000,
            max_in_flight: 256,
        }
    }
}

/// A coordinator cluster: this node's id and every member's addresses.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (one of `members`).
    pub node_id: u64,
    /// Every voting member at the cluster's first start (later changes go through the
    /// admin API and the Raft log; this list only seeds an empty cluster).
    pub members: Vec<ClusterMember>,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range stands for
    /// election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Log entries between snapshots (then the log before the snapshot is purged).
    pub snapshot_every_entries: u64,
    /// Shared by every member (at least 16 characters; or the `REWIND_CLUSTER_SECRET`
    /// environment variable): each Raft message carries an HMAC-SHA256 of itself under
    /// this key and the sender's node id, and a member answers only messages from
    /// current members with a valid one. Empty: Raft messages are taken from anyone who
    /// reaches the gRPC port (logged as a warning at start; kept only so clusters
    /// configured before the secret existed still start).
    pub secret: String,
    /// Largest Raft message a member accepts or decodes (a log batch, a snapshot chunk).
    pub max_message_bytes: usize,
}

impl std::fmt::Debug for ClusterSecret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "(none)" } else { "(set)" })
    }
}

/// Shows whether a secret is set, never the secret.
pub struct ClusterSecret<'a>(pub &'a str);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    pub id: u64,
    /// gRPC address (proxies, Raft between members).
    pub grpc: String,
    /// HTTP address (API, console), for leader hints.
    pub http: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            members: Vec::new(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 20_000,
            secret: String::new(),
            max_message_bytes: 256 << 20,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("members", &self.members)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_timeout_min_ms", &self.election_timeout_min_ms)
            .field("election_timeout_max_ms", &self.election_timeout_max_ms)
            .field("snapshot_every_entries", &self.snapshot_every_entries)
            .field("secret", &ClusterSecret(&self.secret))
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl ClusterConfig {
    /// `--peers 1=GRPC/HTTP,2=GRPC/HTTP,…` (the flag form of `members`).
    pub fn parse_members(s: &str) -> Result<Vec<ClusterMember>, ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "--peers {s:?}: want ID=GRPC_ADDR/HTTP_ADDR, comma-separated"
            ))
        };
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (id, addrs) = p.trim().split_once('=').ok_or_else(bad)?;
                let (grpc, http) = addrs.split_once('/').ok_or_else(bad)?;
                Ok(ClusterMember {
                    id: id.trim().parse().map_err(|_| bad())?,
                    grpc: grpc.trim().to_string(),
                    http: http.trim().to_string(),
                })
            })
            .collect()
    }
}

#[derive(
    Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ApiAuth {
    #[default]
    Operator,
    All,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: "127.0.0.1:8091".parse().expect("valid"),
            http_addr: "127.0.0.1:7091".parse().expect("valid"),
            data_dir: PathBuf::from("./data/coordinator"),
            default_timeout_ms: 60_000,
            max_timeout_ms: 24 * 3600 * 1000,
            finished_retention_secs: 24 * 3600,
            prune_interval_secs: 60,
            tick_ms: 200,
            phase_two_backoff_base_ms: 100,
            phase_two_backoff_cap_ms: 30_000,
            phase_two_command_timeout_ms: 10_000,
            tcc_call_timeout_ms: 5_000,
            tcc_max_attempts: 50,
            rollback_wait_ms: 10_000,
            write_isolation_wait_ms: 1_000,
            max_batch: 4096,
            wal_bytes: 4 << 20,
            http_body_limit_bytes: 1 << 20,
            shutdown_grace_ms: 5_000,
            operators: Default::default(),
            operator_session_secs: 8 * 3600,
            api_auth: ApiAuth::Operator,
            cluster: None,
            messages: MessagesConfig::default(),
            tls: None,
            otlp_endpoint: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.default_timeout_ms == 0 || self.default_timeout_ms > self.max_timeout_ms {
            return bad("default_timeout_ms must be > 0 and <= max_timeout_ms");
        }
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return bad("tick_ms must be in 1..=10000");
        }
        if self.phase_two_backoff_base_ms == 0
            || self.phase_two_backoff_base_ms > self.phase_two_backoff_cap_ms
        {
            return bad("phase_two_backoff_base_ms must be > 0 and <= phase_two_backoff_cap_ms");
        }
        if self.phase_two_command_timeout_ms == 0 {
            return bad("phase_two_command_timeout_ms must be > 0");
        }
        if self.tcc_call_timeout_ms == 0 {
            return bad("tcc_call_timeout_ms must be > 0");
        }
        if self.max_batch == 0 {
            return bad("max_batch must be > 0");
        }
        if self.wal_bytes < 4096 || self.wal_bytes > (1 << 32) {
            return bad("wal_bytes must be in 4096..=4294967296");
        }
        if self.http_body_limit_bytes < 1024 {
            return bad("http_body_limit_bytes must be >= 1024");
        }
        if self.prune_interval_secs == 0 {
            return bad("prune_interval_secs must be > 0");
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty");
        }
        let m = &self.messages;
        if m.check_after_ms == 0 || m.check_backoff_cap_ms < m.check_after_ms {
            return bad("messages: check_after_ms must be > 0 and <= check_backoff_cap_ms");
        }
        if m.publish_timeout_ms == 0 || m.max_in_flight == 0 {
            return bad("messages: publish_timeout_ms and max_in_flight must be > 0");
        }
        if !m.broker.is_empty() && !m.broker.contains("://") {
            return bad("messages.broker: want amqp://… or nats://…");
        }
        if self.operator_session_secs == 0 {
            return bad("operator_session_secs must be > 0");
        }
        if let Some(c) = &self.cluster {
            if !c.members.iter().any(|m| m.id == c.node_id) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.node_id {} is not one of cluster.members",
                    c.node_id
                )));
            }
            let mut ids: Vec<u64> = c.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != c.members.len() || ids.contains(&0) {
                return bad("cluster.members: ids must be unique and > 0");
            }
            if c.heartbeat_ms == 0
                || c.election_timeout_min_ms <= c.heartbeat_ms * 2
                || c.election_timeout_max_ms <= c.election_timeout_min_ms
            {
                return bad("cluster: want 0 < 2 x heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
            }
            if c.snapshot_every_entries < 100 {
                return bad("cluster.snapshot_every_entries must be >= 100");
            }
            if !c.secret.is_empty() && c.secret.len() < 16 {
                return bad("cluster.secret must be at least 16 characters");
            }
            if c.max_message_bytes < (4 << 20) {
                return bad(
                    "cluster.max_message_bytes must be >= 4194304 (a snapshot chunk is 3 MiB)",
                );
            }
        }
        if let Some(t) = &self.tls {
            if t.cert.as_os_str().is_empty() || t.key.as_os_str().is_empty() {
                return bad("tls: cert and key are both required");
            }
            if self.cluster.is_some()
                && t.ca.as_os_str().is_empty()
                && t.client_ca.as_os_str().is_empty()
            {
                return bad("tls in a cluster: set tls.ca (or tls.client_ca) to verify the other members' certificates");
            }
        }
        for (name, secret) in &self.operators {
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                return bad("operator names must be 1..=64 printable characters");
            }
            if secret.len() < 12 {
                return Err(ConfigError::Invalid(format!(
                    "operator {name:?}: the secret must be at least 12 characters"
                )));
            }
        }
        Ok(())
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            default_timeout_ms: self.default_timeout_ms,
            max_timeout_ms: self.max_timeout_ms,
            backoff_base_ms: self.phase_two_backoff_base_ms,
            backoff_cap_ms: self.phase_two_backoff_cap_ms,
            command_timeout_ms: self.phase_two_command_timeout_ms,
            tcc_max_attempts: self.tcc_max_attempts,
            msg_check_after_ms: self.messages.check_after_ms,
            msg_max_checks: self.messages.max_checks,
            msg_check_cap_ms: self.messages.check_backoff_cap_ms,
            msg_max_publish_attempts: self.messages.max_publish_attempts,
        }
    }

    /// The TCC call timeout in force: never longer than the engine waits for an answer.
    pub fn tcc_call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.tcc_call_timeout_ms
                .min(self.phase_two_command_timeout_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_lists_every_key() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rewind-coordinator.example.toml"
        );
        let c = Config::from_file(std::path::Path::new(path)).unwrap();
        c.validate().unwrap();
        assert_eq!(c, Config::default(), "the example documents the defaults");
        let text = std::fs::read_to_string(path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for key in [
            "grpc_addr",
            "http_addr",
            "data_dir",
            "default_timeout_ms",
            "max_timeout_ms",
            "finished_retention_secs",
            "prune_interval_secs",
            "tick_ms",
            "phase_two_backoff_base_ms",
            "phase_two_backoff_cap_ms",
            "phase_two_command_timeout_ms",
            "tcc_call_timeout_ms",
            "tcc_max_attempts",
            "rollback_wait_ms",
            "write_isolation_wait_ms",
            "max_batch",
            "wal_bytes",
            "http_body_limit_bytes",
            "shutdown_grace_ms",
            "operators",
            "operator_session_secs",
            "api_auth",
            "messages",
            "otlp_endpoint",
        ] {
            assert!(table.contains_key(key), "example lacks {key}");
        }
        assert_eq!(table.len(), 24);
    }

    #[test]
    fn unknown_keys_and_bad_values_rejected() {
        assert!(toml::from_str::<Config>("grpc_adr = \"1.2.3.4:1\"").is_err());
        let c: Config = toml::from_str("tick_ms = 0").unwrap();
        assert!(c.validate().is_err());
        // A command timeout below the TCC call timeout's default (a configuration older
        // than TCC) still starts, with the call timeout capped.
        let c: Config = toml::from_str("phase_two_command_timeout_ms = 2000").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.tcc_call_timeout(), std::time::Duration::from_millis(2000));
        // [tls]: a certificate and its key; a cluster also needs a CA for its members.
        assert!(toml::from_str::<Config>("[tls]\ncert = \"c\"\nkye = \"k\"").is_err());
        let c: Config = toml::from_str("[tls]\ncert = \"c.pem\"").unwrap();
        assert!(c.validate().is_err());
        let mut c: Config = toml::from_str("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        assert!(c.validate().is_ok());
        c.cluster = Some(ClusterConfig {
            node_id: 1,
            members: ClusterConfig::parse_members("1=a:1/a:2").unwrap(),
            ..ClusterConfig::default()
        });
        assert!(c.validate().is_err());
        c.tls.as_mut().unwrap().client_ca = "ca.pem".into();
        assert!(c.validate().is_ok());
    }
}
