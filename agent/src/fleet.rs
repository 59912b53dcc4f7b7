//! The fleet simulator: many simulated hosts in one process, for load tests
//! of managers (like oVirt's vdsm-fake). `hostbus-agent --simulate 1000
//! --host-prefix sim-` runs hosts `sim-0001` to `sim-1000`, each a full agent
//! of its own: its own host id and labels, its own inventory on libvirt's
//! test driver (a generated node file), its own journal, broker connection,
//! heartbeats, events and commands. Only the process, the async runtime and
//! the metrics endpoint are shared.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use hostbus_protocol::names::check_host_id;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::Config;
use crate::metrics::Metrics;

/// The AMQP frame size simulated hosts ask for unless `amqp_frame_max`
/// says otherwise.
pub const SIMULATED_FRAME_MAX: u32 = 16_384;

/// What the simulated hosts are called and where their files go.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// How many hosts.
    pub hosts: u32,
    /// Host ids are this prefix and a four-digit number from 1.
    pub prefix: String,
    /// Node files and journals of the hosts (a fresh directory under the
    /// system's temporary directory when `None`, removed at the end).
    pub dir: Option<PathBuf>,
}

impl Fleet {
    /// The host id of number `i` (from 1).
    pub fn host_id(&self, i: u32) -> String {
        format!("{}{i:04}", self.prefix)
    }
}

/// Runs the simulated hosts until `shutdown` resolves, then stops them all
/// gracefully (each drains and says goodbye).
pub async fn simulate(
    base: Config,
    fleet: Fleet,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if fleet.hosts == 0 {
        anyhow::bail!("--simulate needs at least one host");
    }
    for i in [1, fleet.hosts] {
        let id = fleet.host_id(i);
        check_host_id("--host-prefix", &id)
            .map_err(|e| anyhow::anyhow!("host id {id:?} {}", e.reason))?;
    }
    let (dir, temporary) = match &fleet.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("hostbus-sim-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    tracing::info!(hosts = fleet.hosts, prefix = %fleet.prefix, dir = %dir.display(), "starting a simulated fleet");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    if base.http_socket.is_some() || base.http_listen.is_some() {
        tracing::warn!("simulated hosts do not serve the HTTP binding; http_socket and http_listen are ignored");
    }
    for i in 1..=fleet.hosts {
        let host_id = fleet.host_id(i);
        let node = dir.join(format!("{host_id}.xml"));
        std::fs::write(&node, hostbus_bridge::simulated_node_xml(i))?;
        let mut cfg = base.clone();
        cfg.host_id = host_id.clone();
        cfg.libvirt_uri = format!("test://{}", node.display());
        cfg.journal_path = dir.join(format!("{host_id}.journal"));
        cfg.labels.push(format!("rack-{}", i % 10));
        // One socket or port cannot serve a thousand agents.
        cfg.http_socket = None;
        cfg.http_listen = None;
        // lapin's buffers are 32 frames each way per connection: 8 MiB at
        // RabbitMQ's 128 KiB frames, 1 MiB at 16 KiB (a simulated host's
        // messages are small; larger ones are split, not refused).
        if cfg.amqp_frame_max == 0 {
            cfg.amqp_frame_max = SIMULATED_FRAME_MAX;
        }
        let metrics = metrics.clone();
        // Opening libvirt and the journal blocks: not on the runtime.
        let agent = tokio::task::spawn_blocking(move || Agent::new(cfg, metrics)).await??;
        let mut stop = stop_rx.clone();
        running.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = agent.run(stopped).await {
                tracing::error!(host = %host_id, error = format!("{e:#}"), "simulated host failed");
            }
        });
    }
    tracing::info!(hosts = fleet.hosts, "simulated fleet running");
    shutdown.await;
    let _ = stop_tx.send(true);
    while running.join_next().await.is_some() {}
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
