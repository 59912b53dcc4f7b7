//! The broker goes away under a running agent: a restart in the middle of
//! a burst of commands loses none and runs none twice, a cut TCP
//! connection is made again and the agent resyncs, and a session the
//! broker ends at once backs off like a failed connect. What they show is
//! written down in docs/security.md ("Delivery guarantees").
//!
//! Replies go to a durable queue of the test's own where a test outlives a
//! broker, so nothing the agent answered is lost on the way, and every
//! reply delivery is counted. Figures (duplicate replies) are printed; run
//! with `--nocapture` to see them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::names::{self, host_key};
use hostbus_protocol::types::{DiskFormat, VolumeSpec};
use hostbus_protocol::Command;
use hostbus_tests::faults::{
    check_replies, collect_replies, command, declare_reply_queue, define_request, vm_names,
    volume_names, Sent,
};
use hostbus_tests::{commands_total, metric, next_online, ok, AgentProcess, AmqpPeer, RabbitNode};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const WEB01: &str = "11111111-0000-4000-8000-000000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_burst_loses_no_command_and_runs_none_twice() {
    const REPLIES: &str = "faults.burst.replies";
    let mut node = RabbitNode::start_private().expect("rabbit");
    let url = node.amqp_url();
    let agent = AgentProcess::builder("h1", &url)
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000")
        // vm.define with two new volumes takes three steps of 1 s, so
        // commands are still running when the broker goes.
        .env("HOSTBUS_STEP_PAUSE_MS", "1000")
        .start();
    {
        let peer = AmqpPeer::connect(&url).await.expect("peer");
        let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.agent.online").await;
        next_online(&mut events, &agent).await;
    }
    declare_reply_queue(&url, REPLIES).await;

    let web01: uuid::Uuid = WEB01.parse().expect("uuid");
    let sent: Vec<Sent> = (0..40u64)
        .map(|i| match i % 5 {
            0 => command::<HostPing>(
                &Ping {
                    echo: Some(format!("p{i}")),
                },
                REPLIES,
            ),
            1 | 3 => command::<VmSetMemory>(
                &VmSetMemoryRequest {
                    uuid: web01,
                    memory_kib: 524_288 + i * 1024,
                },
                REPLIES,
            ),
            2 => command::<VolumeCreate>(
                &VolumeCreateRequest {
                    pool: "default".into(),
                    spec: VolumeSpec {
                        name: format!("burst-{i}.qcow2"),
                        capacity_bytes: 1 << 20,
                        allocation_bytes: 0,
                        format: DiskFormat::Qcow2,
                    },
                },
                REPLIES,
            ),
            _ => command::<VmDefine>(&define_request(&format!("burst-vm-{i}"), 2), REPLIES),
        })
        .collect();
    let count = |c: &str| sent.iter().filter(|s| s.command == c).count() as u64;

    // The burst: one command every 200 ms, each confirmed before the next,
    // until the broker goes away (the stop begins after the 8th).
    let confirmed = Arc::new(Mutex::new(vec![false; sent.len()]));
    let progress = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (sent, confirmed, progress, url) = (
            sent.clone(),
            confirmed.clone(),
            progress.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            let peer = AmqpPeer::connect(&url).await.expect("publisher");
            for (i, s) in sent.iter().enumerate() {
                let published = tokio::time::timeout(
                    Duration::from_secs(10),
                    peer.publish_command(&host_key("h1"), &s.props, &s.body),
                )
                .await;
                match published {
                    Ok(Ok(())) => {
                        confirmed.lock().expect("lock")[i] = true;
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return i,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent.len()
        })
    };
    while progress.load(Ordering::SeqCst) < 8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop_at = Instant::now();
    node.stop().expect("stop the broker");
    let stopped_after = stop_at.elapsed();
    let first_failed = publisher.await.expect("publisher task");
    node.start_again().expect("start the broker again");
    let confirmed = confirmed.lock().expect("lock").clone();
    let unconfirmed: Vec<&Sent> = sent
        .iter()
        .zip(&confirmed)
        .filter(|(_, c)| !**c)
        .map(|(s, _)| s)
        .collect();
    println!(
        "broker stopped {stopped_after:?} after the 8th confirm; the publisher failed at \
         command {first_failed}; {} of {} commands unconfirmed",
        unconfirmed.len(),
        sent.len()
    );
    assert!(
        first_failed < sent.len() && !unconfirmed.is_empty(),
        "the broker must go down in the middle of the burst"
    );

    // Republish what the broker did not confirm, with the same ids.
    let peer = AmqpPeer::connect(&url)
        .await
        .expect("publisher after restart");
    for s in &unconfirmed {
        peer.publish_command(&host_key("h1"), &s.props, &s.body)
            .await
            .expect("republish");
    }
    let ids: BTreeSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    let replies = collect_replies(&url, REPLIES, &ids, (90, 3), &agent).await;
    let deliveries: usize = replies.values().map(Vec::len).sum();
    let strays: Vec<&String> = replies.keys().filter(|k| !ids.contains(*k)).collect();
    assert!(strays.is_empty(), "replies to unknown ids: {strays:?}");
    let (dup_ids, extra) = check_replies(&sent, &replies);
    println!(
        "{} commands, {deliveries} reply deliveries: {dup_ids} ids answered more than once \
         ({extra} extra deliveries)",
        sent.len()
    );

    // Effects: each changing command ran exactly once.
    let mut peer = AmqpPeer::connect(&url).await.expect("peer");
    let volumes = volume_names(&mut peer).await;
    let vms = vm_names(&mut peer).await;
    for i in (0..40).filter(|i| i % 5 == 2) {
        let name = format!("burst-{i}.qcow2");
        assert_eq!(volumes.iter().filter(|v| **v == name).count(), 1, "{name}");
    }
    for i in (0..40).filter(|i| i % 5 == 4) {
        let name = format!("burst-vm-{i}");
        assert_eq!(vms.iter().filter(|v| v.name == name).count(), 1, "{name}");
        for t in ["vda", "vdb"] {
            let disk = format!("burst-vm-{i}-{t}.qcow2");
            assert_eq!(volumes.iter().filter(|v| **v == disk).count(), 1, "{disk}");
        }
    }
    let m = agent.metrics_text();
    let mut journal_answers = 0;
    for c in [VolumeCreate::NAME, VmDefine::NAME, VmSetMemory::NAME] {
        let (ran, journal) = (
            commands_total(&m, c, "ok"),
            commands_total(&m, c, "journal-ok"),
        );
        println!("{c}: executed {ran}, answered from the journal {journal}");
        assert_eq!(ran, count(c), "{c} executions (one per command id)");
        journal_answers += journal;
    }
    // The definitions running when the broker went could not reply; their
    // redelivery after the restart was answered from the journal.
    assert!(journal_answers >= 1, "{m}");
    println!(
        "host.ping: executed {} times for {} commands (reads are not journaled)",
        commands_total(&m, HostPing::NAME, "ok"),
        count(HostPing::NAME)
    );
    assert!(metric(&m, "hostbus_reconnects_total") >= 1, "{m}");
    let web = ok::<VmGet>(&mut peer, "h1", &VmUuid { uuid: web01 }).await;
    assert!(
        (0..40)
            .filter(|i| i % 5 == 1 || i % 5 == 3)
            .any(|i| web.memory_kib == 524_288 + i * 1024),
        "web01's memory is one of the values set: {}",
        web.memory_kib
    );
}

