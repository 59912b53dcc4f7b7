//! hostbus on a three-node RabbitMQ cluster (issue 14): quorum queues keep
//! commands through the loss of a node, agents and managers fail over
//! without reconnection storms, and event subscribers resume from the
//! broker's event stream without losing anything and without resyncing.
//!
//! Each test starts its own cluster of three private nodes on this machine
//! (own names, ports, data directories, one Erlang cookie, joined with
//! `rabbitmqctl join_cluster`). Figures are printed; run with `--nocapture`.

use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{VmGet, VmSetMemory, VmSetMemoryRequest, VmUuid};
use hostbus_client::protocol::names;
use hostbus_client::protocol::types::{DiskFormat, VolumeSpec};
use hostbus_client::{Client, ClientConfig, Notification, StartAt};
use hostbus_protocol::commands::{VolumeCreate, VolumeCreateRequest, VolumeList};
use hostbus_protocol::Command;
use hostbus_tests::sdk::{next_notification, subscribe, subscribe_from};
use hostbus_tests::{commands_total, pool_name, AgentProcess, AmqpPeer, RabbitNode};

const WEB01: &str = "11111111-0000-4000-8000-000000000001";

/// The node that leads quorum queue `queue`, from `rabbitmqctl list_queues`.
fn leader_of(node: &RabbitNode, queue: &str) -> Option<String> {
    let out = node
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"])
        .ok()?;
    out.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == queue).then(|| parts.next().map(str::to_owned))?
    })
}

async fn wait_online(
    url: &str,
    n: usize,
    start: impl FnOnce() -> Vec<AgentProcess>,
) -> Vec<AgentProcess> {
    let peer = AmqpPeer::connect(url).await.expect("peer");
    let mut sub = peer.watch(names::EVENT_EXCHANGE, "*.agent.online").await;
    let agents = start();
    for _ in 0..n {
        sub.next(Duration::from_secs(90))
            .await
            .expect("agent online");
    }
    agents
}

/// The node the agent is connected to is stopped while a manager sends one
/// command after the other: every command is answered, exactly once, and
/// every change ran exactly once; the outage is bounded; the agent does not
/// reconnect in a loop. Where the queues' leaders were is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_loses_no_command_and_runs_none_twice() {
    let started = Instant::now();
    let mut nodes = RabbitNode::start_cluster(3).expect("cluster");
    println!("three-node cluster up in {:?}", started.elapsed());
    let urls: Vec<String> = nodes.iter().map(RabbitNode::amqp_url).collect();
    let agents = wait_online(&urls[0], 1, || {
        let mut b = AgentProcess::builder("h1", &urls[0]);
        for u in &urls[1..] {
            b = b.broker_url(u.clone());
        }
        vec![b.spawn().expect("agent")]
    })
    .await;
    let agent = &agents[0];
    // The agent starts at a node derived from its host id.
    let victim = nodes
        .iter()
        .position(|n| agent.log().contains(&format!("127.0.0.1:{}/", n.port())))
        .expect("the agent's node");
    let victim_name = nodes[victim].node_name().unwrap_or_default().to_owned();
    println!("the agent is connected to node {victim} ({victim_name})");
    for q in [
        "hostbus.agent.h1",
        names::DEAD_LETTER_QUEUE,
        names::EVENT_STREAM,
    ] {
        println!("  {q}: leader {:?}", leader_of(&nodes[0], q));
    }

    let mut cfg = ClientConfig::new(urls[0].clone());
    cfg.urls = urls.clone();
    cfg.timeout = Duration::from_secs(60);
    let client = Client::connect(cfg).await.expect("client");
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    let mut latencies = Vec::new();
    let mut stop = None;
    let mut after_stop = 0;
    let mut i = 0u64;
    // 20 commands, the node stopped in the background, commands all along,
    // then 20 more once it is down.
    while after_stop < 20 {
        if i == 20 {
            let mut node = nodes.remove(victim);
            stop = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                node.stop().expect("stop the node");
                println!("node stopped in {:?}", t.elapsed());
                node
            }));
        }
        if stop.as_ref().is_some_and(|s| s.is_finished()) {
            after_stop += 1;
        }
        let t = Instant::now();
        let vm = client
            .call::<VmSetMemory>(
                "h1",
                VmSetMemoryRequest {
                    uuid: web,
                    memory_kib: (512 + i) * 1024,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("command {i}: {e}\n{}", agent.log_tail(30)));
        assert_eq!(vm.memory_kib, (512 + i) * 1024);
        latencies.push((i, t.elapsed()));
        i += 1;
    }
    let sent = i;
    let node = stop.expect("stopped").await.expect("join");
    let worst = latencies.iter().max_by_key(|(_, d)| *d).expect("latencies");
    println!(
        "{sent} commands, all answered; the longest took {:?} (command {})",
        worst.1, worst.0
    );
    assert!(worst.1 < Duration::from_secs(45), "the outage is bounded");
    let vm = client
        .call::<VmGet>("h1", VmUuid { uuid: web })
        .await
        .expect("get");
    assert_eq!(
        vm.memory_kib,
        (512 + sent - 1) * 1024,
        "the last value stays"
    );
    // Exactly one execution per command id; repeats answered from the journal.
    let m = agent.metrics_text();
    let ran = commands_total(&m, VmSetMemory::NAME, "ok");
    let repeats = commands_total(&m, VmSetMemory::NAME, "journal-ok");
    println!("vm.set_memory: {ran} executions, {repeats} answered from the journal");
    assert_eq!(ran, sent, "{m}");
    // No reconnection storm: a handful of sessions, not hundreds.
    let log = agent.log();
    let sessions = log.matches("connected to the broker").count();
    let failed = log.matches("cannot connect to the broker").count();
    println!("agent sessions opened: {sessions}, failed connection attempts: {failed}");
    assert!(sessions >= 2, "the agent moved to another node");
    assert!(sessions <= 5, "{}", agent.log_tail(40));
    assert!(failed <= 10, "{}", agent.log_tail(40));
    drop(node);
}

