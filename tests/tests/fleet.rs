//! A fleet, not three hosts (issue 13): at the agents' default settings
//! (a heartbeat every 5 s), a fresh process — `hostctl` is one every time —
//! sees every host at once, from the broker; a dead host stays listed as
//! gone (stale while its agent is still connected but silent) until it is
//! forgotten, with a true last-seen time; broadcasts know when they are
//! done and name every expected host that did not answer; nothing piles up
//! for hosts that are gone; one process simulates hundreds of hosts.
//!
//! Timings are printed; run with `--nocapture` to see them.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::Ping;
use hostbus_client::protocol::names::{self, Target};
use hostbus_client::protocol::types::PowerState;
use hostbus_client::{Client, ClientConfig, Liveness, Notification};
use hostbus_protocol::commands::{Empty, HostEnable, HostPing};
use hostbus_protocol::{decode, now_ms, AmqpProperties, Announcement, ContentType, Heartbeat};
use hostbus_tests::sdk::{list_group, list_vms, next_notification, subscribe};
use hostbus_tests::{
    declare_queue, node_file_uri, workspace_dir, AgentProcess, AmqpPeer, Hostctl, QueueKind,
    RabbitNode, Subscription,
};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::Value;
use uuid::Uuid;

/// Subscribes to roster announcements (`<host>.online` on the presence
/// exchange, the last thing an agent publishes before it serves) before
/// anything starts.
async fn watch_online(node: &RabbitNode) -> (AmqpPeer, Subscription) {
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let sub = peer.watch(names::PRESENCE_EXCHANGE, "*.online").await;
    (peer, sub)
}

async fn wait_online(sub: &mut Subscription, n: usize) {
    for _ in 0..n {
        sub.next(Duration::from_secs(90))
            .await
            .expect("agent online");
    }
}

