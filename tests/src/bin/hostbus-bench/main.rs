//! `hostbus-bench`: measures hostbus against the physical limit of its
//! broker, side by side in one run, and writes the figures into
//! `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p hostbus-tests --bin hostbus-bench            # calls: print and write docs/performance.md
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- fleet    # 1,000 simulated hosts
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- cluster  # three nodes and quorum queues against one node and classic queues
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- all --no-write --secs 2
//! ```
//!
//! Each section writes its own part of `docs/performance.md` (between
//! `<!-- <section>:begin -->` and `<!-- <section>:end -->`). The calls
//! section starts a private RabbitMQ node and a release-built agent on
//! libvirt's test driver, then measures:
//! * call round trips (`host.ping`, `vm.list`) through the SDK at
//!   concurrency 1, 16 and 64, next to a raw-lapin baseline: the same broker,
//!   a minimal responder that answers on direct reply-to, no hostbus code;
//! * events from one agent to 1 and to 10 subscribers, with end-to-end latency;
//! * the agent's footprint: RSS idle and under load, time to first heartbeat.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
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
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;

const WEB01: &str = "11111111-0000-4000-8000-000000000001";

mod cluster;
mod fleet;

/// Which parts to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Calls,
    Fleet,
    Cluster,
    All,
}

struct Args {
    section: Section,
    /// Simulated hosts of the fleet section.
    hosts: u32,
    /// Queue type of the fleet section's agents.
    queue_type: String,
    /// Seconds per measured slice.
    secs: u64,
    /// Slices per path, interleaved across the paths of one table.
    rounds: usize,
    write: bool,
    breakdown: bool,
    /// Only the breakdown (for profiling sessions; writes nothing).
    breakdown_only: bool,
    /// Only host.ping at this concurrency, for attaching a profiler.
    profile: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        section: Section::Calls,
        hosts: 1000,
        queue_type: "quorum".into(),
        secs: 2,
        rounds: 3,
        write: true,
        breakdown: true,
        breakdown_only: false,
        profile: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--secs" => a.secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(2),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            "--no-write" => a.write = false,
            "calls" => a.section = Section::Calls,
            "fleet" => a.section = Section::Fleet,
            "cluster" => a.section = Section::Cluster,
            "all" => a.section = Section::All,
            "--hosts" => a.hosts = it.next().and_then(|v| v.parse().ok()).unwrap_or(1000),
            "--queue-type" => a.queue_type = it.next().unwrap_or_else(|| "quorum".into()),
            "--no-breakdown" => a.breakdown = false,
            "--profile" => {
                a.profile = it.next().and_then(|v| v.parse().ok());
                a.write = false;
            }
            "--breakdown-only" => {
                a.breakdown_only = true;
                a.write = false;
            }
            other => eprintln!("hostbus-bench: ignoring {other}"),
        }
    }
    a
}

/// Latency samples and a count over one or more windows.
#[derive(Default)]
pub(crate) struct Run {
    calls: u64,
    secs: f64,
    lat: Vec<Duration>,
    /// CPU seconds over the windows: broker, agent, this process.
    cpu: [f64; 3],
    /// Calls/s of each window merged in.
    rates: Vec<f64>,
}

impl Run {
    /// Calls/s: the median over the windows merged in.
    pub(crate) fn rate(&self) -> f64 {
        if self.rates.is_empty() {
            return self.calls as f64 / self.secs;
        }
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }
    fn merge(&mut self, other: Run) {
        self.rates.push(other.calls as f64 / other.secs);
        self.calls += other.calls;
        self.secs += other.secs;
        self.lat.extend(other.lat);
        for i in 0..3 {
            self.cpu[i] += other.cpu[i];
        }
    }
    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
    /// CPU microseconds per call of the broker, the agent and this process.
    pub(crate) fn cpu_per_call(&self) -> [f64; 3] {
        let n = self.calls.max(1) as f64;
        self.cpu.map(|c| c * 1e6 / n)
    }
}

/// Where the CPU goes: the broker's process group, the agent, this process.
#[derive(Clone)]
pub(crate) struct Meter {
    pub(crate) broker: Vec<u32>,
    pub(crate) agent: u32,
}

impl Meter {
    pub(crate) fn sample(&self) -> [f64; 3] {
        [
            cpu_secs(&self.broker),
            cpu_secs(&[self.agent]),
            cpu_secs(&[std::process::id()]),
        ]
    }
}

/// One way of making a call; true when it succeeded.
pub(crate) type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

pub(crate) fn ping_call(client: &Client) -> Call {
    let cl = client.clone();
    Arc::new(move || {
        let cl = cl.clone();
        Box::pin(async move { cl.call::<HostPing>("h1", Ping { echo: None }).await.is_ok() })
    })
}

