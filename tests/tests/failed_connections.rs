//! Brokers that accept TCP connections and never answer (a hung node, one
//! out of file descriptors, a load balancer with no healthy backend), that
//! answer garbage, or that close at once: an agent, a simulated fleet and a
//! long-lived SDK client keep failing to connect, and their threads and
//! memory stay flat however long that lasts.
//!
//! Each attempt here uses the code path of the defaults; only the connect
//! timeout and the reconnection backoff are shortened, so that a hundred
//! attempts take seconds instead of hours.

use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{HostPing, Ping};
use hostbus_client::{CallOptions, Client, ClientConfig};
use hostbus_tests::{rss_kib, thread_names, AgentProcess, Behaviour, NotABroker, RabbitNode};

const CONNECT_TIMEOUT_MS: u64 = 200;
const IO_THREAD: &str = "lapin-io-loop";

/// One server of each behaviour.
fn not_brokers() -> Vec<NotABroker> {
    [Behaviour::Silent, Behaviour::Garbage, Behaviour::Closing]
        .into_iter()
        .map(|b| NotABroker::start(b).expect("a local server"))
        .collect()
}

/// Threads and memory of a process at one moment.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    threads: usize,
    io_threads: usize,
    rss_kib: u64,
}

impl Footprint {
    fn of(pid: u32) -> Self {
        let names = thread_names(pid);
        Self {
            threads: names.len(),
            io_threads: names.iter().filter(|n| *n == IO_THREAD).count(),
            rss_kib: rss_kib(pid).expect("the process's RSS"),
        }
    }
}

/// How many connection rounds (every URL tried once) the agent logged.
fn rounds(agent: &AgentProcess) -> usize {
    agent.log().matches("cannot connect to the broker").count()
}

