//! `hostctl --socket` with the broker down: the host-level CLI of the
//! design (issue 17). A real agent whose broker is unreachable serves its
//! HTTP binding on a Unix socket; every hostctl subcommand runs once
//! through that socket with `--output json`, and its output is parsed back
//! (the tour of host h1 the broker suite takes too, `hostbus_tests::tour`).
//! A subcommand of hostctl's command tree that this suite does not run
//! fails it, so a new verb is tried without a broker too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostbus_client::{Client, ClientConfig, ErrorKind, StartAt, SubscribeOptions};
use hostbus_tests::{tour, AgentProcess, Hostctl};

/// A broker URL where nothing listens: the broker is down.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// Starts agent h1 (at production defaults) with its broker down and its
/// HTTP socket in its own folder; returns it and the socket's path once
/// the socket exists.
fn agent_with_socket() -> (AgentProcess, PathBuf) {
    let mut agent = AgentProcess::builder("h1", NO_BROKER)
        .arg("--http-socket")
        .arg("agent.sock")
        .start();
    let socket = agent.dir().join("agent.sock");
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            agent.is_running(),
            "the agent exited: {}",
            agent.log_tail(40)
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no socket at {} after 60 s: {}",
            socket.display(),
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (agent, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostctl_subcommand_runs_through_the_socket_with_the_broker_down() {
    let (agent, socket) = tokio::task::block_in_place(agent_with_socket);
    let ctl = Hostctl::socket(&socket).recording();

    // The fleet is the one host, alive; `vm list --all` reaches it, and
    // so does `vm list` without saying which hosts: the socket's.
    tour::fleet(&ctl, &["h1"]);
    let local = ctl.run(&["-o", "json", "vm", "list"]);
    assert_eq!(local.code, 0, "{}{}", local.stderr, local.stdout);
    let local: serde_json::Value = serde_json::from_str(&local.stdout).expect("json");
    let hosts: Vec<&str> = local
        .as_array()
        .expect("h1's VMs")
        .iter()
        .filter_map(|row| row["host"].as_str())
        .collect();
    assert_eq!(hosts, ["h1"; 3], "{local}");
    tour::host_facts(&ctl);
    assert_eq!(
        ctl.json(&["vm", "list", "--label", "gpu"])["vms"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "h1 has no label: a group reaches no host"
    );
    tour::objects(&ctl);

    // Tasks: started through the SDK over the same socket (the
    // `x-hostbus-async` path), then read and waited for with hostctl.
    let client = Client::connect(ClientConfig::local(&socket))
        .await
        .expect("client over the socket");
    assert_eq!(client.local_host(), Some("h1"));
    tour::tasks(&ctl, &client).await;

    // Events: the agent's own stream, from the next event only.
    let ev = tour::event_of_a_change(&ctl).await;
    assert!(ev["seq"].as_u64().is_some_and(|s| s > 0), "{ev}");
    assert!(ev["offset"].is_null(), "no broker stream, no offset: {ev}");
    assert_eq!(
        ctl.code(&["events", "--from", "first", "--count", "1"]),
        4,
        "the agent keeps no history"
    );
    let refused = client
        .subscribe(
            &[],
            SubscribeOptions {
                from: StartAt::First,
                ..SubscribeOptions::default()
            },
        )
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(refused, Some(ErrorKind::Unsupported));
    tour::without_connection(&ctl);

    // An evacuation needs the fleet view, which a socket does not give.
    let out = ctl.run(&["host", "evacuate", "h1", "--to", "h2"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);

    // Broker administration cannot run through a socket: a usage error
    // that says so, before anything is sent.
    for verb in [&["admin", "setup"][..], &["host", "forget", "h1"]] {
        let out = ctl.run(verb);
        assert_eq!(out.code, 2, "{verb:?}: {}{}", out.stderr, out.stdout);
        assert!(
            out.stderr.contains("administers the broker") && out.stderr.contains("--url"),
            "{verb:?}: {}",
            out.stderr
        );
    }

    // Exit codes: another host is not behind this socket; a missing socket
    // is unreachable, and says where it looked.
    let other = ctl.run(&["ping", "h9"]);
    assert_eq!(other.code, 3, "{}", other.stderr);
    assert!(
        other.stderr.contains("h9 is another host"),
        "{}",
        other.stderr
    );
    assert_eq!(ctl.code(&["vm", "get", "h1/nope"]), 3);
    let missing = agent.dir().join("nothing.sock");
    let out = Hostctl::socket(&missing).run(&["ping", "h1"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "{}",
        out.stderr
    );

    ctl.assert_every_verb_run("through --socket");
}

/// The SDK over the socket keeps the bus's promises: a retried command id
/// runs once (the journal answers), another host is not behind the socket
/// (nothing is sent), and a subscription that outlives an agent restart
/// resyncs with the new epoch's inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_over_a_socket_runs_a_command_id_once_and_resyncs_after_a_restart() {
    use futures_lite::StreamExt;
    use hostbus_client::protocol::commands::{VmDefine, VmDefineRequest};
    use hostbus_client::{CallOptions, Notification, ResyncReason};

    let (mut agent, socket) = tokio::task::block_in_place(agent_with_socket);
    let client = Client::connect(ClientConfig::local(&socket))
        .await
        .expect("client over the socket");
    let opts = CallOptions {
        command_id: Some(uuid::Uuid::new_v4()),
        ..CallOptions::default()
    };
    let req = || VmDefineRequest {
        spec: hostbus_tests::small_vm("once", &[]),
    };
    let a = client
        .call_with::<VmDefine>("h1", req(), &opts)
        .await
        .expect("define");
    let b = client
        .call_with::<VmDefine>("h1", req(), &opts)
        .await
        .expect("the same id again: the journal's reply, not ALREADY_EXISTS");
    assert_eq!(a.uuid, b.uuid);
    assert_eq!(
        agent
            .log()
            .matches("duplicate command answered from the journal")
            .count(),
        1
    );
    let e = client.host("h2").ping().await.expect_err("h2 is not here");
    assert_eq!(e.kind(), ErrorKind::NoRoute, "{e}");

    let mut sub = client
        .subscribe(&["h1.vm.*"], SubscribeOptions::default())
        .await
        .expect("subscribe");
    let old_epoch = client.host("h1").snapshot().await.expect("snapshot").epoch;
    tokio::task::block_in_place(|| agent.restart()).expect("restart");
    let n = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a notification in time")
        .expect("open")
        .expect("ok");
    match n {
        Notification::Resync {
            host,
            reason,
            inventory,
            ..
        } => {
            assert_eq!((host.as_str(), reason), ("h1", ResyncReason::NewEpoch));
            let inv = inventory.expect("the new epoch's inventory");
            assert_ne!(inv.epoch, old_epoch);
            // The test driver's state is per process: the node file's three.
            assert_eq!(inv.vms.len(), 3, "{:?}", inv.vms);
        }
        other => panic!("{other:?}"),
    }
}