/// A TCP proxy in front of the broker that can cut every live connection
/// (both sockets closed) while it keeps accepting new ones.
struct Proxy {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    acceptor: AbortHandle,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (live, accepted) = (live.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    live.lock().expect("lock").push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            addr,
            live,
            accepted,
            acceptor,
        }
    }

    /// Drops both sockets of every connection made so far.
    fn cut(&self) {
        for c in self.live.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_reestablished_and_the_agent_resyncs() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let mut peer = AmqpPeer::connect(&url).await.expect("peer");
    let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.agent.*").await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], node.port()))).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let agent = AgentProcess::builder("h1", &via_proxy)
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000")
        .start();
    let first = next_online(&mut events, &agent).await;
    assert!(first.inventory.is_some());
    ok::<HostPing>(&mut peer, "h1", &Ping { echo: None }).await;

    let cut_at = Instant::now();
    proxy.cut();
    let again = next_online(&mut events, &agent).await;
    println!(
        "online again {:?} after the cut; {} connections through the proxy",
        cut_at.elapsed(),
        proxy.accepted.load(Ordering::SeqCst)
    );
    assert_eq!(again.epoch, first.epoch, "the same process reconnected");
    assert!(again.seq > first.seq);
    let inv = again
        .inventory
        .expect("a fresh inventory after reconnecting");
    assert_eq!(inv.vms.len(), 3);
    assert_eq!((inv.epoch, inv.seq), (Some(again.epoch), again.seq));
    let pong = ok::<HostPing>(
        &mut peer,
        "h1",
        &Ping {
            echo: Some("after the cut".into()),
        },
    )
    .await;
    assert_eq!(pong.echo.as_deref(), Some("after the cut"));
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2);
    assert!(metric(&agent.metrics_text(), "hostbus_reconnects_total") >= 1);
    agent.assert_logged("broker connection lost");
}

/// Issue 12, finding 3: a session that ends right after it starts (here:
/// the broker refuses to let the agent declare its queue) reconnected at
/// once, hundreds of times a second, because a successful connect reset the
/// backoff. Now it backs off like a failed connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_fails_at_once_backs_off_like_a_failed_connect() {
    let node = RabbitNode::start_private().expect("rabbit");
    node.ctl(&["add_user", "locked", "locked"])
        .expect("add_user");
    // May connect and publish, may not declare anything.
    node.ctl(&["set_permissions", "-p", "/", "locked", "^$", ".*", ".*"])
        .expect("set_permissions");
    let agent = AgentProcess::builder("h1", &node.url_for("locked", "locked"))
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "30000")
        .start();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = agent.log();
    let sessions = log.matches("connected to the broker").count();
    println!("sessions opened in 8 s: {sessions}");
    assert!(sessions >= 3, "it keeps trying: {}", agent.log_tail(20));
    // 50..100, 100..200, 200..400, ... ms between attempts: at most 8 in 8 s.
    assert!(
        sessions <= 8,
        "{sessions} sessions in 8 s\n{}",
        agent.log_tail(20)
    );
}