/// Waits until the agent logged `n` failed rounds.
fn wait_rounds(agent: &AgentProcess, n: usize, within: Duration) {
    let end = Instant::now() + within;
    while rounds(agent) < n {
        assert!(
            Instant::now() < end,
            "only {} failed rounds after {within:?}:\n{}",
            rounds(agent),
            agent.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shortened(agent: hostbus_tests::AgentBuilder) -> AgentProcess {
    agent
        .env("HOSTBUS_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS.to_string())
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "100")
        .start()
}

#[test]
fn an_agent_failing_a_hundred_times_keeps_its_threads_and_memory() {
    let servers = not_brokers();
    let mut builder = AgentProcess::builder("h1", &servers[0].amqp_url());
    for s in &servers[1..] {
        builder = builder.broker_url(s.amqp_url());
    }
    let agent = shortened(builder);
    let pid = agent.pid().expect("the agent runs");
    wait_rounds(&agent, 10, Duration::from_secs(60));
    let warm = Footprint::of(pid);
    wait_rounds(&agent, 110, Duration::from_secs(120));
    let after = Footprint::of(pid);
    println!(
        "agent after 10 and 110 failed rounds (each: a silent, a garbage and a closing server): {warm:?} -> {after:?}"
    );
    // One attempt may be in flight at the moment of the sample.
    assert!(after.io_threads <= 1, "{after:?}");
    assert!(after.threads <= warm.threads + 1, "{warm:?} -> {after:?}");
    // A leaked attempt holds its thread and two frame buffers, over 256 KiB.
    assert!(
        after.rss_kib < warm.rss_kib + 4 * 1024,
        "{warm:?} -> {after:?}"
    );
    // Each failed round is one WARN line; nothing says ERROR (lapin logs
    // the end of an attempt given up on at that level).
    let log = agent.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The later stages: the broker answers, the connection stands, and the
/// agent's user may not declare its queue (no configure permission), so
/// every session ends in its topology. Each connection is closed, on the
/// broker too.
#[test]
fn an_agent_whose_topology_is_refused_keeps_its_threads_and_memory() {
    let node = RabbitNode::start_private().expect("rabbit");
    node.ctl(&["add_user", "h1", "h1-secret"])
        .expect("add_user");
    node.ctl(&["set_permissions", "-p", "/", "h1", "^$", ".*", ".*"])
        .expect("set_permissions");
    let url = node.amqp_url().replacen("guest:guest", "h1:h1-secret", 1);
    let agent = shortened(AgentProcess::builder("h1", &url));
    let pid = agent.pid().expect("the agent runs");
    let refused = |a: &AgentProcess| {
        a.log()
            .matches("cannot set up channels and topology")
            .count()
    };
    let wait = |n: usize| {
        let end = Instant::now() + Duration::from_secs(90);
        while refused(&agent) < n {
            assert!(Instant::now() < end, "{}", agent.log_tail(20));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Sampled between sessions: a session's connection holds lapin's frame
    // buffers (8 MiB at RabbitMQ's 128 KiB frames) until it is closed, so
    // a sample taken while one stands measures it, not a leak (a fresh
    // Debian run caught one: 44.8 -> 53.1 MiB with its I/O thread alive).
    let between = || {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let f = Footprint::of(pid);
            if f.io_threads == 0 || Instant::now() > end {
                return f;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait(10);
    let warm = between();
    wait(60);
    let after = between();
    println!("agent after 10 and 60 sessions refused in their topology: {warm:?} -> {after:?}");
    assert!(after.io_threads <= 1, "{after:?}");
    assert!(after.threads <= warm.threads + 1, "{warm:?} -> {after:?}");
    assert!(
        after.rss_kib < warm.rss_kib + 4 * 1024,
        "{warm:?} -> {after:?}"
    );
    // The broker holds at most the attempt of the moment.
    let conns = node
        .ctl(&["list_connections", "-q", "user"])
        .expect("list_connections");
    let open = conns.lines().filter(|l| l.trim() == "h1").count();
    assert!(
        open <= 1,
        "connections of h1 still open on the broker:\n{conns}"
    );
}

#[test]
fn a_simulated_fleet_facing_a_hung_broker_keeps_its_memory() {
    const HOSTS: usize = 40;
    let silent = NotABroker::start(Behaviour::Silent).expect("a local server");
    let sim = shortened(AgentProcess::builder("sim-0001", &silent.amqp_url()).args([
        "--simulate",
        &HOSTS.to_string(),
        "--host-prefix",
        "sim-",
    ]));
    let pid = sim.pid().expect("the simulator runs");
    wait_rounds(&sim, HOSTS * 3, Duration::from_secs(60));
    let warm = Footprint::of(pid);
    wait_rounds(&sim, HOSTS * 12, Duration::from_secs(120));
    let after = Footprint::of(pid);
    println!(
        "{HOSTS} simulated hosts after 3 and 12 failed rounds each against a silent broker: {warm:?} -> {after:?}"
    );
    // At most one attempt in flight per simulated host.
    assert!(after.io_threads <= HOSTS, "{after:?}");
    assert!(
        after.threads <= warm.threads + HOSTS,
        "{warm:?} -> {after:?}"
    );
    // Nine more rounds leaked would be 360 threads and over 90 MiB.
    assert!(
        after.rss_kib < warm.rss_kib + 24 * 1024,
        "{warm:?} -> {after:?}"
    );
}

/// A manager's client outlives its broker: the node it used stops, and
/// every call after that reconnects, through the node (refused) and three
/// servers that are not brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_client_reconnecting_a_hundred_times_keeps_its_threads_and_memory() {
    const CALLS: usize = 100;
    let mut node = RabbitNode::start_private().expect("rabbit");
    let servers = not_brokers();
    let mut cfg = ClientConfig::new(node.amqp_url());
    cfg.urls.extend(servers.iter().map(NotABroker::amqp_url));
    cfg.connect.timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let client = Client::connect(cfg).await.expect("client");
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    let ping = || client.call_with::<HostPing>("h1", Ping { echo: None }, &opts);
    // No agent: the call times out, over a live session.
    ping().await.expect_err("no agent answers");
    tokio::task::block_in_place(|| node.stop()).expect("stop the broker");

    let pid = std::process::id();
    let mut warm = None;
    for i in 0..CALLS {
        if i == 10 {
            warm = Some(settled(pid).await);
        }
        let e = ping().await.expect_err("no broker answers");
        assert!(e.is_retryable() || e.to_string().contains("connect"), "{e}");
    }
    let warm = warm.expect("sampled");
    let after = settled(pid).await;
    println!("client after 10 and {CALLS} calls with no broker: {warm:?} -> {after:?}");
    assert_eq!(after.io_threads, 0, "{after:?}");
    assert!(after.threads <= warm.threads + 2, "{warm:?} -> {after:?}");
    assert!(
        after.rss_kib < warm.rss_kib + 4 * 1024,
        "{warm:?} -> {after:?}"
    );
}

/// This process's footprint once no connection attempt is in flight (the
/// I/O thread of a given-up attempt ends shortly after its socket is shut
/// down), or after two seconds.
async fn settled(pid: u32) -> Footprint {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let f = Footprint::of(pid);
        if f.io_threads == 0 || Instant::now() > end {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
