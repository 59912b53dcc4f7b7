//! `hostbus-agent`: the per-host bus agent. Thin: parses flags, loads the
//! configuration (exit 64 when invalid), sets up logging and metrics, runs
//! the agent until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hostbus_agent::config::LogFormat;
use hostbus_agent::metrics::Metrics;
use hostbus_agent::{Agent, Config, Flags};
use tracing_subscriber::EnvFilter;

/// `EX_CONFIG` from sysexits.h: the configuration is invalid.
const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let cfg = match Config::load(&flags, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostbus-agent: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let filter =
        EnvFilter::try_new(cfg.log_directives()).unwrap_or_else(|_| EnvFilter::new("info"));
    match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        protocol = %hostbus_protocol::PROTOCOL_VERSION,
        host = %cfg.host_id,
        "hostbus-agent build info"
    );
    // One agent: a single runtime thread (docs/performance.md). A simulated
    // fleet: a thread per core, for hundreds of agents at once.
    let runtime = if flags.simulate.is_some() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .thread_name("hostbus-rt")
    .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostbus-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fleet = flags.simulate.map(|hosts| hostbus_agent::fleet::Fleet {
        hosts,
        prefix: flags.host_prefix.clone(),
        dir: None,
    });
    match runtime.block_on(run(cfg, fleet)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, fleet: Option<hostbus_agent::fleet::Fleet>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = cfg.metrics_addr {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = hostbus_agent::metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    if let Some(fleet) = fleet {
        return hostbus_agent::fleet::simulate(cfg, fleet, metrics, shutdown_signal()).await;
    }
    // Opening libvirt, the first scan and the journal block: not on the runtime.
    let agent = tokio::task::spawn_blocking(move || Agent::new(cfg, metrics)).await??;
    agent.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
