//! The SDK and `hostctl` against real agents on a real broker: every hostctl
//! subcommand end to end with its JSON parsed back, a broadcast that reports
//! a dead host, an event subscription that sees another client's change, and
//! a slow subscriber that loses events, notices the gap and resyncs.

use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmDefine, VmDefineRequest};
use hostbus_client::protocol::names::Target;
use hostbus_client::protocol::types::PowerState;
use hostbus_client::protocol::EventAction;
use hostbus_client::{Client, ClientConfig, Notification, ResyncReason, StartAt};
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
