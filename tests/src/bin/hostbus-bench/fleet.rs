//! The fleet section: a thousand simulated hosts on one broker at the
//! agents' default settings (a heartbeat every 5 s), as a manager sees them.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmPause, VmResume, VmUuid};
use hostbus_client::protocol::names::{Target, PRESENCE_EXCHANGE};
use hostbus_client::{Client, ClientConfig, Liveness, Notification};
use hostbus_tests::sdk::{list_vms, subscribe};
use hostbus_tests::{group_members, rss_kib, AgentProcess, AmqpPeer, RabbitNode};

use crate::measure::{cpu_secs, quantile_ms};
use crate::report::{self, release_hostctl, write_section};
use crate::Args;

/// `p50 / max ms` of `v`, as the table shows a few runs.
fn p50_max(v: &[Duration]) -> String {
    format!("{:.0} / {:.0} ms", quantile_ms(v, 0.5), quantile_ms(v, 1.0))
}

/// The web01 of simulated host number `i` (from 1).
fn web01(i: u32) -> uuid::Uuid {
    format!("{:08x}-0000-4000-8000-000000000001", 0x5000_0000u32 + i)
        .parse()
        .expect("uuid")
}

fn simulator(url: &str, hosts: u32, prefix: &str, queue_type: &str) -> AgentProcess {
    AgentProcess::builder(&format!("{prefix}0001"), url)
        .env("HOSTBUS_QUEUE_TYPE", queue_type)
        .args([
            "--log-level",
            "warn",
            "--simulate",
            &hosts.to_string(),
            "--host-prefix",
            prefix,
        ])
        .metrics(false)
        .start()
}

