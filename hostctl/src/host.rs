//! `hostctl hosts`, `ping` and `host ...`: the fleet and one host's facts.

use std::time::{Duration, Instant};

use crate::cli::HostCmd;
use crate::output::{mib, print_json, table, Ctx, Res};

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
    ctx.list(
        &hosts,
        &[
            "HOST",
            "STATE",
            "HEALTH",
            "LABELS",
            "VMS_ACTIVE",
            "IN_FLIGHT",
            "LAST_SEEN",
            "AGENT",
            "EPOCH",
        ],
        |h| {
            vec![
                h.host_id.clone(),
                format!("{:?}", h.liveness).to_lowercase(),
                h.health.status.to_string(),
                h.labels.join(","),
                h.load.vms_active.to_string(),
                h.load.in_flight.to_string(),
                h.last_seen_ms.map_or_else(
                    || format!(">{}s", p.lookback().as_secs()),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                ),
                h.versions.agent.clone(),
                h.epoch.to_string(),
            ]
        },
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
                table(
                    &[
                        "HOST",
                        "HYPERVISOR",
                        "LIBVIRT",
                        "ARCH",
                        "CPUS",
                        "MEMORY_MIB",
                        "CPU_MODEL",
                    ],
                    vec![vec![
                        i.host_id.clone(),
                        format!("{} {}", i.hypervisor, i.hypervisor_version),
                        i.libvirt_version.clone(),
                        i.arch.clone(),
                        i.cpus.to_string(),
                        mib(i.memory_kib),
                        i.cpu_model.clone(),
                    ]],
                )
            })
        }
        HostCmd::Caps { host } => {
            let caps = c.host(&host).capabilities().await?;
            ctx.show(&caps, |c| {
                outln!("arch: {}", c.arch);
                for (a, t) in &c.guest_domain_types {
                    outln!("guests {a}: {}", t.join(", "));
                }
                outln!("commands: {}", c.commands.len());
            })
        }
        HostCmd::Stats { host } => {
            let s = c.host(&host).stats().await?;
            ctx.show(&s, |s| {
                table(
                    &[
                        "MEMORY_MIB",
                        "FREE_MIB",
                        "VMS",
                        "ACTIVE",
                        "VM_MEMORY_MIB",
                        "VM_VCPUS",
                    ],
                    vec![vec![
                        mib(s.memory_total_kib),
                        mib(s.memory_free_kib),
                        s.vms_total.to_string(),
                        s.vms_active.to_string(),
                        mib(s.vm_memory_kib),
                        s.vm_vcpus.to_string(),
                    ]],
                )
            })
        }
        HostCmd::Snapshot { host } => print_json(&c.host(&host).snapshot().await?),
    }
}
