//! The docker-compose test cluster run for real (issue 25): the README's
//! session on Compose v2 and v1, an agent cut off the network, the broker
//! container SIGKILLed, and a node of the three-node broker cluster stopped
//! under load. Everything runs in containers built from
//! `broker-compose/Dockerfile` on RabbitMQ 4 (`HOSTBUS_RABBITMQ_IMAGE`);
//! the test drives it from outside (hostctl and the SDK on the host, through
//! the published ports) and from inside (`docker compose run hostctl`).
//!
//! Needs a Docker engine and the base images (`broker-compose/images`,
//! which scripts/test runs first); without an engine the suite says so and
//! does not run, except where it is required (`HOSTBUS_TEST_DOCKER_REQUIRED` or
//! `CI`). The tests take turns: one compose project, fixed ports. Figures
//! are printed; run with `--nocapture`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{VmSetMemory, VmSetMemoryRequest};
use hostbus_client::protocol::Command;
use hostbus_client::{Client, ClientConfig, Notification, ResyncReason, StartAt};
use hostbus_tests::compose::{amqp_url, Compose, Flavour, AMQP_PORT};
use hostbus_tests::sdk::{next_notification, subscribe_from};
use hostbus_tests::{commands_total, metric, Hostctl, TempDir};
use serde_json::Value;

const WEB01: &str = "11111111-0000-4000-8000-000000000001";
const API01: &str = "22222222-0000-4000-8000-000000000001";

