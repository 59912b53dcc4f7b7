//! `hostbus-bench`: measures hostbus against the physical limit of its
//! broker, side by side in one run, and writes the figures into
//! `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p hostbus-tests --bin hostbus-bench            # print and write docs/performance.md
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- --no-write --secs 2
//! ```
//!
//! It starts a private RabbitMQ node and a release-built agent on libvirt's
//! test driver, then measures:
//! * call round trips (`host.ping`, `vm.list`) through the SDK at
//!   concurrency 1, 16 and 64, next to a raw-lapin baseline: the same broker,
//!   a minimal responder that answers on direct reply-to, no hostbus code;
//! * events from one agent to 1 and to 10 subscribers, with end-to-end latency;
//! * the agent's footprint: RSS idle and under load, time to first heartbeat.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{
    HostPing, Ping, VmList, VmListRequest, VmPause, VmResume, VmUuid,
};
use hostbus_client::protocol::names::{EVENT_EXCHANGE, PRESENCE_EXCHANGE};
use hostbus_client::protocol::{decode, now_ms, ContentType, Event};
use hostbus_client::{Client, ClientConfig};
use hostbus_tests::{AgentProcess, AmqpPeer, RabbitNode};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::oneshot;

const WEB01: &str = "11111111-0000-4000-8000-000000000001";

struct Args {
    secs: u64,
    write: bool,
}

fn args() -> Args {
    let mut a = Args {
        secs: 5,
        write: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--secs" => a.secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--no-write" => a.write = false,
            other => eprintln!("hostbus-bench: ignoring {other}"),
        }
    }
    a
}

/// Latency samples and a count over a window.
struct Run {
    calls: u64,
    secs: f64,
    lat: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
}

/// Runs `concurrency` loops of `call` for `secs`, after a short warm-up.
async fn drive<F, Fut>(concurrency: usize, secs: u64, call: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let warm = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, warm, samples, call) =
            (stop.clone(), warm.clone(), samples.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !call().await {
                    continue;
                }
                if warm.load(Ordering::Relaxed) {
                    mine.push(t.elapsed());
                }
            }
            samples.lock().expect("samples").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    warm.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let lat = std::mem::take(&mut *samples.lock().expect("samples"));
    Run {
        calls: lat.len() as u64,
        secs: elapsed,
        lat,
    }
}

/// The raw baseline: a responder that echoes on direct reply-to, and a
/// client with one channel and a correlation map, all plain lapin.
struct Raw {
    ch: lapin::Channel,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    _conns: (Connection, Connection),
}

impl Raw {
    async fn start(url: &str) -> Raw {
        let server = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw server");
        let sch = server.create_channel().await.expect("channel");
        sch.queue_declare(
            "bench.raw".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        let mut requests = sch
            .basic_consume(
                "bench.raw".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let sch2 = sch.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                let (Some(to), Some(corr)) = (
                    d.properties.reply_to().clone(),
                    d.properties.correlation_id().clone(),
                ) else {
                    continue;
                };
                let _ = sch2
                    .basic_publish(
                        "".into(),
                        to,
                        BasicPublishOptions::default(),
                        &d.data,
                        BasicProperties::default().with_correlation_id(corr),
                    )
                    .await;
            }
        });
        let client = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw client");
        let ch = client.create_channel().await.expect("channel");
        let mut replies = ch
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("reply-to");
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let p2 = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                if let Some(c) = d.properties.correlation_id() {
                    if let Some(tx) = p2.lock().expect("pending").remove(c.as_str()) {
                        let _ = tx.send(());
                    }
                }
            }
        });
        Raw {
            ch,
            pending,
            _conns: (server, client),
        }
    }

    async fn call(&self, id: u64) -> bool {
        let corr = id.to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending")
            .insert(corr.clone(), tx);
        let props = BasicProperties::default()
            .with_correlation_id(corr.as_str().into())
            .with_reply_to("amq.rabbitmq.reply-to".into());
        if self
            .ch
            .basic_publish(
                "".into(),
                "bench.raw".into(),
                BasicPublishOptions::default(),
                b"\x80",
                props,
            )
            .await
            .is_err()
        {
            return false;
        }
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(String::new(), |k| {
            format!("{:.0} GiB", k as f64 / 1_048_576.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rabbit = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} memory, Linux {}, RabbitMQ {rabbit}, release build",
        kernel.trim()
    )
}

fn main() {
    let a = args();
    eprintln!("hostbus-bench: building the release agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "hostbus-agent",
            "--bin",
            "hostbus-agent",
        ])
        .current_dir(hostbus_tests::workspace_dir())
        .status()
        .expect("cargo");
    assert!(status.success(), "cannot build the release agent");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || hostbus_tests::workspace_dir().join("target"),
        std::path::PathBuf::from,
    );
    // The harness runs the binary this variable names; set before any other thread exists.
    std::env::set_var(
        hostbus_tests::AGENT_BIN_ENV,
        target.join("release/hostbus-agent"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(a));
}