/// A read travels on the read lane, the agent's classic read queue, which
/// lives on the node the agent is connected to and goes with it. Here a
/// read waits in that queue (the agent is frozen) when its node is
/// stopped: the client, connected to another node, sends it again with the
/// same command id when no reply comes, and the agent, moved to another
/// node, answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_lost_with_its_node_is_sent_again_and_answered() {
    let mut nodes = RabbitNode::start_cluster(3).expect("cluster");
    let urls: Vec<String> = nodes.iter().map(RabbitNode::amqp_url).collect();
    let mut agents = wait_online(&urls[0], 1, || {
        let mut b = AgentProcess::builder("h1", &urls[0]);
        for u in &urls[1..] {
            b = b.broker_url(u.clone());
        }
        vec![b.spawn().expect("agent")]
    })
    .await;
    let agent = &mut agents[0];
    let victim = nodes
        .iter()
        .position(|n| agent.log().contains(&format!("127.0.0.1:{}/", n.port())))
        .expect("the agent's node");
    let read_queue = names::agent_read_queue("h1");
    let queues = nodes[victim]
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "pid"])
        .expect("list_queues");
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with(&read_queue)
                && l.contains(nodes[victim].node_name().unwrap_or("?"))),
        "the read queue lives on the agent's node:\n{queues}"
    );
    // The client on another node.
    let mut cfg = ClientConfig::new(urls[(victim + 1) % 3].clone());
    cfg.timeout = Duration::from_secs(60);
    let client = Client::connect(cfg).await.expect("client");
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    client
        .call::<VmGet>("h1", VmUuid { uuid: web })
        .await
        .expect("a read before");

    agent
        .signal(hostbus_tests::Signal::Stop)
        .expect("freeze the agent");
    let read = {
        let client = client.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = client.call::<VmGet>("h1", VmUuid { uuid: web }).await;
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut node = nodes.remove(victim);
    tokio::task::spawn_blocking(move || node.stop().map(|()| node))
        .await
        .expect("join")
        .expect("stop the agent's node");
    agent
        .signal(hostbus_tests::Signal::Cont)
        .expect("thaw the agent");
    let (r, took) = read.await.expect("join");
    let vm = r.unwrap_or_else(|e| panic!("the read was lost: {e}\n{}", agent.log_tail(30)));
    assert_eq!(vm.uuid, web);
    println!("the read lost with its node was answered after {took:?}");
    assert!(took < Duration::from_secs(45), "{took:?}");
}