/// The state `hostctl hosts` gives each host.
fn states(hosts: &Value) -> Vec<(String, String)> {
    hosts
        .as_array()
        .expect("a list of hosts")
        .iter()
        .map(|h| {
            (
                h["host_id"].as_str().unwrap_or_default().to_owned(),
                h["liveness"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Whether the agent queue of `host` exists.
async fn queue_exists(url: &str, host: &str) -> bool {
    let peer = AmqpPeer::connect(url).await.expect("peer");
    let ch = peer.connection().create_channel().await.expect("channel");
    declare_queue(&ch, &names::agent_queue(host), QueueKind::Passive)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_process_sees_the_whole_fleet_and_its_dead_until_forgotten() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let ctl = Hostctl::new(&url);
    let _ = tokio::task::spawn_blocking(hostbus_tests::hostctl_binary).await;
    let (_peer, mut online) = watch_online(&node).await;
    // Four agents at their default heartbeat interval (5 s).
    let mut agents: Vec<AgentProcess> = [
        ("h1", "h1", "rack-a"),
        ("h2", "h2", "rack-a"),
        ("h3", "h3", "rack-b"),
        ("h4", "h3", "rack-b"),
    ]
    .into_iter()
    .map(|(id, node_file, label)| {
        AgentProcess::builder(id, &url)
            .libvirt_uri(node_file_uri(node_file))
            .label(label)
            .start()
    })
    .collect();
    wait_online(&mut online, 4).await;

    // A fresh hostctl lists all four, alive, on its first call.
    let hosts = ctl.run(&["-o", "json", "hosts"]);
    assert_eq!(hosts.code, 0, "{}", hosts.stderr);
    println!("fresh `hostctl hosts` with 4 hosts: {:?}", hosts.elapsed);
    let v: Value = serde_json::from_str(&hosts.stdout).expect("json");
    assert_eq!(
        states(&v),
        [
            ("h1".to_owned(), "alive".to_owned()),
            ("h2".to_owned(), "alive".to_owned()),
            ("h3".to_owned(), "alive".to_owned()),
            ("h4".to_owned(), "alive".to_owned())
        ]
    );
    assert!(v[0]["labels"].as_array().is_some_and(|l| l.len() == 1));
    assert!(v[0]["versions"]["agent"]
        .as_str()
        .is_some_and(|a| !a.is_empty()));
    assert!(v[0]["capabilities"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));

    // h4 dies without a goodbye. A broadcast right after reports it missing,
    // without waiting for its deadline, and hostctl exits 7.
    let mut h4 = agents.pop().expect("h4");
    h4.kill().expect("SIGKILL h4");
    let killed = Instant::now();
    let out = ctl.run(&["-o", "json", "--timeout-ms", "5000", "vm", "list", "--all"]);
    println!("broadcast right after the kill: {:?}", out.elapsed);
    assert_eq!(out.code, 7, "{}{}", out.stderr, out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["missing"], serde_json::json!(["h4"]));
    assert_eq!(
        v["vms"].as_array().map(Vec::len),
        Some(9),
        "h1..h3 answered"
    );
    assert!(
        out.stderr.contains("h4"),
        "hostctl names it: {}",
        out.stderr
    );
    assert!(
        out.elapsed < Duration::from_secs(5),
        "it did not wait for the timeout"
    );

    // h3 hangs (SIGSTOP): its connection stays open (its AMQP heartbeat is
    // 60 s here, so the broker does not drop it meanwhile), it only stops
    // beating. Three intervals after the last beat, a fresh process shows
    // h3 stale (silent, still connected) and h4 gone (not connected).
    let h3 = agents.pop().expect("h3");
    let h3_pid = h3.pid().expect("pid");
    signal(h3_pid, "-STOP");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(17).saturating_sub(stopped.elapsed())).await;
    let v = ctl.json(&["hosts"]);
    println!(
        "{:?} after the kill and the stop: {:?}",
        killed.elapsed(),
        states(&v)
    );
    let s = states(&v);
    assert!(s.contains(&("h3".to_owned(), "stale".to_owned())), "{v}");
    assert!(s.contains(&("h4".to_owned(), "gone".to_owned())), "{v}");
    assert_eq!(s.iter().filter(|(_, st)| st == "alive").count(), 2);
    // Still expected by broadcasts: both missing.
    let out = ctl.run(&["-o", "json", "vm", "list", "--label", "rack-b"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["missing"], serde_json::json!(["h3", "h4"]));
    // The hung agent is killed: its connection closes, it is gone.
    signal(h3_pid, "-KILL");
    signal(h3_pid, "-CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = ctl.json(&["hosts"]);
    assert!(
        states(&v).contains(&("h3".to_owned(), "gone".to_owned())),
        "{v}"
    );
    drop(h3);

    // Forgetting an alive host is refused; forgetting h4 removes its queue
    // and bindings, and no one expects it any more.
    let refused = ctl.run(&["host", "forget", "h1"]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(queue_exists(&url, "h4").await);
    for h in ["h3", "h4"] {
        let v = ctl.json(&["host", "forget", h]);
        assert_eq!(v["forgotten"], h);
        assert!(!queue_exists(&url, h).await, "{h}'s queue is gone");
    }
    let v = ctl.json(&["hosts"]);
    assert_eq!(
        states(&v),
        [
            ("h1".to_owned(), "alive".to_owned()),
            ("h2".to_owned(), "alive".to_owned())
        ]
    );
    let v = ctl.json(&["vm", "list", "--all"]);
    assert_eq!(v["missing"], serde_json::json!([]));
}

/// A presence message as an agent would publish it: the golden fixture
/// `fixture` (JSON) with `host_id`, `epoch` and `time` replaced.
async fn publish_presence(
    peer: &AmqpPeer,
    fixture: &str,
    key: &str,
    host: &str,
    epoch: Uuid,
    time: u64,
) {
    let path = workspace_dir().join(format!("protocol/tests/golden/{fixture}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture"))
        .expect("json fixture");
    v["host_id"] = host.into();
    v["epoch"] = epoch.to_string().into();
    v["time"] = time.into();
    let props = AmqpProperties {
        content_type: Some(ContentType::Json.as_str().to_owned()),
        ..AmqpProperties::default()
    };
    let body = serde_json::to_vec(&v).expect("encode");
    peer.publish(names::PRESENCE_EXCHANGE, key, &props, &body)
        .await
        .expect("publish");
}

/// LAST_SEEN is true. A fresh `hostctl hosts` reads about one interval of
/// heartbeats (docs/protocol.md §10.4 step 3), and three only when a
/// silent host is still connected (step 5): a host whose agent died, its
/// last beat older than what was read, shows a bound its silence exceeds
/// (`>8s`), not the three intervals it did not read (`>17s`, when its beat
/// was 12 s old). A beat it read shows its age. Neither is ever stale: no
/// agent is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_the_age_of_the_beat_read_or_a_bound_that_holds() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let ctl = Hostctl::new(&url);
    let _ = tokio::task::spawn_blocking(hostbus_tests::hostctl_binary).await;
    assert_eq!(ctl.json(&["admin", "setup"])["declared"], true);
    let peer = AmqpPeer::connect(&url).await.expect("peer");
    // Two hosts that came online a minute ago; their agents are gone
    // (they have no queue). `old` last beat twelve seconds before the
    // view starts, `new` just before.
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    let minute_ago = now_ms() - 60_000;
    for (host, epoch) in [("old", old), ("new", new)] {
        let key = format!("{host}.online");
        publish_presence(&peer, "announcement-online", &key, host, epoch, minute_ago).await;
    }
    publish_presence(&peer, "heartbeat", "old.heartbeat", "old", old, now_ms()).await;
    let old_beat = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    publish_presence(&peer, "heartbeat", "new.heartbeat", "new", new, now_ms()).await;
    let new_beat = Instant::now();
    let out = ctl.run(&["hosts"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    println!("{}", out.stdout);
    let last_seen = |host: &str| {
        let row = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no {host} in\n{}", out.stdout));
        let state = row.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let seen = row
            .split_whitespace()
            .find_map(|t| {
                let (bound, t) = t.strip_prefix('>').map_or((false, t), |t| (true, t));
                Some((bound, t.strip_suffix('s')?.parse::<f64>().ok()?))
            })
            .unwrap_or_else(|| panic!("no LAST_SEEN in {row}"));
        (state, seen)
    };
    let (state, (bound, secs)) = last_seen("old");
    assert_eq!(state, "gone", "no consumer: gone, never stale");
    assert!(bound, "its beat was not read: {secs}");
    assert!(
        secs <= old_beat.elapsed().as_secs_f64(),
        "`>{secs}s`, but its last beat is {:?} old",
        old_beat.elapsed()
    );
    let (state, (bound, secs)) = last_seen("new");
    assert_eq!(state, "alive");
    assert!(
        !bound && secs <= new_beat.elapsed().as_secs_f64() + 0.2,
        "{secs}"
    );
}

/// docs/protocol.md §10.4, steps 1 to 3, followed by a reader that knows
/// only the document: both presence streams hold other readers' sync
/// markers (an empty body, `type` `sync`, no content type, routing key
/// `_sync.<id>`), which decode as nothing; skipped by the rule the steps
/// give, everything else decodes, up to the reader's own marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_the_steps_skips_other_readers_markers() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let ctl = Hostctl::new(&url);
    let _ = tokio::task::spawn_blocking(hostbus_tests::hostctl_binary).await;
    assert_eq!(ctl.json(&["admin", "setup"])["declared"], true);
    let peer = AmqpPeer::connect(&url).await.expect("peer");
    let epoch = Uuid::new_v4();
    publish_presence(
        &peer,
        "announcement-online",
        "h1.online",
        "h1",
        epoch,
        now_ms(),
    )
    .await;
    publish_presence(&peer, "heartbeat", "h1.heartbeat", "h1", epoch, now_ms()).await;
    // Two readers before this one, each leaving its marker in both streams.
    for _ in 0..2 {
        let out = ctl.run(&["hosts"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    // Step 1.
    let ch = peer.connection().create_channel().await.expect("channel");
    ch.basic_qos(2000, BasicQosOptions::default())
        .await
        .expect("qos");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mine = names::sync_key(&Uuid::new_v4().simple().to_string());
    let confirm = ch
        .basic_publish(
            names::PRESENCE_EXCHANGE.into(),
            mine.as_str().into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default().with_type("sync".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    // Steps 2 and 3.
    let from_first = AMQPValue::LongString("first".into());
    let minute_ago = AMQPValue::Timestamp(now_ms() / 1000 - 60);
    for (stream, offset) in [
        (names::ROSTER_STREAM, from_first),
        (names::BEAT_STREAM, minute_ago),
    ] {
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), offset);
        let mut consumer = ch
            .basic_consume(
                stream.into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .expect("consume");
        let (mut markers, mut messages) = (0, 0);
        loop {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .unwrap_or_else(|_| panic!("{stream}: my marker did not arrive"))
                .expect("a delivery")
                .expect("a delivery");
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            let key = d.routing_key.as_str();
            if key == mine {
                break;
            }
            let kind = d.properties.kind().as_ref().map(|k| k.as_str());
            let ct = d.properties.content_type().as_ref().map(|c| c.as_str());
            if kind == Some("sync") || key.starts_with("_sync.") {
                assert!(
                    d.data.is_empty() && kind == Some("sync") && ct.is_none(),
                    "{stream}: a marker as §10.4 describes it: {key} {kind:?} {ct:?} {:?}",
                    d.data
                );
                assert!(decode::<Announcement>(ContentType::MsgPack, &d.data, 1 << 20).is_err());
                markers += 1;
                continue;
            }
            let ct = ContentType::parse(ct).expect("a content type of §4");
            let decoded = if stream == names::ROSTER_STREAM {
                decode::<Announcement>(ct, &d.data, 1 << 20).map(drop)
            } else {
                decode::<Heartbeat>(ct, &d.data, 1 << 20).map(drop)
            };
            decoded.unwrap_or_else(|e| panic!("{stream}: {key}: {e}"));
            messages += 1;
        }
        assert!(markers >= 2, "{stream}: other readers' markers: {markers}");
        assert!(messages >= 1, "{stream}: h1's message");
    }
}

/// A dead host's queue is not filled for ever by broadcasts, and the
/// dead-letter queue is bounded: what it drops is counted by the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_piles_up_for_hosts_that_are_gone() {
    let node = RabbitNode::start_private().expect("rabbit");
    let url = node.amqp_url();
    let (peer, mut online) = watch_online(&node).await;
    let mut h2 = AgentProcess::builder("h2", &url)
        .libvirt_uri(node_file_uri("h2"))
        .env("HOSTBUS_DEAD_LETTER_MAX_LENGTH", "5")
        .start();
    let _h1 = AgentProcess::builder("h1", &url)
        .env("HOSTBUS_DEAD_LETTER_MAX_LENGTH", "5")
        .start();
    wait_online(&mut online, 2).await;
    h2.kill().expect("SIGKILL h2");
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    // Reads travel on the read lane: a dead agent's read queue is gone
    // with its connection, so read broadcasts leave nothing for it.
    for _ in 0..5 {
        let b = list_vms(&client, &Target::All, Duration::from_secs(1))
            .await
            .expect("broadcast");
        assert_eq!(b.missing, ["h2"]);
    }
    // Changes go to the durable command queues: twenty broadcasts of 1 s
    // (host.enable, harmless) while h2 is dead wait in its queue.
    for _ in 0..20 {
        let b = client
            .broadcast::<HostEnable>(&Target::All, Empty {}, Duration::from_secs(1))
            .await
            .expect("broadcast");
        assert_eq!(b.missing, ["h2"]);
    }
    // Their deadline is their expiration: after it, h2's queue is empty.
    let ch = peer.connection().create_channel().await.expect("channel");
    let deadline = Instant::now() + Duration::from_secs(20);
    let depth = loop {
        let q = declare_queue(&ch, &names::agent_queue("h2"), QueueKind::Passive)
            .await
            .expect("h2's queue");
        if q.message_count() == 0 || Instant::now() > deadline {
            break q.message_count();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(depth, 0, "expired broadcasts left h2's queue");
    // They went to the dead-letter queue, which keeps only five.
    let dlq = declare_queue(&ch, names::DEAD_LETTER_QUEUE, QueueKind::Passive)
        .await
        .expect("dead-letter queue");
    println!(
        "dead-letter queue after 20 expired change broadcasts: {}",
        dlq.message_count()
    );
    assert_eq!(dlq.message_count(), 5);
    // The broker counts what the bound dropped.
    let counters = node
        .ctl(&["eval", "rabbit_global_counters:overview()."])
        .expect("counters");
    let dropped = dropped_dead_letters(&counters);
    println!("dropped by the dead-letter queue's bound: {dropped}");
    assert!(dropped >= 15, "{counters}");
}

/// The sum of `messages_dead_lettered_maxlen_total` for quorum queues
/// without a dead-letter exchange of their own (`disabled`): messages the
/// dead-letter queue dropped for its length bound. RabbitMQ's Prometheus
/// endpoint exports it as
/// `rabbitmq_global_messages_dead_lettered_maxlen_total{queue_type="rabbit_quorum_queue",dead_letter_strategy="disabled"}`.
fn dropped_dead_letters(overview: &str) -> u64 {
    // `#{... [{queue_type,rabbit_quorum_queue},{dead_letter_strategy,disabled}] => #{... messages_dead_lettered_maxlen_total => N ...}}`
    let compact: String = overview.split_whitespace().collect();
    let key = "{queue_type,rabbit_quorum_queue},{dead_letter_strategy,disabled}]=>#{";
    compact
        .find(key)
        .and_then(|i| {
            let rest = &compact[i + key.len()..];
            let end = rest.find('}')?;
            rest[..end].split(',').find_map(|kv| {
                kv.strip_prefix("messages_dead_lettered_maxlen_total=>")?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_simulates_two_hundred_hosts() {
    const N: usize = 200;
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let sim = AgentProcess::builder("sim-0001", &url)
        .args(["--simulate", "200", "--host-prefix", "sim-"])
        .start();
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let started = Instant::now();
    // Fresh views until the whole fleet is up (the first agents declare
    // the presence exchange and streams).
    let alive = loop {
        let p = Client::connect(ClientConfig::new(&url))
            .await
            .expect("client")
            .presence()
            .await;
        let alive = p.map_or(0, |p| {
            p.hosts()
                .iter()
                .filter(|h| h.liveness == Liveness::Alive)
                .count()
        });
        if alive == N || started.elapsed() > Duration::from_secs(120) {
            break alive;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "{alive} simulated hosts alive after {:?}",
        started.elapsed()
    );
    assert_eq!(alive, N, "{}", sim.log_tail(20));

    // A fresh view, timed.
    let t = Instant::now();
    let fresh = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let hosts = fresh.presence().await.expect("presence").hosts();
    println!(
        "fresh fleet view of {} hosts in {:?}",
        hosts.len(),
        t.elapsed()
    );
    assert_eq!(hosts.len(), N);

    // Every host answers a broadcast, which ends when the last one did.
    let t = Instant::now();
    let b = list_vms(&client, &Target::All, Duration::from_secs(30))
        .await
        .expect("broadcast");
    println!(
        "broadcast vm.list to {N} simulated hosts: {:?}",
        t.elapsed()
    );
    assert_eq!(b.replies.len(), N);
    assert!(b.missing.is_empty(), "{:?}", b.missing);
    assert!(b
        .replies
        .values()
        .all(|r| r.as_ref().is_ok_and(|l| l.vms.len() == 3)));
    // A label group of the simulator: rack-<i mod 10>.
    let g = list_group(&client, "rack-3", Duration::from_secs(30))
        .await
        .expect("group");
    assert_eq!(g.replies.len(), N / 10);

    // Commands and events of one simulated host.
    let mut sub = subscribe(&client, &["sim-0042.vm.*"]).await;
    let vm = client
        .host("sim-0042")
        .vm_named("db01")
        .start()
        .await
        .expect("start");
    assert_eq!(vm.power_state, PowerState::Running);
    let ev = loop {
        match next_notification(&mut sub, Duration::from_secs(10), "an event").await {
            Notification::Event(e) => break e,
            Notification::Resync { .. } => {}
        }
    };
    assert_eq!(
        (ev.host_id.as_str(), ev.object_id),
        ("sim-0042", vm.uuid.to_string())
    );
    let pong = client
        .call::<HostPing>(
            "sim-0199",
            Ping {
                echo: Some("x".into()),
            },
        )
        .await
        .expect("ping");
    assert_eq!(pong.host_id, "sim-0199");

    let rss = hostbus_tests::rss_kib(sim.pid().expect("pid")).expect("VmRSS");
    println!(
        "simulator RSS {} MiB for {N} hosts: {} KiB per host",
        rss >> 10,
        rss / N as u64
    );
}
