//! The harness Rewind's test suites share: the real `rewind-coordinator` and
//! `rewind-proxy` binaries (from the target directory the test runs from) on free ports,
//! against the MariaDB at 127.0.0.1:3306 that `scripts/ensure-mariadb.sh` provides.
//!
//! Every test owns its directory, its databases (named after the test) and its
//! processes; processes are killed when their handles drop, and a failed test keeps its
//! logs. Waiting is on conditions ([`eventually`]), never on fixed sleeps. The harness
//! drives processes from outside only (command line, HTTP, gRPC, MySQL protocol), so it
//! depends on no library of the workspace but the wire contract, `rewind-protocol`.
//!
//! # Layout
//! - [`dir`]: a temporary directory that keeps its logs when the test fails.
//! - [`process`]: free ports, the workspace's binaries, a child process with a log file.
//! - [`wait`]: [`eventually`], polling a condition with a deadline.
//! - [`http`]: one HTTP client (reqwest) for the coordinator's REST API and console.
//! - [`coordinator`]: a coordinator process, single node or cluster member, and its API.
//! - [`cluster`]: three coordinators as a Raft cluster, and calls at its leader.
//! - [`proxy`]: a proxy process in front of the test MariaDB.
//! - [`brokers`]: a RabbitMQ queue and NATS JetStream streams to read what the relay sent.
//! - [`browser`]: the console tests' Chromium and their driver scripts' runs.
//! - [`go`]: Go programs under `tests/go/`, and the example TCC participant.
//! - [`mariadb`]: connections straight to MariaDB, fresh databases, checksums, dumps,
//!   undo records, server errors.
//! - [`tls`]: certificates made at test time, and a throwaway MariaDB serving TLS.
//! - [`wire`]: the MySQL protocol by hand (a login, prepares and executes with any
//!   parameter type).

pub mod brokers;
pub mod browser;
pub mod cluster;
pub mod coordinator;
pub mod dir;
pub mod go;
pub mod http;
pub mod mariadb;
pub mod process;
pub mod proxy;
pub mod relay;
pub mod tls;
pub mod wait;
pub mod wire;

pub use brokers::{amqp_addr, amqp_url, nats_addr, nats_url, AmqpQueue, JetStream};
pub use browser::{chromium, run_console_driver};
pub use cluster::CoordinatorCluster;
pub use coordinator::{peers, Coordinator};
pub use dir::TempDir;
pub use go::{build_go, go, TccParticipant, GOPATH, GO_DRIVER};
pub use http::{http, http_as, keep_alive_client, request, Answer};
pub use mariadb::{
    checksums, delete_shared_rows, direct, direct_exec, direct_opts, dump, fresh_db, root_opts,
    server_error, undo_rows, xa_prepared, ChangedGlobal, BACKEND,
};
pub use process::{binary, free_addr, threads_named, Process};
pub use proxy::{proxy_metric, Proxy};
pub use relay::TcpRelay;
pub use tls::{TestCerts, TlsMariaDb};
pub use wait::eventually;