fn list_call(client: &Client) -> Call {
    let cl = client.clone();
    Arc::new(move || {
        let cl = cl.clone();
        Box::pin(async move {
            cl.call::<VmList>("h1", VmListRequest { power_state: None })
                .await
                .is_ok()
        })
    })
}

fn raw_call(raw: &Arc<Raw>) -> Call {
    let r = raw.clone();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move || {
        let r = r.clone();
        let id = counter.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { r.call(id).await })
    })
}

/// Measures every path at `concurrency`: `rounds` slices of `secs` each,
/// interleaved (path 1, 2, …, then again), so a slow spell of the machine
/// hits every path alike. Calls/s is the median slice.
pub(crate) async fn measure(
    meter: &Meter,
    concurrency: usize,
    secs: u64,
    rounds: usize,
    paths: &[Call],
) -> Vec<Run> {
    let mut runs: Vec<Run> = paths.iter().map(|_| Run::default()).collect();
    for _ in 0..rounds {
        for (path, run) in paths.iter().zip(&mut runs) {
            let p = path.clone();
            run.merge(drive(meter, concurrency, secs, move || p()).await);
        }
    }
    runs
}

/// Runs `concurrency` loops of `call` for `secs`, after a short warm-up.
pub(crate) async fn drive<F, Fut>(meter: &Meter, concurrency: usize, secs: u64, call: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
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
    let cpu0 = meter.sample();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = meter.sample();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let lat = std::mem::take(&mut *samples.lock().expect("samples"));
    Run {
        calls: lat.len() as u64,
        secs: elapsed,
        lat,
        cpu: [0, 1, 2].map(|i| cpu1[i] - cpu0[i]),
        rates: Vec::new(),
    }
}

/// What a raw request/reply pays for, beyond the minimal baseline; each
/// flag adds one of the broker operations a hostbus call makes, so the
/// breakdown (`--breakdown`) prices them one by one on the same broker.
#[derive(Clone, Copy, Default)]
struct RawOpts {
    /// Route through a topic exchange instead of the default exchange.
    topic: bool,
    /// Requests carry a per-message TTL (`expiration`), as hostbus commands do.
    ttl: bool,
    /// A durable queue (requests still transient).
    durable: bool,
    /// Persistent requests (delivery mode 2).
    persistent: bool,
    /// The responder answers each request in its own task.
    spawn: bool,
    /// The responder acks each request after publishing its reply.
    ack: bool,
    /// The client publishes with confirms and the mandatory flag, and waits
    /// for the confirm along with the reply.
    confirm: bool,
}

/// The raw baseline: a responder that echoes on direct reply-to, and a
/// client with one channel and a correlation map, all plain lapin.
struct Raw {
    ch: lapin::Channel,
    opts: RawOpts,
    exchange: &'static str,
    queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    _conns: (Connection, Connection),
}

impl Raw {
    async fn start(url: &str, opts: RawOpts) -> Raw {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let queue = format!("bench.raw.{}", N.fetch_add(1, Ordering::Relaxed));
        let server = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw server");
        let sch = server.create_channel().await.expect("channel");
        sch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: !opts.durable,
                durable: opts.durable,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        let exchange = if opts.topic {
            let (name, kind) = ("bench.topic", ExchangeKind::Topic);
            sch.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange");
            sch.queue_bind(
                queue.as_str().into(),
                name.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
            name
        } else {
            ""
        };
        if opts.ack {
            sch.basic_qos(64, BasicQosOptions::default())
                .await
                .expect("qos");
        }
        // Replies and acks on the consuming channel, as the agent does for
        // direct reply-to.
        let reply_ch = sch.clone();
        let mut requests = sch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: !opts.ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                let reply_ch = reply_ch.clone();
                let answer = async move {
                    let (Some(to), Some(corr)) = (
                        d.properties.reply_to().clone(),
                        d.properties.correlation_id().clone(),
                    ) else {
                        return;
                    };
                    if reply_ch
                        .basic_publish(
                            "".into(),
                            to,
                            BasicPublishOptions::default(),
                            &d.data,
                            BasicProperties::default().with_correlation_id(corr),
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if opts.ack {
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    }
                };
                if opts.spawn {
                    tokio::spawn(answer);
                } else {
                    answer.await;
                }
            }
        });
        let client = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw client");
        let ch = client.create_channel().await.expect("channel");
        if opts.confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
        }
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
            opts,
            exchange,
            queue,
            pending,
            _conns: (server, client),
        }
    }

    /// Closes both connections (dropping a lapin connection leaves it open).
    async fn close(&self) {
        for c in [&self._conns.0, &self._conns.1] {
            let _ = c.close(200, "done".into()).await;
        }
    }

    async fn call(&self, id: u64) -> bool {
        let corr = id.to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending")
            .insert(corr.clone(), tx);
        let mut props = BasicProperties::default()
            .with_correlation_id(corr.as_str().into())
            .with_reply_to("amq.rabbitmq.reply-to".into());
        if self.opts.persistent {
            props = props.with_delivery_mode(2);
        }
        if self.opts.ttl {
            props = props.with_expiration("30000".into());
        }
        let Ok(confirm) = self
            .ch
            .basic_publish(
                self.exchange.into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: self.opts.confirm,
                    ..BasicPublishOptions::default()
                },
                b"\x80",
                props,
            )
            .await
        else {
            return false;
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), rx);
        if self.opts.confirm {
            let (reply, confirm) = futures_lite::future::zip(reply, confirm).await;
            reply.is_ok_and(|r| r.is_ok()) && confirm.is_ok()
        } else {
            reply.await.is_ok_and(|r| r.is_ok())
        }
    }
}

