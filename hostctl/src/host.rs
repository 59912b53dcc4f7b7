//! `hostctl hosts`, `ping` and `host ...`: the fleet and one host's facts.

use std::time::{Duration, Instant};

use hostbus_client::protocol::types::{HostRecord, Placement};
use hostbus_client::{
    EvacuateOptions, EvacuationOutcome, EvacuationProgress, EvacuationReport, Targets, VmEvacuation,
};

use crate::cli::{HostCmd, MoveFlags, Output};
use crate::output::{mib, print_json, record, table, Ctx, Failure, Progress, Res};

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
            ("PLACEMENT", &|h| placement(&h.placement)),
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
        HostCmd::Disable { host, reason } => {
            print_placement(ctx, &c.host(&host).disable(&reason).await?)
        }
        HostCmd::Enable { host } => print_placement(ctx, &c.host(&host).enable().await?),
        HostCmd::Evacuate {
            host,
            to,
            label,
            parallel,
            how,
        } => {
            let targets = match label {
                Some(l) => Targets::Label(l),
                None => Targets::Hosts(to),
            };
            evacuate(ctx, &host, targets, parallel, how).await
        }
    }
}

/// `enabled`, or `disabled: <reason>`.
fn placement(p: &Placement) -> String {
    match (p.enabled, p.reason.as_str()) {
        (true, _) => "enabled".to_owned(),
        (false, "") => "disabled".to_owned(),
        (false, reason) => format!("disabled: {reason}"),
    }
}

/// `hostctl host disable|enable`: the host's placement now.
fn print_placement(ctx: &Ctx, h: &HostRecord) -> Res<()> {
    ctx.show(h, |h| outln!("{} {}", h.host_id, placement(&h.placement)))
}

/// `hostctl host evacuate`: the SDK's evacuation, with a bar of the VMs
/// done and a line for each as it ends, then a table of them all (or the
/// report as JSON); exit 7 when a VM stayed.
async fn evacuate(
    ctx: &Ctx,
    host: &str,
    targets: Targets,
    parallel: u16,
    how: MoveFlags,
) -> Res<()> {
    let opts = EvacuateOptions {
        parallel: usize::from(parallel),
        copy_storage: how.copy_storage,
        bandwidth_mib_s: how.bandwidth_mib_s,
        max_downtime_ms: how.max_downtime_ms,
    };
    let bar = match ctx.output {
        Output::Json => Progress::hidden(),
        Output::Table => Progress::new(&format!("evacuate {host}")),
    };
    let (mut total, mut done) = (0, 0);
    let report = ctx
        .client
        .evacuate(host, targets, opts, |p| match p {
            EvacuationProgress::Planned {
                total: n,
                destinations,
            } => {
                total = n;
                let to = if destinations.is_empty() {
                    "no host".to_owned()
                } else {
                    destinations.join(", ")
                };
                let vms = if n == 1 { "VM" } else { "VMs" };
                bar.line(&format!("{host} disabled; {n} {vms} to move to {to}"));
                if total > 0 {
                    bar.draw(done, total, &format!("{done}/{total}"));
                }
            }
            EvacuationProgress::Started {
                name, destination, ..
            } => bar.draw(
                done,
                total,
                &format!("{done}/{total} {name} to {destination}"),
            ),
            EvacuationProgress::Moving { name, percent, .. } => {
                bar.draw(done, total, &format!("{done}/{total} {name} {percent}%"))
            }
            EvacuationProgress::Finished(v) => {
                done += 1;
                bar.line(&format!("{}: {}", v.name, result(&v)));
                bar.draw(done, total, &format!("{done}/{total}"));
            }
        })
        .await?;
    if total > 0 {
        bar.done();
    }
    ctx.show(&report, print_report)?;
    if report.all_moved() {
        return Ok(());
    }
    let stayed = report
        .vms
        .iter()
        .filter(|v| matches!(v.outcome, EvacuationOutcome::Failed { .. }))
        .count();
    Err(Failure {
        code: 7,
        message: format!(
            "{stayed} of {} VMs are still on {host}, which stays disabled",
            report.vms.len()
        ),
    })
}

/// What became of one VM, in a few words.
fn result(v: &VmEvacuation) -> String {
    match (&v.outcome, &v.destination) {
        (EvacuationOutcome::Moved { elapsed_ms, .. }, Some(d)) => {
            format!("moved to {d} in {elapsed_ms} ms")
        }
        (EvacuationOutcome::Moved { .. }, None) => "moved".to_owned(),
        (EvacuationOutcome::Failed { code, message }, _) => match code {
            Some(code) => format!("failed: {code}: {message}"),
            None => format!("failed: {message}"),
        },
    }
}

/// The evacuation's table, the targets it did not use, and what is next.
fn print_report(r: &EvacuationReport) {
    for s in &r.skipped {
        eprintln!("hostctl: {} not used: {}", s.host, s.reason);
    }
    if r.vms.is_empty() {
        outln!("no VM runs or is paused on {}", r.host);
    } else {
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        table(
            &[
                "VM",
                "MEMORY_MIB",
                "DESTINATION",
                "TIME_MS",
                "DOWNTIME_MS",
                "RESULT",
            ],
            r.vms
                .iter()
                .map(|v| {
                    let (time, downtime, result) = match &v.outcome {
                        EvacuationOutcome::Moved {
                            elapsed_ms,
                            downtime_ms,
                        } => (Some(*elapsed_ms), *downtime_ms, "moved".to_owned()),
                        EvacuationOutcome::Failed { .. } => (None, None, result(v)),
                    };
                    vec![
                        v.name.clone(),
                        mib(v.memory_kib),
                        v.destination.clone().unwrap_or_else(|| "-".to_owned()),
                        ms(time),
                        ms(downtime),
                        result,
                    ]
                })
                .collect(),
        );
    }
    outln!(
        "{} stays disabled: `hostctl host enable {}` after the maintenance",
        r.host,
        r.host
    );
}