/// A subscriber whose connection is killed resumes by itself after the last
/// event it read; one that stops and starts again from its stored position
/// gets every event it missed, in order; neither calls `host.snapshot`. A
/// subscriber to one class of events does not resync when others publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_resume_from_the_event_stream_and_filter_without_resyncs() {
    let nodes = RabbitNode::start_cluster(3).expect("cluster");
    let urls: Vec<String> = nodes.iter().map(RabbitNode::amqp_url).collect();
    let agents = wait_online(&urls[1], 1, || {
        vec![AgentProcess::builder("h1", &urls[1])
            .broker_url(urls[2].clone())
            .start()]
    })
    .await;
    let mut cfg = ClientConfig::new(urls[0].clone());
    cfg.urls = urls.clone();
    let watcher = Client::connect(cfg.clone()).await.expect("watcher");
    let actor = Client::connect(cfg).await.expect("actor");
    let db = actor.host("h1").vm_named("db01");
    db.start().await.expect("start");

    // Everything of h1, and VM events only.
    let mut all = subscribe(&watcher, &["h1.#"]).await;
    let mut vms = subscribe(&watcher, &["*.vm.*"]).await;

    // Events of several classes, the subscribers' connections killed by the
    // broker in the middle.
    let mut expected_vm_events = 0;
    for i in 0..20u64 {
        if i == 10 {
            // `list_connections` sees the whole cluster's connections.
            let killed = close_connections(&nodes[0], "hostbus-client/events");
            println!("closed {killed} subscriber connections");
            assert!(killed >= 2);
        }
        db.pause().await.expect("pause");
        db.resume().await.expect("resume");
        expected_vm_events += 2;
        actor
            .call::<VolumeCreate>(
                "h1",
                VolumeCreateRequest {
                    pool: "default".into(),
                    spec: VolumeSpec {
                        name: format!("vol-{i}"),
                        capacity_bytes: 1 << 20,
                        allocation_bytes: 0,
                        format: DiskFormat::Raw,
                    },
                },
            )
            .await
            .expect("volume");
    }
    let got = take(&mut vms, expected_vm_events).await;
    assert!(got.iter().all(|e| e.class.as_str() == "vm"));
    assert!(got.windows(2).all(|w| w[1].seq > w[0].seq), "in order");
    let got_all = take(&mut all, expected_vm_events + 20).await;
    let seqs: Vec<u64> = got_all.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every event of h1, in order, across the reconnection: {seqs:?}"
    );
    println!(
        "{} events of h1 and {} VM events read across a killed connection, no resync",
        got_all.len(),
        got.len()
    );

    // Stop reading, remember where, and come back later.
    let position = all.position().expect("a position");
    drop(all);
    for _ in 0..15 {
        db.pause().await.expect("pause");
        db.resume().await.expect("resume");
    }
    let mut again = subscribe_from(&watcher, &["h1.#"], StartAt::Offset(position + 1)).await;
    let missed = take(&mut again, 30).await;
    assert_eq!(missed[0].seq, seqs[seqs.len() - 1] + 1, "nothing skipped");
    assert!(missed.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let m = agents[0].metrics_text();
    assert_eq!(
        commands_total(&m, "host.snapshot", "ok"),
        0,
        "nobody resynced: {m}"
    );
    let vols = actor
        .call::<VolumeList>("h1", pool_name("default"))
        .await
        .expect("volumes");
    assert!(vols.volumes.len() >= 20);
}

/// The next `n` events of `sub`; a resync fails the test.
async fn take(sub: &mut hostbus_client::Subscription, n: usize) -> Vec<hostbus_protocol::Event> {
    let mut events = Vec::new();
    while events.len() < n {
        match next_notification(sub, Duration::from_secs(20), "more events").await {
            Notification::Event(e) => events.push(*e),
            other => panic!("no resync was needed: {other:?}"),
        }
    }
    events
}

/// Closes the connections of `node` whose name contains `name`; how many.
fn close_connections(node: &RabbitNode, name: &str) -> usize {
    let Ok(out) = node.ctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]) else {
        return 0;
    };
    let mut n = 0;
    for line in out.lines().filter(|l| l.contains(name)) {
        if let Some(pid) = line.split_whitespace().next() {
            if node
                .ctl(&["close_connection", pid, "test: connection killed"])
                .is_ok()
            {
                n += 1;
            }
        }
    }
    n
}