/// CPU seconds (user + system) used so far by the processes `pids`.
pub(crate) fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|&p| {
            // stat(5) fields 14 and 15: utime, stime.
            let f = hostbus_tests::stat_fields(p)?;
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .sum()
}

const HEADER: &str = "| concurrency | path | calls/s | p50 ms | p99 ms | of raw | broker µs | agent µs | client µs |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|";

/// One table row: rate, latency, share of `base` and CPU per call.
fn row(c: &str, name: &str, r: &Run, base: f64) -> String {
    let [b, ag, cl] = r.cpu_per_call();
    format!(
        "| {c} | {name:<28} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5.0}% | {b:>6.0} | {ag:>6.0} | {cl:>6.0} |",
        r.rate(),
        r.pct(0.5),
        r.pct(0.99),
        100.0 * r.rate() / base
    )
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set (high-water mark) of a process.
pub(crate) fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn machine() -> String {
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
    let status = hostbus_tests::cargo()
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
    let section = a.section;
    if matches!(section, Section::Calls | Section::All) {
        runtime.block_on(bench(&a));
    }
    if matches!(section, Section::Fleet | Section::All) {
        runtime.block_on(fleet::bench(&a));
    }
    if matches!(section, Section::Cluster | Section::All) {
        runtime.block_on(cluster::bench(&a));
    }
}

/// Builds the release `hostctl` next to the release agent; its path.
pub(crate) fn release_hostctl() -> std::path::PathBuf {
    let status = hostbus_tests::cargo()
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "hostctl",
            "--bin",
            "hostctl",
        ])
        .current_dir(hostbus_tests::workspace_dir())
        .status()
        .expect("cargo");
    assert!(status.success(), "cannot build the release hostctl");
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || hostbus_tests::workspace_dir().join("target"),
            std::path::PathBuf::from,
        )
        .join("release/hostctl")
}

/// Replaces the part of docs/performance.md between
/// `<!-- {section}:begin -->` and `<!-- {section}:end -->` with `text`
/// (appends the part when it is not there yet).
pub(crate) fn write_section(section: &str, text: &str) {
    let path = hostbus_tests::workspace_dir().join("docs/performance.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        format!("<!-- {section}:begin -->"),
        format!("<!-- {section}:end -->"),
    );
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{begin}\n{text}{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{begin}\n{text}{end}\n"),
    };
    std::fs::write(&path, new).expect("write docs/performance.md");
    eprintln!(
        "hostbus-bench: wrote the {section} section of {}",
        path.display()
    );
}

