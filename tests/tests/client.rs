//! The SDK and `hostctl` against real agents on a real broker: every hostctl
//! subcommand end to end with its JSON parsed back, a broadcast that reports
//! a dead host, an event subscription that sees another client's change, a
//! slow subscriber that loses events, notices the gap and resyncs, and
//! connections closed as the broker expects, read from its log.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmDefine, VmDefineRequest};
use hostbus_client::protocol::names::Target;
use hostbus_client::protocol::types::PowerState;
use hostbus_client::protocol::EventAction;
use hostbus_client::{Client, ClientConfig, ErrorKind, Notification, ResyncReason, StartAt};
use hostbus_tests::sdk::{list_group, list_vms, next_notification, subscribe, subscribe_from};
use hostbus_tests::{
    node_file_uri, small_vm, tour, watch_online, AgentProcess, Hostctl, RabbitNode,
};
use serde_json::Value;

fn hostctl_binary() -> std::path::PathBuf {
    hostbus_tests::hostctl_binary().expect("hostctl")
}

/// Watches for `n` agents coming online: the watch is bound now, before
/// the agents start, so no announcement is missed; await the returned
/// future once they are started. (Binding it when first awaited, after the
/// agents started, lost an `agent.online` a fast agent had already sent:
/// the test then waited 60 s for nothing, seen once on a loaded machine.)
async fn online(node: &RabbitNode, n: usize) -> impl std::future::Future<Output = ()> {
    let (peer, mut sub) = watch_online(&node.amqp_url()).await;
    async move {
        let _peer = peer;
        sub.take(n, Duration::from_secs(60))
            .await
            .expect("agent online");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostctl_drives_every_subcommand() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 2).await;
    let _h1 = AgentProcess::builder("h1", &url).label("gpu").start();
    let _h2 = AgentProcess::builder("h2", &url)
        .libvirt_uri(node_file_uri("h2"))
        .start();
    wait_online.await;
    let ctl = Hostctl::new(&url).recording();

    tour::fleet(&ctl, &["h1", "h2"]);
    tour::host_facts(&ctl);
    let gpu = ctl.json(&["vm", "list", "--label", "gpu"]);
    assert!(gpu["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .all(|v| v["host"] == "h1"));
    tour::objects(&ctl);
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    tour::tasks(&ctl, &client).await;
    let ev = tour::event_of_a_change(&ctl).await;
    assert!(
        ev["offset"].is_u64(),
        "each event carries its stream offset: {ev}"
    );
    tour::without_connection(&ctl);

    // An evacuation with nowhere to go (h2 takes no migrations: no
    // migration_uri) moves nothing and says so: exit 7, partial.
    let out = ctl.run(&["host", "evacuate", "h1", "--to", "h2"]);
    assert_eq!(out.code, 7, "{}{}", out.stdout, out.stderr);
    ctl.json(&["host", "enable", "h1"]);

    // Broker administration: declaring the shared objects (the agents did
    // already), and forgetting a host, refused while it is alive.
    assert_eq!(ctl.json(&["admin", "setup"])["declared"], true);
    let refused = ctl.run(&["host", "forget", "h1"]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);

    // Exit codes scripts rely on.
    assert_eq!(ctl.code(&["vm", "get", "h1/nope"]), 3);
    assert_eq!(
        ctl.code(&["vm", "pause", "h1/db01"]),
        4,
        "pausing a halted VM is refused"
    );
    assert_eq!(ctl.code(&["ping", "h9"]), 3, "an unknown host has no route");
    assert_eq!(ctl.code(&["vm", "get", "no-slash"]), 2);
    let out = ctl.run(&["--url", "amqp://guest:guest@127.0.0.1:1/%2f", "ping", "h1"]);
    assert_eq!(out.code, 5, "{}", out.stderr);

    ctl.assert_every_verb_run("through the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reports_the_host_that_did_not_answer() {
    // Build hostctl first: a build inside the timed part would outlast h4's busy spell.
    let _ = tokio::task::spawn_blocking(hostctl_binary).await;
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 3).await;
    // The agents' default heartbeat interval (5 s), as in production.
    let _h1 = AgentProcess::builder("h1", &url).label("rack-a").start();
    let _h2 = AgentProcess::builder("h2", &url)
        .label("rack-a")
        .libvirt_uri(node_file_uri("h2"))
        .start();
    let mut h3 = AgentProcess::builder("h3", &url)
        .label("rack-b")
        .libvirt_uri(node_file_uri("h3"))
        .start();
    wait_online.await;
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let presence = client.presence().await.expect("presence");
    assert!(presence.is_ready(), "the fleet view is complete at once");
    assert_eq!(presence.expected(&Target::All).alive.len(), 3);

    let b = list_vms(&client, &Target::All, Duration::from_secs(5))
        .await
        .expect("broadcast");
    assert_eq!(
        b.replies.keys().map(String::as_str).collect::<Vec<_>>(),
        ["h1", "h2", "h3"]
    );
    assert!(b.missing.is_empty());
    let g = list_group(&client, "rack-a", Duration::from_secs(5))
        .await
        .expect("group");
    assert_eq!(
        g.replies.keys().map(String::as_str).collect::<Vec<_>>(),
        ["h1", "h2"]
    );

    // h3 dies without a goodbye: presence still expects it, it does not
    // answer, and the broker says its queue has no consumer: the broadcast
    // does not wait for its deadline.
    h3.kill().expect("kill h3");
    let sent = std::time::Instant::now();
    let b = list_vms(&client, &Target::All, Duration::from_secs(5))
        .await
        .expect("broadcast");
    println!("broadcast with h3 dead: {:?}", sent.elapsed());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "waited for the deadline"
    );
    assert_eq!(
        b.replies.keys().map(String::as_str).collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    assert_eq!(b.missing, ["h3"]);
    assert!(b
        .replies
        .values()
        .all(|r| r.as_ref().is_ok_and(|l| l.vms.len() == 3)));

    // A fresh hostctl knows the whole fleet from the broker: it reports h4,
    // which heartbeats but does not answer in time (busy with one slow
    // command, concurrency 1), and h3, dead and not forgotten.
    let wait_h4 = online(&node, 1).await;
    let _h4 = AgentProcess::builder("h4", &url)
        .label("rack-b")
        .libvirt_uri(node_file_uri("h3"))
        .concurrency(1)
        .env("HOSTBUS_STEP_PAUSE_MS", "4000")
        .start();
    wait_h4.await;
    // Five steps of 4 s: h4 is busy for 20 s, far past hostctl's 3 s deadline.
    let slow = small_vm("slow01", &["vda", "vdb", "vdc", "vdd"]);
    client
        .cast::<VmDefine>(&Target::Host("h4".into()), VmDefineRequest { spec: slow })
        .await
        .expect("cast");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ctl = Hostctl::new(&url);
    let out = ctl.run(&[
        "-o",
        "json",
        "--timeout-ms",
        "3000",
        "vm",
        "list",
        "--label",
        "rack-b",
    ]);
    assert_eq!(
        out.code,
        7,
        "{}\n{}\n{}",
        out.stderr,
        out.stdout,
        _h4.log_tail(30)
    );
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["missing"], serde_json::json!(["h3", "h4"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_another_clients_change_and_a_slow_one_resyncs() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 1).await;
    let _h1 = AgentProcess::builder("h1", &url).spawn().expect("h1");
    wait_online.await;
    let watcher = Client::connect(ClientConfig::new(&url))
        .await
        .expect("watcher");
    let actor = Client::connect(ClientConfig::new(&url))
        .await
        .expect("actor");
    let mut sub = subscribe(&watcher, &["*.vm.*"]).await;
    let db = actor.host("h1").vm_named("db01");
    db.start().await.expect("start");
    let started = loop {
        match next_notification(&mut sub, Duration::from_secs(10), "an event").await {
            Notification::Event(e) if e.action == EventAction::Started => break e,
            _ => {}
        }
    };
    assert_eq!(started.object_id, "11111111-0000-4000-8000-000000000002");

    // A subscriber that reads nothing while 200 events happen loses none:
    // the broker keeps them in its event stream, in order.
    let mut slow = subscribe(&watcher, &["h1.vm.*"]).await;
    // Establish the sequence baseline with one event.
    db.pause().await.expect("pause");
    let first = match tokio::time::timeout(Duration::from_secs(10), slow.next())
        .await
        .expect("first")
        .expect("open")
        .expect("ok")
    {
        Notification::Event(e) => {
            assert_eq!(e.action, EventAction::Paused);
            e
        }
        other => panic!("{other:?}"),
    };
    for _ in 0..100 {
        db.resume().await.expect("resume");
        db.pause().await.expect("pause");
    }
    let mut seqs = vec![first.seq];
    while seqs.len() < 201 {
        match tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("more notifications")
            .expect("open")
            .expect("ok")
        {
            Notification::Event(e) => seqs.push(e.seq),
            other => panic!("no resync is needed, got {other:?}"),
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "every event, in order: {seqs:?}"
    );
    let inv = watcher.host("h1").snapshot().await.expect("snapshot");
    assert!(inv
        .vms
        .iter()
        .any(|v| v.name == "db01" && v.power_state == PowerState::Paused));
}

/// A subscriber that comes back after the broker dropped the events it
/// missed (beyond the stream's retention) is told so and resyncs from a
/// snapshot, instead of silently skipping them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_beyond_the_event_retention_resyncs_from_a_snapshot() {
    let node = RabbitNode::start_private().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 1).await;
    // The smallest retention: 1 MiB of events, in segments of 1 MiB.
    let _h1 = AgentProcess::builder("h1", &url)
        .env("HOSTBUS_EVENT_RETENTION_BYTES", "1048576")
        .start();
    wait_online.await;
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let db = client.host("h1").vm_named("db01");
    db.start().await.expect("start");
    // Some 3 MiB of events: the broker keeps the last segment or two.
    for _ in 0..1600 {
        db.pause().await.expect("pause");
        db.resume().await.expect("resume");
    }
    let mut sub = subscribe_from(&client, &["h1.#"], StartAt::Offset(0)).await;
    let first = next_notification(&mut sub, Duration::from_secs(20), "a notification").await;
    match first {
        Notification::Resync {
            host,
            reason: ResyncReason::Truncated { asked, first },
            inventory,
            ..
        } => {
            println!("asked for offset {asked}, the broker kept from {first}");
            assert_eq!((host.as_str(), asked), ("h1", 0));
            assert!(first > 0);
            let inv = inventory.expect("a fresh inventory");
            assert!(inv.vms.iter().any(|v| v.name == "db01"));
        }
        other => panic!("expected a resync for the events the broker dropped, got {other:?}"),
    }
}

/// How a connection a hostbus client opened ended, as the broker logged it:
/// `None` while it is open; `Ok` when the client closed it
/// (`[info] ... closing AMQP connection`); `Err` with the line of any other
/// end (`client unexpectedly closed TCP connection`, missed heartbeats).
type Fate = Option<Result<(), String>>;

/// The broker log's bytes so far (where a test's part of it starts).
fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// The connections of hostbus clients (named `hostbus-client/...`) in
/// `log`, by the Erlang process that served each (every line of the log
/// names one), with their name and how each ended.
fn client_connections(log: &str) -> BTreeMap<String, (String, Fate)> {
    let mut conns: BTreeMap<String, (String, Fate)> = BTreeMap::new();
    for line in log.lines() {
        // `<time> [<level>] <pid> <text>`
        let Some((head, rest)) = line.split_once("] ") else {
            continue;
        };
        let level = head.rsplit_once('[').map_or("", |(_, l)| l);
        let Some((pid, text)) = rest.split_once(' ') else {
            continue;
        };
        if let Some((_, name)) = text.split_once("has a client-provided name: ") {
            if name.starts_with("hostbus-client/") {
                conns.insert(pid.to_owned(), (name.trim().to_owned(), None));
            }
            continue;
        }
        let Some((_, fate)) = conns.get_mut(pid) else {
            continue;
        };
        let closing = text.contains("closing AMQP connection");
        if closing && level == "info" {
            fate.get_or_insert(Ok(()));
        } else if (closing || text.contains("unexpectedly closed")) && !matches!(fate, Some(Err(_)))
        {
            *fate = Some(Err(line.to_owned()));
        }
    }
    conns
}

/// Reads the broker's log from byte `from` until it shows at least
/// `at_least` connections of hostbus clients and how each ended (the
/// broker writes its log a moment after the fact), at most 10 s; then
/// fails unless each was closed by its client, and unless no connection
/// at all vanished without a close meanwhile. Returns how many there were.
async fn assert_clients_closed_cleanly(node: &RabbitNode, from: usize, at_least: usize) -> usize {
    let path = node.log_file().expect("a private node's log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read(&path).expect("the broker's log");
        let part = String::from_utf8_lossy(log.get(from..).unwrap_or_default()).into_owned();
        let conns = client_connections(&part);
        let settled = conns.len() >= at_least && conns.values().all(|(_, f)| f.is_some());
        if settled || Instant::now() >= deadline {
            assert!(
                !part.contains("client unexpectedly closed TCP connection"),
                "a connection vanished without an AMQP close:\n{part}"
            );
            let unclean: Vec<_> = conns
                .iter()
                .filter(|(_, (_, fate))| !matches!(fate, Some(Ok(()))))
                .collect();
            assert!(
                unclean.is_empty(),
                "connections not closed by their client: {unclean:?}\n{part}"
            );
            assert!(
                conns.len() >= at_least,
                "{} client connections in the broker's log, {at_least} expected:\n{part}",
                conns.len()
            );
            return conns.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first line `child` prints, within `within`.
fn first_line(child: &mut std::process::Child, within: Duration) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("nothing printed within {within:?}"))
}

/// Sends `signal` (`INT`, `STOP`, ...) to `target`, a pid or `-<group>`.
fn kill(signal: &str, target: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, "--", target])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -s {signal} {target}");
}

/// hostctl closes its broker connections before it exits, whichever way
/// it ends: done (0), refused with a structured error (4), not found (3),
/// a broadcast that missed a host (7), and `events --follow` interrupted
/// by Ctrl-C (130). The broker logs each close as a normal one, never
/// `client unexpectedly closed TCP connection` (as it did for every
/// connection of every run). With the broker frozen, an interrupted
/// hostctl still exits within its close bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostctl_closes_its_connections_however_it_exits() {
    let mut node = RabbitNode::start_private().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 2).await;
    let _h1 = AgentProcess::builder("h1", &url).start();
    let mut h2 = AgentProcess::builder("h2", &url)
        .libvirt_uri(node_file_uri("h2"))
        .start();
    wait_online.await;
    // h2 stops with a goodbye: the fleet still knows it, and a broadcast
    // to all hosts misses it.
    h2.terminate().expect("stop h2");
    assert!(h2.wait_exit(Duration::from_secs(30)).is_some(), "h2 stops");
    let ctl = Hostctl::new(&url);
    let _ = tokio::task::spawn_blocking(hostctl_binary).await;
    let from = log_len(&node.log_file().expect("log"));

    let runs: [(&[&str], i32); 6] = [
        (&["hosts"], 0),
        (&["vm", "list", "--host", "h1"], 0),
        (&["vm", "pause", "h1/db01"], 4),
        (&["vm", "get", "h1/nope"], 3),
        (&["ping", "h9"], 3),
        (&["vm", "list", "--all"], 7),
    ];
    let mut codes = Vec::new();
    for (args, _) in &runs {
        let out = ctl.run(args);
        codes.push((args.join(" "), out.code, out.stderr));
    }
    // Following h1's events from the stream's start: the first one
    // printed says it follows; then Ctrl-C.
    let mut follow = ctl.spawn(&["events", "h1.#", "--from", "first", "--follow"]);
    let event = first_line(&mut follow, Duration::from_secs(30));
    assert!(event.contains("h1"), "{event}");
    kill("INT", &follow.id().to_string());
    let interrupted = tokio::task::spawn_blocking(move || follow.wait_with_output())
        .await
        .expect("join")
        .expect("hostctl events ends");

    let closed = assert_clients_closed_cleanly(&node, from, runs.len() + 1).await;
    println!(
        "{closed} connections of {} hostctl runs closed cleanly",
        runs.len() + 1
    );
    for ((args, code), (run, got, stderr)) in runs.iter().zip(&codes) {
        assert_eq!(got, code, "hostctl {args:?} ({run}): {stderr}");
    }
    assert_eq!(
        interrupted.status.code(),
        Some(130),
        "hostctl events --follow after Ctrl-C: {:?} {}",
        interrupted.status,
        String::from_utf8_lossy(&interrupted.stderr)
    );

    // A broker that stops answering does not hold hostctl's exit up for
    // longer than its close bound.
    let mut follow = ctl.spawn(&["events", "h1.#", "--from", "first", "--follow"]);
    first_line(&mut follow, Duration::from_secs(30));
    let group = format!("-{}", node.process_group().expect("a private node"));
    kill("STOP", &group);
    let sent = Instant::now();
    kill("INT", &follow.id().to_string());
    let out = tokio::task::spawn_blocking(move || follow.wait_with_output())
        .await
        .expect("join")
        .expect("hostctl events ends");
    let took = sent.elapsed();
    kill("CONT", &group);
    println!("hostctl exited {took:?} after Ctrl-C with its broker frozen");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(
        took < Duration::from_secs(6),
        "hostctl took {took:?} to exit with its broker frozen"
    );
    assert!(node.is_running());
}

