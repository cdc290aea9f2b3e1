//! rewind-proxy binary: flags and config file → [`rewind_proxy::run`] until SIGTERM/Ctrl-C.

use anyhow::Context;
use clap::Parser;
use rewind_proxy::Config;
use tokio_util::sync::CancellationToken;

/// Rewind's MySQL-protocol proxy. Flags override the config file, which overrides defaults.
#[derive(Parser, Debug)]
#[command(name = "rewind-proxy", version, about, args_override_self = true)]
struct Cli {
    /// TOML config file (unknown keys are rejected); see rewind-proxy.example.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// MySQL listener address [default: 127.0.0.1:3307]
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz); "" for none [default: 127.0.0.1:9307]
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<String>,
    /// Backend MySQL/MariaDB URL [default: mysql://root@127.0.0.1:3306]
    #[arg(long)]
    backend: Option<String>,
    /// Coordinator address(es), comma-separated [default: http://127.0.0.1:8091]
    #[arg(long)]
    coordinator: Option<String>,
    /// Schema holding undo_log on each backend [default: rewind]
    #[arg(long)]
    undo_schema: Option<String>,
    /// Client sessions served at once [default: 1024]
    #[arg(long)]
    max_connections: Option<usize>,
    /// The backend's resource id in the coordinator, shared by every proxy in front of it
    /// [default: host:port of --backend]
    #[arg(long)]
    resource_id: Option<String>,
    /// OTLP/gRPC endpoint for traces (empty: OTEL_EXPORTER_OTLP_ENDPOINT, else off)
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Broker the outbox relay publishes to (amqp://… or nats://…); none by default
    #[arg(long, value_name = "URL")]
    outbox_broker: Option<String>,
    /// Worker threads of the runtime; 0 = one per CPU core [default: 0]
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    rewind_proxy::failpoint::announce();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = cli.admin_addr {
        config.admin_addr = v;
    }
    if let Some(v) = cli.backend {
        config.backend = v;
    }
    if let Some(v) = cli.outbox_broker {
        config.outbox.broker = v;
    }
    if let Some(v) = cli.coordinator {
        config.coordinator = v;
    }
    if let Some(v) = cli.undo_schema {
        config.undo_schema = v;
    }
    if let Some(v) = cli.max_connections {
        config.max_connections = v;
    }
    if let Some(v) = cli.resource_id {
        config.resource_id = v;
    }
    if let Some(v) = cli.otlp_endpoint {
        config.otlp_endpoint = v;
    }
    if let Some(v) = cli.worker_threads {
        config.worker_threads = v;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(config))
}

/// Serves with `config` until SIGTERM or Ctrl-C.
async fn serve(config: Config) -> anyhow::Result<()> {
    let traces = rewind_protocol::trace::init(
        "rewind-proxy",
        &config.otlp_endpoint,
        vec![
            rewind_protocol::trace::KeyValue::new("resource_id", config.resource()),
            rewind_protocol::trace::KeyValue::new("rewind.listen", config.listen.clone()),
        ],
    )
    .map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP");
    }

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown signal: draining");
        trigger.cancel();
    });
    let r = rewind_proxy::run(listener, config, shutdown).await;
    if let Some(t) = traces {
        // Flush what is still queued (the exporter runs on its own thread).
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    r?;
    Ok(())
}