/// The `p` quantile of `v`, in ms.
pub(crate) fn quantile_ms(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

async fn bench(a: &Args) {
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
        .env("HOSTBUS_QUEUE_TYPE", &a.queue_type)
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
    let meter = Meter {
        broker: node
            .process_group()
            .map(hostbus_tests::group_members)
            .unwrap_or_default(),
        agent: pid,
    };
    if let Some(c) = a.profile {
        eprintln!(
            "hostbus-bench: host.ping at concurrency {c} for {} s; agent pid {pid}, broker pids {:?}",
            a.secs, meter.broker
        );
        let r = measure(&meter, c, a.secs, 1, &[ping_call(&client)]).await;
        println!(
            "{HEADER}\n{}",
            row(&format!("{c:>3}"), "hostbus host.ping", &r[0], r[0].rate())
        );
        return;
    }
    // Two minimal responders: answering inline is fastest at concurrency 1,
    // a task per request from 16 on; the baseline is whichever is faster.
    let raw_inline = Arc::new(Raw::start(&url, RawOpts::default()).await);
    let raw_tasks = Arc::new(
        Raw::start(
            &url,
            RawOpts {
                spawn: true,
                ..RawOpts::default()
            },
        )
        .await,
    );
    let mut table = Vec::new();
    let mut targets = Vec::new();
    let levels: &[usize] = if a.breakdown_only { &[] } else { &[1, 16, 64] };
    let names = [
        "raw lapin, inline responder",
        "raw lapin, task per request",
        "hostbus host.ping",
        "hostbus vm.list",
    ];
    for &c in levels {
        let paths = [
            raw_call(&raw_inline),
            raw_call(&raw_tasks),
            ping_call(&client),
            list_call(&client),
        ];
        let runs = measure(&meter, c, a.secs, a.rounds, &paths).await;
        let base = if runs[1].rate() > runs[0].rate() {
            &runs[1]
        } else {
            &runs[0]
        };
        let ping = &runs[2];
        targets.push((
            c,
            ping.rate() / base.rate(),
            ping.pct(0.99) / base.pct(0.99),
        ));
        for (name, r) in names.iter().zip(&runs) {
            table.push(row(&format!("{c:>3}"), name, r, base.rate()));
        }
    }
    let rss_load = hwm_kib(pid);
    raw_inline.close().await;
    raw_tasks.close().await;

    // The price list: the raw baseline with hostbus's broker operations
    // added one at a time, then hostbus itself.
    let mut breakdown = Vec::new();
    if a.breakdown {
        let mut o = RawOpts::default();
        let mut steps = vec![("raw, inline responder", o)];
        o.spawn = true;
        steps.push(("raw, task per request", o));
        o.topic = true;
        steps.push(("+ topic exchange", o));
        o.durable = true;
        steps.push(("+ durable queue", o));
        o.ack = true;
        steps.push(("+ responder acks", o));
        o.ttl = true;
        steps.push(("+ per-message TTL", o));
        o.confirm = true;
        steps.push(("+ client confirms, mandatory", o));
        o.persistent = true;
        steps.push(("+ persistent requests", o));
        let mut raws = Vec::new();
        for &(_, opts) in &steps {
            raws.push(Arc::new(Raw::start(&url, opts).await));
        }
        let mut paths: Vec<Call> = raws.iter().map(raw_call).collect();
        paths.push(ping_call(&client));
        for c in [1usize, 16, 64] {
            let runs = measure(&meter, c, a.secs, a.rounds, &paths).await;
            // Against the faster of the two minimal responders (rows 1 and 2).
            let base = runs.iter().take(2).map(Run::rate).fold(0.0, f64::max);
            let names = steps.iter().map(|(n, _)| *n).chain(["hostbus host.ping"]);
            for (name, r) in names.zip(&runs) {
                breakdown.push(row(&format!("{c:>3}"), name, r, base));
            }
        }
        for r in raws {
            r.close().await;
        }
    }

    // Events: pause/resume churn on web01 (one VM: its operations are
    // serialized anyway); subscribers on plain lapin.
    let mut ev_rows = Vec::new();
    let fan_out: &[usize] = if a.breakdown_only { &[] } else { &[1, 10] };
    for &subs in fan_out {
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
            ..Run::default()
        };
        ev_rows.push(format!(
            "| {subs:>2} | {:>9.0} | {:>9.0} | {:>7.1} | {:>7.1} |",
            r.rate(),
            r.rate() * subs as f64,
            r.pct(0.5),
            r.pct(0.99)
        ));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. The agent's command queue is a {} queue. Each cell: {} slices of {} s (each after 0.5 s of warm-up), interleaved with the other rows of its table; calls/s is the median slice, latencies and CPU cover all slices.\n",
        machine(),
        a.queue_type,
        a.rounds,
        a.secs
    );
    let _ = writeln!(out, "### Calls through the broker\n");
    let _ = writeln!(out, "{HEADER}");
    for row in &table {
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out, "\nCPU columns: microseconds of CPU per call in the broker (all its processes), the agent, and the benchmark process (the SDK client; for the raw rows, the raw client and responder).");
    if !breakdown.is_empty() {
        let _ = writeln!(
            out,
            "\n### What each broker operation costs (raw lapin, added one at a time)\n"
        );
        let _ = writeln!(out, "{HEADER}");
        for row in &breakdown {
            let _ = writeln!(out, "{row}");
        }
        let _ = writeln!(out, "\nEach row adds one thing a hostbus call asks of the broker to the row above; \"of raw\" is against the faster of the first two rows of the same concurrency.");
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
        "| RSS idle | peak RSS (VmHWM, after all calls) | start to first heartbeat |\n|---:|---:|---:|\n| {:.1} MiB | {:.1} MiB | {} ms |",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0,
        first_heartbeat.as_millis()
    );
    println!("{out}");
    if a.write {
        write_section("bench", &out);
    }
    drop(agent);
}