/// One compose project at a time; `None` when there is no Docker engine
/// and the suite is not required.
fn turn() -> Option<MutexGuard<'static, ()>> {
    static TURN: Mutex<()> = Mutex::new(());
    match Compose::available() {
        Ok(()) => Some(TURN.lock().unwrap_or_else(PoisonError::into_inner)),
        Err(why) if Compose::required() => panic!("the compose suite is required: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The agents' metrics, as their published ports serve them (h1 9191,
/// h2 9192, h3 9193).
fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn hostctl(port: u16, dir: &TempDir) -> Hostctl {
    Hostctl::new(amqp_url(port)).logged(dir.path(), Duration::from_secs(60))
}

/// The host ids of `hostctl -o json hosts` whose liveness is `want`.
fn hosts_in(json: &Value, want: &str) -> Vec<String> {
    json.as_array()
        .unwrap_or_else(|| panic!("a host list: {json}"))
        .iter()
        .filter(|h| h["liveness"] == want)
        .filter_map(|h| h["host_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `hostctl hosts` lists exactly `want` as alive.
fn wait_alive(ctl: &Hostctl, want: &[&str], within: Duration) {
    let end = Instant::now() + within;
    loop {
        let out = ctl.run(&["-o", "json", "hosts"]);
        if out.code == 0 {
            let json: Value = serde_json::from_str(&out.stdout).expect("json");
            let mut alive = hosts_in(&json, "alive");
            alive.sort();
            if alive == want {
                return;
            }
            assert!(Instant::now() < end, "alive: {alive:?}, want {want:?}");
        } else {
            assert!(Instant::now() < end, "hostctl hosts: {}", out.stderr);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The one-broker cluster (Compose v2) up with every agent alive, hostctl
/// and an SDK client (calls due within `timeout`) on its published port.
struct Running {
    _dir: TempDir,
    c: Compose,
    ctl: Hostctl,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Running {
    fn up(name: &str, timeout: Duration) -> Self {
        let dir = TempDir::new(name).expect("dir");
        let c = Compose::single(Flavour::V2);
        c.down();
        c.up();
        let ctl = hostctl(AMQP_PORT, &dir);
        wait_alive(&ctl, &["h1", "h2", "h3"], Duration::from_secs(60));
        let rt = runtime();
        let mut cfg = ClientConfig::new(amqp_url(AMQP_PORT));
        cfg.timeout = timeout;
        let client = rt.block_on(Client::connect(cfg)).expect("client");
        Self {
            _dir: dir,
            c,
            ctl,
            rt,
            client,
        }
    }
}

/// Sets h1's web01 to (512 + i) MiB through the SDK and checks the answer;
/// how long the call took.
fn set_web01_memory(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    c: &Compose,
    i: u64,
) -> Duration {
    let t = Instant::now();
    let vm = rt
        .block_on(client.call::<VmSetMemory>(
            "h1",
            VmSetMemoryRequest {
                uuid: WEB01.parse().expect("uuid"),
                memory_kib: (512 + i) * 1024,
            },
        ))
        .unwrap_or_else(|e| panic!("command {i}: {e}\n{}", c.logs("h1")));
    assert_eq!(vm.memory_kib, (512 + i) * 1024);
    t.elapsed()
}

/// The README's session, on Compose v2 then v1: `up` waits until every
/// agent is healthy, hostctl drives the cluster from the host and from
/// inside the network, and `down -v` leaves nothing behind.
#[test]
fn the_readme_cluster_runs_on_compose_v2_and_v1() {
    let Some(_turn) = turn() else { return };
    let dir = TempDir::new("compose-readme").expect("dir");
    for flavour in [Flavour::V2, Flavour::V1] {
        let c = Compose::single(flavour);
        c.down();
        let took = c.up();
        println!("{flavour:?}: up (build cached or not) and healthy in {took:?}");
        c.wait_healthy(Duration::from_secs(10));

        // Inside the network: the hostctl service.
        let inside = c.run(
            &["run", "--rm", "hostctl", "-o", "json", "hosts"],
            Duration::from_secs(120),
        );
        let json: Value = serde_json::from_str(inside.trim()).unwrap_or_else(|e| {
            panic!("{flavour:?}: `run --rm hostctl hosts` printed no JSON ({e}): {inside}")
        });
        assert_eq!(hosts_in(&json, "alive"), ["h1", "h2", "h3"], "{json}");

        // From the host, through the published port: the README's session.
        let ctl = hostctl(AMQP_PORT, &dir);
        let vms = ctl.json(&["vm", "list", "--all"]);
        assert_eq!(vms["missing"], serde_json::json!([]), "{vms}");
        assert_eq!(vms["errors"], serde_json::json!({}), "{vms}");
        let names: Vec<&str> = vms["vms"]
            .as_array()
            .expect("a VM list")
            .iter()
            .filter_map(|v| v["vm"]["name"].as_str())
            .collect();
        assert_eq!(names.len(), 9, "three VMs on each host: {vms}");
        let out = ctl.run(&["vm", "start", "h1/db01"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout.trim(), "db01 is running");
        let out = ctl.run(&["vm", "pause", "h1/batch01"]);
        assert_eq!(out.code, 4, "a structured refusal: {}", out.stderr);
        assert!(out.stderr.contains("VM_BAD_POWER_STATE"), "{}", out.stderr);
        let events = ctl.run(&[
            "-o", "json", "events", "h1.vm.*", "--from", "first", "--count", "1",
        ]);
        assert_eq!(events.code, 0, "{}", events.stderr);
        assert!(
            events.stdout.contains("db01") && events.stdout.contains("started"),
            "the start is in the event stream: {}",
            events.stdout
        );

        // Every hostctl run closed its connection: RabbitMQ 4 logged the
        // closes, and no `client unexpectedly closed TCP connection`.
        let broker_log = c.logs("rabbitmq");
        assert!(
            broker_log.contains("closing AMQP connection"),
            "the broker logs connection closes: {broker_log}"
        );
        let unexpected: Vec<&str> = broker_log
            .lines()
            .filter(|l| l.contains("unexpectedly closed TCP connection"))
            .collect();
        assert!(unexpected.is_empty(), "{flavour:?}: {unexpected:#?}");

        let t = Instant::now();
        c.down();
        println!("{flavour:?}: down -v in {:?}", t.elapsed());
        let left = Compose::leftovers();
        assert!(left.is_empty(), "{flavour:?}: down -v left {left:?}");
    }
}

/// An agent's container cut off the network (`docker network disconnect`):
/// a broadcast names it missing and exits 7; commands sent to it meanwhile
/// wait in its queue; once it is back it is alive again and runs each of
/// them exactly once.
#[test]
fn a_partitioned_agent_is_missing_then_runs_its_queued_commands_once() {
    let Some(_turn) = turn() else { return };
    let r = Running::up("compose-partition", Duration::from_secs(180));
    let (c, ctl, rt, client) = (&r.c, &r.ctl, &r.rt, &r.client);
    let before = commands_total(&metrics(9192), VmSetMemory::NAME, "ok");

    let cut = Instant::now();
    c.disconnect("h2");
    let out = ctl.run(&["-o", "json", "vm", "list", "--all"]);
    assert_eq!(
        out.code, 7,
        "a partial broadcast: {}\n{}",
        out.stdout, out.stderr
    );
    let partial: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(partial["missing"], serde_json::json!(["h2"]), "{partial}");
    let answered: BTreeSet<&str> = partial["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter_map(|v| v["host"].as_str())
        .collect();
    assert_eq!(answered, BTreeSet::from(["h1", "h3"]), "{partial}");
    println!(
        "broadcast with h2 cut off: exit 7 after {:?}",
        cut.elapsed()
    );

    // Commands for h2 while it is away.
    let api01: uuid::Uuid = API01.parse().expect("uuid");
    const SENT: u64 = 5;
    let calls: Vec<_> = (0..SENT)
        .map(|i| {
            let client = client.clone();
            rt.spawn(async move {
                client
                    .call::<VmSetMemory>(
                        "h2",
                        VmSetMemoryRequest {
                            uuid: api01,
                            memory_kib: (600 + i) * 1024,
                        },
                    )
                    .await
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(20));
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "no answer while h2 is cut off"
    );
    c.connect("h2");
    let back = Instant::now();
    for (i, call) in calls.into_iter().enumerate() {
        let vm = rt
            .block_on(call)
            .expect("join")
            .unwrap_or_else(|e| panic!("command {i}: {e}\n{}", c.logs("h2")));
        assert!(vm.memory_kib >= 600 * 1024);
    }
    println!(
        "h2 cut off for {:?}; its {SENT} queued commands answered {:?} after it was back",
        back - cut,
        back.elapsed()
    );
    wait_alive(ctl, &["h1", "h2", "h3"], Duration::from_secs(60));
    let m = metrics(9192);
    assert_eq!(
        commands_total(&m, VmSetMemory::NAME, "ok") - before,
        SENT,
        "each command ran exactly once: {m}"
    );
    assert!(metric(&m, "hostbus_reconnects_total") >= 1, "{m}");
    let out = ctl.run(&["-o", "json", "vm", "list", "--all"]);
    assert_eq!(out.code, 0, "every host answers again: {}", out.stderr);
}

/// The broker container SIGKILLed in the middle of a run of commands and
/// started again: every command is answered and ran exactly once, the
/// agents are back, and a subscriber resumes after the last event it read.
#[test]
fn a_killed_broker_loses_no_command_and_subscribers_resume() {
    let Some(_turn) = turn() else { return };
    let r = Running::up("compose-broker-kill", Duration::from_secs(120));
    let (c, ctl, rt, client) = (&r.c, &r.ctl, &r.rt, &r.client);
    let mut sub = rt.block_on(subscribe_from(client, &["h1.vm.*"], StartAt::Next));
    let before = commands_total(&metrics(9191), VmSetMemory::NAME, "ok");

    const SENT: u64 = 30;
    let mut latencies = Vec::new();
    let mut seen = Vec::new();
    let mut killed_at = None;
    for i in 0..SENT {
        if i == 10 {
            c.docker_on("rabbitmq", &["kill", "-s", "KILL"]);
            killed_at = Some(Instant::now());
            let c2 = Compose::single(Flavour::V2);
            rt.spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(5));
                c2.docker_on("rabbitmq", &["start"]);
                c2.keep();
            });
        }
        latencies.push(set_web01_memory(rt, client, c, i));
    }
    let worst = latencies.iter().max().expect("latencies");
    println!(
        "{SENT} commands across a SIGKILLed broker (started again 5 s later): all answered; \
         the longest took {worst:?}; the broker was back for the agents within {:?}",
        killed_at.map(|k| k.elapsed())
    );
    let m = metrics(9191);
    assert_eq!(
        commands_total(&m, VmSetMemory::NAME, "ok") - before,
        SENT,
        "each command ran exactly once: {m}"
    );
    wait_alive(ctl, &["h1", "h2", "h3"], Duration::from_secs(90));

    // The subscriber: every memory change of web01 is an event; it reads
    // each once, in order, across the broker's death. The agents announce
    // themselves again when they reconnect (an `agent.online` event with
    // their inventory, which the SDK hands over as a resync without asking
    // for a snapshot); nothing else may make it resync: no gap, no new epoch.
    let mut memory = Vec::new();
    let mut online_resyncs = 0;
    while memory.len() < SENT as usize {
        match rt.block_on(next_notification(
            &mut sub,
            Duration::from_secs(60),
            "web01's events",
        )) {
            Notification::Event(e) => {
                if e.object_id == WEB01 {
                    seen.push(e.seq);
                    let record = serde_json::to_value(&e.record).expect("record");
                    memory.push(record["vm"]["memory_kib"].as_u64().unwrap_or_default());
                }
            }
            Notification::Resync {
                reason: ResyncReason::AgentOnline,
                inventory: Some(_),
                host,
                ..
            } if host == "h1" => online_resyncs += 1,
            other => panic!("no resync but h1's announcement was needed: {other:?}"),
        }
    }
    let want: Vec<u64> = (0..SENT).map(|i| (512 + i) * 1024).collect();
    assert_eq!(memory, want, "every change once, in order (seqs {seen:?})");
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    println!(
        "the subscriber read all {} changes across the broker's death, none twice, \
         and {online_resyncs} announcement(s) of h1",
        memory.len()
    );
}

/// The broker-cluster profile: three RabbitMQ 4 nodes. The node h1's agent
/// is connected to is stopped while a manager calls h1 one command after
/// the other: every call is answered, each ran once.
#[test]
fn losing_the_node_of_an_agent_in_the_broker_cluster_loses_no_call() {
    let Some(_turn) = turn() else { return };
    let dir = TempDir::new("compose-broker-cluster").expect("dir");
    let c = Compose::broker_cluster();
    c.down();
    let took = c.up();
    println!("broker-cluster profile up and healthy in {took:?}");
    let ctl = hostctl(AMQP_PORT, &dir);
    wait_alive(&ctl, &["h1", "h2", "h3"], Duration::from_secs(60));
    let status = c.exec("rabbitmq", &["rabbitmqctl", "-q", "cluster_status"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    for n in ["rabbit@rabbitmq", "rabbit@rabbitmq-2", "rabbit@rabbitmq-3"] {
        assert!(status.contains(n), "{n} in the cluster: {status}");
    }

    // The node h1's agent is connected to: its connection (named
    // hostbus-agent/h1) has a pid `<rabbit@node.N.N.N>` on that node.
    let conns = c.exec(
        "rabbitmq",
        &[
            "rabbitmqctl",
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ],
    );
    let conns = String::from_utf8_lossy(&conns.stdout).into_owned();
    let victim = conns
        .lines()
        .find(|l| l.contains("hostbus-agent/h1"))
        .and_then(|l| l.strip_prefix('<'))
        .and_then(|l| l.split('.').next())
        .unwrap_or_else(|| panic!("h1's connection: {conns}"))
        .to_owned();
    let service = victim.trim_start_matches("rabbit@").to_owned();
    println!("h1's agent is connected to {victim}");

    let rt = runtime();
    let urls: Vec<String> = [5682, 5683, 5684].iter().map(|p| amqp_url(*p)).collect();
    let mut cfg = ClientConfig::new(urls[0].clone());
    cfg.urls = urls;
    cfg.timeout = Duration::from_secs(90);
    let client = rt.block_on(Client::connect(cfg)).expect("client");
    let before = commands_total(&metrics(9191), VmSetMemory::NAME, "ok");
    let mut stop = None;
    let mut after_stop = 0;
    let mut i = 0u64;
    let mut worst = Duration::ZERO;
    while after_stop < 10 {
        if i == 10 {
            let c2 = Compose::broker_cluster();
            let s = service.clone();
            stop = Some(rt.spawn_blocking(move || {
                let t = Instant::now();
                c2.docker_on(&s, &["stop"]);
                c2.keep();
                t.elapsed()
            }));
        }
        if stop.as_ref().is_some_and(|s| s.is_finished()) {
            after_stop += 1;
        }
        worst = worst.max(set_web01_memory(&rt, &client, &c, i));
        i += 1;
    }
    let stopped_in = rt.block_on(stop.expect("stopped")).expect("join");
    println!(
        "{i} calls to h1 while {victim} stopped (in {stopped_in:?}): all answered, the longest in {worst:?}"
    );
    let m = metrics(9191);
    assert_eq!(
        commands_total(&m, VmSetMemory::NAME, "ok") - before,
        i,
        "each call ran exactly once: {m}"
    );
    assert!(
        metric(&m, "hostbus_reconnects_total") >= 1,
        "h1 moved to another node: {m}"
    );
}