async fn bench(a: Args) {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();

    let peer = AmqpPeer::connect(&url).await.expect("peer");
    let mut beats = peer
        .subscribe(PRESENCE_EXCHANGE, "h1.heartbeat")
        .await
        .expect("subscribe");
    let spawned = Instant::now();
    let agent = AgentProcess::builder("h1", &url)
        .arg("--log-level")
        .arg("warn")
        .heartbeat_interval(Duration::from_millis(1000))
        // As many commands in flight as the deepest client concurrency measured.
        .concurrency(64)
        .spawn()
        .expect("agent");
    beats
        .next(Duration::from_secs(60))
        .await
        .expect("first heartbeat");
    let first_heartbeat = spawned.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid().expect("pid");
    let rss_idle = rss_kib(pid);

    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let raw = Arc::new(Raw::start(&url).await);
    let mut table = Vec::new();
    let mut rss_load = 0;
    let mut targets = Vec::new();
    for c in [1usize, 16, 64] {
        let r = raw.clone();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let raw_run = drive(c, a.secs, move || {
            let r = r.clone();
            let id = counter.fetch_add(1, Ordering::Relaxed);
            async move { r.call(id).await }
        })
        .await;
        let cl = client.clone();
        let ping = drive(c, a.secs, move || {
            let cl = cl.clone();
            async move { cl.call::<HostPing>("h1", Ping { echo: None }).await.is_ok() }
        })
        .await;
        rss_load = rss_load.max(rss_kib(pid));
        let cl = client.clone();
        let list = drive(c, a.secs, move || {
            let cl = cl.clone();
            async move {
                cl.call::<VmList>("h1", VmListRequest { power_state: None })
                    .await
                    .is_ok()
            }
        })
        .await;
        rss_load = rss_load.max(rss_kib(pid));
        let ratio = ping.rate() / raw_run.rate();
        let p99x = ping.pct(0.99) / raw_run.pct(0.99);
        targets.push((c, ratio, p99x));
        for (name, r) in [
            ("raw lapin (baseline)", &raw_run),
            ("hostbus host.ping", &ping),
            ("hostbus vm.list", &list),
        ] {
            table.push(format!(
                "| {c:>3} | {name:<20} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5.0}% |",
                r.rate(),
                r.pct(0.5),
                r.pct(0.99),
                100.0 * r.rate() / raw_run.rate()
            ));
        }
    }

    // Events: pause/resume churn on web01 (one VM: its operations are
    // serialized anyway); subscribers on plain lapin.
    let mut ev_rows = Vec::new();
    for subs in [1usize, 10] {
        let mut consumers = Vec::new();
        for _ in 0..subs {
            consumers.push(
                peer.subscribe(EVENT_EXCHANGE, "h1.vm.*")
                    .await
                    .expect("subscribe"),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        let (cl, stop2) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let uuid = WEB01.parse().expect("uuid");
            while !stop2.load(Ordering::Relaxed) {
                let _ = cl.call::<VmPause>("h1", VmUuid { uuid }).await;
                let _ = cl.call::<VmResume>("h1", VmUuid { uuid }).await;
            }
        }));
        let window = Duration::from_secs(a.secs);
        let mut counts = Vec::new();
        let mut lat = Vec::new();
        let collected = async {
            let mut handles = Vec::new();
            for mut s in consumers {
                handles.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let mut n = 0u64;
                    let mut l = Vec::new();
                    while t.elapsed() < window {
                        if let Ok(r) = s.next(Duration::from_millis(500)).await {
                            if let Ok(e) = decode::<Event>(ContentType::MsgPack, &r.body, 64 << 20)
                            {
                                n += 1;
                                l.push(Duration::from_millis(now_ms().saturating_sub(e.time)));
                            }
                        }
                    }
                    (n, l)
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("subscriber"));
            }
            out
        }
        .await;
        stop.store(true, Ordering::Relaxed);
        for l in load {
            let _ = l.await;
        }
        for (n, l) in collected {
            counts.push(n);
            lat.extend(l);
        }
        let r = Run {
            calls: counts.iter().sum::<u64>() / subs as u64,
            secs: window.as_secs_f64(),
            lat,
        };
        ev_rows.push(format!(
            "| {subs:>2} | {:>9.0} | {:>9.0} | {:>7.1} | {:>7.1} |",
            r.rate(),
            r.rate() * subs as f64,
            r.pct(0.5),
            r.pct(0.99)
        ));
    }
    drop(raw);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. Window {} s per cell, after 0.5 s of warm-up.\n",
        machine(),
        a.secs
    );
    let _ = writeln!(out, "### Calls through the broker\n");
    let _ = writeln!(out, "| concurrency | path | calls/s | p50 ms | p99 ms | of raw |\n|---:|---|---:|---:|---:|---:|");
    for row in &table {
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(
        out,
        "\n### Targets (host.ping against the raw baseline of the same run)\n"
    );
    let _ = writeln!(out, "| concurrency | throughput ratio (target ≥ 0.80) | p99 ratio (target ≤ 1.50) |\n|---:|---:|---:|");
    for (c, ratio, p99x) in &targets {
        let _ = writeln!(
            out,
            "| {c} | {ratio:.2} {} | {p99x:.2} {} |",
            if *ratio >= 0.8 { "met" } else { "missed" },
            if *p99x <= 1.5 { "met" } else { "missed" }
        );
    }
    let _ = writeln!(out, "\n### Events (VM pause/resume churn on one agent)\n");
    let _ = writeln!(out, "| subscribers | events/s each | deliveries/s total | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|");
    for row in &ev_rows {
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out, "\n### Agent footprint\n");
    let _ = writeln!(
        out,
        "| RSS idle | RSS under load (max) | start to first heartbeat |\n|---:|---:|---:|\n| {:.1} MiB | {:.1} MiB | {} ms |",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0,
        first_heartbeat.as_millis()
    );
    println!("{out}");
    if a.write {
        let path = hostbus_tests::workspace_dir().join("docs/performance.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
        let new = match (doc.find(begin), doc.find(end)) {
            (Some(b), Some(e)) if e > b => format!("{}{begin}\n{out}{}", &doc[..b], &doc[e..]),
            _ => format!("{doc}\n{begin}\n{out}{end}\n"),
        };
        std::fs::write(&path, new).expect("write docs/performance.md");
        eprintln!("hostbus-bench: wrote {}", path.display());
    }
    drop(agent);
}
