//! The `rewind-coordinator` binary: flags > config file > defaults, then [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rewind_coordinator::{run, Config};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc. Every gRPC request allocates (tonic's boxed
/// futures, encode buffers, h2 frames), and under bench/coordinator glibc's malloc, free
/// and `malloc_consolidate` (set off by tonic's 8 KiB response buffers) took about a
/// tenth of the process. bench/coordinator, 64 clients, this build against the same code
/// on glibc, four alternated pairs on a noisy machine: coordinator CPU per global
/// transaction 135-163 µs against 150-177 (1.36-1.41 times the load generator's own CPU
/// against 1.49-1.50), 5,871-7,072 against 5,633-6,534 transactions/s, and 169-177
/// bytes of RSS per held lock against 194-213. mimalloc saved about as much CPU but grew
/// the process by 255-388 bytes per held lock. The proxy stays on glibc. Tried twice:
/// preloaded, jemalloc made bench/at's AT mode slower (581-584 against 648-674
/// transfers/s, a noisy machine); built in, it cut the proxy's CPU per AT transfer by
/// about 6 % (0.677-0.693 of MariaDB's in the same run against 0.731-0.751, four
/// alternated pairs) but cost plain pass-through more: bench/passthrough at 8 threads,
/// six alternated pairs, proxy/HAProxy median 0.891 against 0.935 for point selects and
/// 0.884 against 0.929 for read/write (three pairs). Pass-through is most of what a
/// proxy serves.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Rewind's transaction coordinator (single node, or a member of a Raft cluster).
#[derive(Parser, Debug)]
#[command(name = "rewind-coordinator", version, about)]
struct Args {
    /// gRPC listen address [default: 127.0.0.1:8091]
    #[arg(long, env = "REWIND_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (REST API, /metrics, /healthz) [default: 127.0.0.1:7091]
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Directory of the durable state [default: ./data/coordinator]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML config file (see rewind-coordinator.example.toml); flags override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// OTLP/gRPC endpoint for traces (empty: OTEL_EXPORTER_OTLP_ENDPOINT, else off)
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Cluster mode: this node's id (one of --peers)
    #[arg(long, requires = "peers")]
    node_id: Option<u64>,
    /// Cluster mode: every member as ID=GRPC_ADDR/HTTP_ADDR, comma-separated
    /// (e.g. 1=127.0.0.1:8091/127.0.0.1:7091,2=…); seeds an empty cluster
    #[arg(long, requires = "node_id")]
    peers: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(a) = args.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(e) = args.otlp_endpoint {
        config.otlp_endpoint = e;
    }
    if let (Some(id), Some(peers)) = (args.node_id, &args.peers) {
        let mut c = config.cluster.take().unwrap_or_default();
        c.node_id = id;
        c.members = rewind_coordinator::config::ClusterConfig::parse_members(peers)?;
        config.cluster = Some(c);
    }
    if let (Some(c), Ok(secret)) = (
        config.cluster.as_mut(),
        std::env::var("REWIND_CLUSTER_SECRET"),
    ) {
        if !secret.is_empty() {
            c.secret = secret;
        }
    }
    config.validate()?;

    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    tracing::info!(grpc = %grpc.local_addr()?, http = %http.local_addr()?, "rewind-coordinator listening");

    let mut resource = vec![rewind_protocol::trace::KeyValue::new(
        "rewind.grpc_addr",
        config.grpc_addr.to_string(),
    )];
    if let Some(c) = &config.cluster {
        resource.push(rewind_protocol::trace::KeyValue::new(
            "rewind.node_id",
            c.node_id as i64,
        ));
    }
    let traces =
        rewind_protocol::trace::init("rewind-coordinator", &config.otlp_endpoint, resource)
            .map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP");
    }

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let term = async {
            #[cfg(unix)]
            {
                let mut s =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                s.recv().await;
            }
            #[cfg(not(unix))]
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        trigger.cancel();
    });
    let r = run(config, grpc, http, shutdown).await;
    if let Some(t) = traces {
        // Flush what is still queued (the exporter runs on its own thread).
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    r?;
    Ok(())
}
