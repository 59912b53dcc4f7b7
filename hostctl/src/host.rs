//! `hostctl hosts`, `ping` and `host ...`: the fleet and one host's facts.

use std::time::{Duration, Instant};

use crate::cli::HostCmd;
use crate::output::{mib, print_json, record, Ctx, Res};

/// `hostctl hosts`: the fleet view, complete or said not to be.
pub(crate) async fn hosts(ctx: &Ctx, listen_ms: u64) -> Res<()> {
    let p = ctx.client.presence().await?;
    p.wait_ready(Duration::from_millis(listen_ms)).await;
    if !p.is_ready() {
        eprintln!(
            "hostctl: the broker's history did not arrive in time; the list may be incomplete"
        );
    }
    let hosts = p.hosts();
    ctx.list_with(
        &hosts,
        &[
            ("HOST", &|h| h.host_id.clone()),
            ("STATE", &|h| format!("{:?}", h.liveness).to_lowercase()),
            ("HEALTH", &|h| h.health.status.to_string()),
            ("LABELS", &|h| h.labels.join(",")),
            ("VMS_ACTIVE", &|h| h.load.vms_active.to_string()),
            ("IN_FLIGHT", &|h| h.load.in_flight.to_string()),
            ("LAST_SEEN", &|h| {
                h.last_seen_ms.map_or_else(
                    || format!(">{}s", p.lookback().as_secs()),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                )
            }),
            ("AGENT", &|h| h.versions.agent.clone()),
            ("EPOCH", &|h| h.epoch.to_string()),
        ],
    )
}

/// `hostctl ping HOST`: the round trip to its agent.
pub(crate) async fn ping(ctx: &Ctx, host: &str) -> Res<()> {
    let started = Instant::now();
    let pong = ctx.client.host(host).ping().await?;
    let rtt = started.elapsed().as_secs_f64() * 1000.0;
    ctx.show(
        &serde_json::json!({"host": pong.host_id, "rtt_ms": rtt}),
        |_| outln!("{} answered in {rtt:.1} ms", pong.host_id),
    )
}

/// `hostctl host ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: HostCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        HostCmd::Forget { host, force } => {
            c.forget_host(&host, force).await?;
            ctx.show(&serde_json::json!({"forgotten": host}), |_| {
                outln!("{host} forgotten: its queue is deleted and fleet views no longer list it")
            })
        }
        HostCmd::Info { host } => {
            let i = c.host(&host).info().await?;
            ctx.show(&i, |i| {
                record(vec![
                    ("HOST", i.host_id.clone()),
                    (
                        "HYPERVISOR",
                        format!("{} {}", i.hypervisor, i.hypervisor_version),
                    ),
                    ("LIBVIRT", i.libvirt_version.clone()),
                    ("ARCH", i.arch.clone()),
                    ("CPUS", i.cpus.to_string()),
                    ("MEMORY_MIB", mib(i.memory_kib)),
                    ("CPU_MODEL", i.cpu_model.clone()),
                ])
            })
        }
        HostCmd::Caps { host } => {
            let caps = c.host(&host).capabilities().await?;
            ctx.show(&caps, |c| {
                outln!("arch: {}", c.arch);
                for (a, t) in &c.guest_domain_types {
                    outln!("guests {a}: {}", t.join(", "));
                }
                let formats: Vec<&str> = c.volume_formats.iter().map(|f| f.as_str()).collect();
                outln!("volume formats: {}", formats.join(", "));
                outln!("commands: {}", c.commands.len());
            })
        }
        HostCmd::Stats { host } => {
            let s = c.host(&host).stats().await?;
            ctx.show(&s, |s| {
                record(vec![
                    ("MEMORY_MIB", mib(s.memory_total_kib)),
                    ("FREE_MIB", mib(s.memory_free_kib)),
                    ("VMS", s.vms_total.to_string()),
                    ("ACTIVE", s.vms_active.to_string()),
                    ("VM_MEMORY_MIB", mib(s.vm_memory_kib)),
                    ("VM_VCPUS", s.vm_vcpus.to_string()),
                ])
            })
        }
        HostCmd::Snapshot { host } => print_json(&c.host(&host).snapshot().await?),
    }
}