/// A program on the SDK closes what it opened: a client (its call
/// connection and its fleet view's) and a subscription, closed by the user
/// before the program's runtime ends, as returning from `main` ends it;
/// the closed client refuses further calls. A client and a subscription
/// that were only dropped while the program went on are closed as well.
/// The broker logs every close as a normal one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_program_closes_its_client_and_subscription() {
    let node = RabbitNode::start_private().expect("rabbit");
    let url = node.amqp_url();
    let wait_online = online(&node, 1).await;
    let _h1 = AgentProcess::builder("h1", &url).start();
    wait_online.await;
    let from = log_len(&node.log_file().expect("log"));
    // The program has a runtime of its own, shut down when it returns.
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(sdk_program(url));
    })
    .await
    .expect("the program runs");
    // Three connections for each client: calls, fleet view, subscription.
    assert_clients_closed_cleanly(&node, from, 6).await;
}

/// What [`an_sdk_program_closes_its_client_and_subscription`] runs.
async fn sdk_program(url: String) {
    // Dropped early; the program goes on.
    let dropped = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    dropped.presence().await.expect("fleet view");
    let sub = subscribe_from(&dropped, &["h1.#"], StartAt::First).await;
    drop((dropped, sub));

    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let mut sub = subscribe_from(&client, &["h1.#"], StartAt::First).await;
    next_notification(&mut sub, Duration::from_secs(20), "h1's first event").await;
    let b = list_vms(&client, &Target::All, Duration::from_secs(5))
        .await
        .expect("broadcast");
    assert!(b.missing.is_empty() && b.replies.contains_key("h1"));
    sub.close().await.expect("the subscription closes");
    let clone = client.clone();
    client.close().await.expect("the client closes");
    let refused = clone.host("h1").ping().await.expect_err("a closed client");
    assert_eq!(refused.kind(), ErrorKind::BadState, "{refused}");
    clone.close().await.expect("closing again does nothing");
}