/// Fresh fleet views until `n` hosts are alive; how long it took.
async fn until_alive(url: &str, n: usize, max: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let alive = match Client::connect(ClientConfig::new(url)).await {
            Ok(c) => c.presence().await.map_or(0, |p| {
                p.hosts()
                    .iter()
                    .filter(|h| h.liveness == Liveness::Alive)
                    .count()
            }),
            Err(_) => 0,
        };
        if alive >= n || t.elapsed() > max {
            eprintln!("hostbus-bench: {alive} hosts alive after {:?}", t.elapsed());
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A fresh `hostctl` process: its wall time, exit code and output.
fn hostctl(bin: &std::path::Path, url: &str, args: &[&str]) -> (Duration, i32, String) {
    let t = Instant::now();
    let out = std::process::Command::new(bin)
        .args(args)
        .env("HOSTBUS_URL", url)
        .env("HOSTCTL_CONFIG", "/dev/null")
        .output()
        .expect("hostctl");
    (
        t.elapsed(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn broker_rss_kib(node: &RabbitNode) -> u64 {
    node.process_group()
        .map(group_members)
        .unwrap_or_default()
        .into_iter()
        .filter_map(rss_kib)
        .sum()
}

/// `times` broadcasts `vm.list` to all, one after the other: their
/// durations, the replies of the last one and the most hosts any of them
/// reported missing.
async fn broadcasts(client: &Client, times: usize) -> (Vec<Duration>, usize, usize) {
    let (mut took, mut replies, mut missing) = (Vec::new(), 0, 0);
    for _ in 0..times {
        let t = Instant::now();
        let b = list_vms(client, &Target::All, Duration::from_secs(10))
            .await
            .expect("broadcast");
        took.push(t.elapsed());
        replies = b.replies.len();
        missing = missing.max(b.missing.len());
    }
    (took, replies, missing)
}

pub(crate) async fn bench(a: &Args) {
    let n = a.hosts.max(20);
    let doomed = 10;
    let ctl = tokio::task::spawn_blocking(release_hostctl)
        .await
        .expect("build hostctl");
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let broker_idle_rss = broker_rss_kib(&node);
    eprintln!(
        "hostbus-bench: starting {n} simulated hosts ({doomed} of them in a process of their own)"
    );
    let mut sims = vec![
        simulator(&url, n - doomed, "sim-", &a.queue_type),
        simulator(&url, doomed, "doomed-", &a.queue_type),
    ];
    let startup = until_alive(&url, n as usize, Duration::from_secs(600)).await;
    // Let a few heartbeat intervals pass, as in a fleet that runs.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // 1. A fresh `hostctl hosts`, five times.
    let mut hosts_runs = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let bin = ctl.clone();
        let u = url.clone();
        let (d, code, out) =
            tokio::task::spawn_blocking(move || hostctl(&bin, &u, &["-o", "json", "hosts"]))
                .await
                .expect("hostctl");
        assert_eq!(code, 0, "hostctl hosts failed");
        listed = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        hosts_runs.push(d);
    }

    // 2. Broadcasts from a running manager, and from a fresh hostctl.
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let view_t = Instant::now();
    let _ = client.presence().await.expect("presence");
    let view = view_t.elapsed();
    let (bc, replies, missing) = broadcasts(&client, 10).await;
    assert_eq!(missing, 0, "hosts missing from a broadcast");
    let mut ctl_bc = Vec::new();
    for _ in 0..3 {
        let bin = ctl.clone();
        let u = url.clone();
        let (d, code, _) = tokio::task::spawn_blocking(move || {
            hostctl(&bin, &u, &["-o", "json", "vm", "list", "--all"])
        })
        .await
        .expect("hostctl");
        assert_eq!(code, 0, "hostctl vm list --all");
        ctl_bc.push(d);
    }

    // 3. Heartbeat load: beats per second through the broker and the
    // broker's CPU while the fleet only beats.
    let peer = AmqpPeer::connect(&url).await.expect("peer");
    let mut beats = peer.watch(PRESENCE_EXCHANGE, "*.heartbeat").await;
    let broker_pids = node.process_group().map(group_members).unwrap_or_default();
    let sim_pids: Vec<u32> = sims.iter().filter_map(AgentProcess::pid).collect();
    let window = Duration::from_secs(20);
    let cpu0 = (cpu_secs(&broker_pids), cpu_secs(&sim_pids));
    let t = Instant::now();
    let beat_count = beats.collect_for(window).await.expect("beats").len();
    let secs = t.elapsed().as_secs_f64();
    let cpu1 = (cpu_secs(&broker_pids), cpu_secs(&sim_pids));
    let beats_per_s = beat_count as f64 / secs;
    let broker_share = 100.0 * (cpu1.0 - cpu0.0) / secs;
    let sim_share = 100.0 * (cpu1.1 - cpu0.1) / secs;
    drop(beats);

    // 4. Events from every host to one subscriber (the SDK, reading the
    // event stream): one vm.pause on each host, 64 at a time.
    let mut sub = subscribe(&client, &["*.vm.paused"]).await;
    let sent = Instant::now();
    let targets: Vec<(String, uuid::Uuid)> = (1..=n - doomed)
        .map(|i| (format!("sim-{i:04}"), web01(i)))
        .chain((1..=doomed).map(|i| (format!("doomed-{i:04}"), web01(i))))
        .collect();
    // 64 callers, each taking the next host.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut driver = Vec::new();
    for _ in 0..64 {
        let (client, targets, next) = (client.clone(), targets.clone(), next.clone());
        driver.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((h, uuid)) = targets.get(i) else {
                    break;
                };
                let _ = client.call::<VmPause>(h, VmUuid { uuid: *uuid }).await;
            }
        }));
    }
    let mut lat = Vec::new();
    while lat.len() < targets.len() {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(Ok(Notification::Event(e)))) => lat.push(Duration::from_millis(
                hostbus_client::protocol::now_ms().saturating_sub(e.time),
            )),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let events_secs = sent.elapsed().as_secs_f64();
    for d in driver {
        let _ = d.await;
    }
    for (h, uuid) in &targets {
        let _ = client.call::<VmResume>(h, VmUuid { uuid: *uuid }).await;
    }

    // 5. Memory.
    let sim_rss = sims[0].pid().and_then(rss_kib).unwrap_or(0);
    let broker_rss = broker_rss_kib(&node);

    // 6. Ten hosts die: the broadcast right after.
    sims[1].kill().expect("kill the doomed hosts");
    let (dead_bc, _, dead_missing) = broadcasts(&client, 3).await;
    let (dead_ctl, dead_code, _) = {
        let bin = ctl.clone();
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            hostctl(&bin, &u, &["-o", "json", "vm", "list", "--all"])
        })
        .await
        .expect("hostctl")
    };
    for s in &mut sims {
        let _ = s.terminate();
    }
    drop(sims);
    drop(node);

    // 7. For comparison: 100 agent processes of their own.
    let procs = 100u32;
    eprintln!("hostbus-bench: starting {procs} agent processes");
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let agents: Vec<AgentProcess> = (1..=procs)
        .map(|i| {
            AgentProcess::builder(&format!("proc-{i:03}"), &url)
                .arg("--log-level")
                .arg("warn")
                .metrics(false)
                .start()
        })
        .collect();
    let proc_startup = until_alive(&url, procs as usize, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let proc_rss: u64 = agents
        .iter()
        .filter_map(|a| a.pid().and_then(rss_kib))
        .sum();
    let (proc_hosts, _, _) = {
        let bin = ctl.clone();
        let u = url.clone();
        tokio::task::spawn_blocking(move || hostctl(&bin, &u, &["-o", "json", "hosts"]))
            .await
            .expect("hostctl")
    };
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let _ = client.presence().await.expect("presence");
    let (proc_bc, _, proc_missing) = broadcasts(&client, 5).await;
    assert_eq!(proc_missing, 0, "hosts missing from a broadcast");
    let broker_rss_procs = broker_rss_kib(&node);
    drop(agents);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = report::preamble(format_args!(
        "{n} simulated hosts in two `hostbus-agent --simulate` processes ({} and {doomed}) on one private RabbitMQ node, every agent at its default settings (heartbeat every 5 s, concurrency 8) with {} command queues; `hostctl` is a fresh release process each time.",
        n - doomed,
        a.queue_type
    ));
    let rows = [
        format!(
            "| fresh `hostctl hosts`, wall time (5 runs: p50 / max) | {}, {listed} hosts listed | under 1 s |",
            p50_max(&hosts_runs)
        ),
        format!(
            "| fresh fleet view in the SDK (`client.presence()`) | {:.0} ms | |",
            ms(view)
        ),
        format!(
            "| broadcast `vm.list` to all, from a running manager (10: p50 / p99) | {:.0} / {:.0} ms, {replies} replies, none missing | under 2 s, no timeout |",
            quantile_ms(&bc, 0.5),
            quantile_ms(&bc, 0.99)
        ),
        format!(
            "| the same from a fresh `hostctl vm list --all` (3: p50 / max) | {} | |",
            p50_max(&ctl_bc)
        ),
        format!(
            "| broadcast right after {doomed} hosts were killed (3: p50 / max) | {}, {dead_missing} reported missing | all {doomed} reported, no timeout |",
            p50_max(&dead_bc)
        ),
        format!(
            "| the same from a fresh `hostctl` | {:.0} ms, exit {dead_code} | exit 7 |",
            ms(dead_ctl)
        ),
        format!(
            "| heartbeats through the broker | {beats_per_s:.0} /s | {} expected |",
            n / 5
        ),
        format!(
            "| broker CPU while the fleet only beats | {broker_share:.1}% of one core (simulator: {sim_share:.1}%) | |"
        ),
        format!(
            "| one event from every host to one subscriber (SDK, event stream) | {} events in {events_secs:.1} s ({:.0}/s), latency p50 {:.0} ms, p99 {:.0} ms | |",
            lat.len(),
            lat.len() as f64 / events_secs,
            quantile_ms(&lat, 0.5),
            quantile_ms(&lat, 0.99)
        ),
        format!(
            "| time until all {n} hosts were alive in a fresh view | {:.1} s | |",
            startup.as_secs_f64()
        ),
        format!(
            "| simulator memory | {:.0} MiB for {} hosts: {:.0} KiB per host | |",
            sim_rss as f64 / 1024.0,
            n - doomed,
            sim_rss as f64 / f64::from(n - doomed)
        ),
        format!(
            "| broker memory (all its processes) | {:.0} MiB with the fleet ({:.0} MiB idle) | |",
            broker_rss as f64 / 1024.0,
            broker_idle_rss as f64 / 1024.0
        ),
    ];
    report::table(
        &mut out,
        "| measure | figure | target |\n|---|---:|---|",
        &rows,
    );
    let _ = writeln!(
        out,
        "\n**The same with {procs} agent processes** (one host each, release builds, on a new node): all alive after {:.1} s; their memory {:.0} MiB in all, {:.0} KiB per host; broker {:.0} MiB; a fresh `hostctl hosts` {:.0} ms; a broadcast `vm.list` p50 {:.0} ms.",
        proc_startup.as_secs_f64(),
        proc_rss as f64 / 1024.0,
        proc_rss as f64 / f64::from(procs),
        broker_rss_procs as f64 / 1024.0,
        ms(proc_hosts),
        quantile_ms(&proc_bc, 0.5)
    );
    println!("{out}");
    if a.write {
        write_section("fleet", &out);
    }
}
