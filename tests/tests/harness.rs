//! Checks the test harness itself against a real, private RabbitMQ node:
//! durable state survives a restart, a stopped node refuses connections,
//! nothing is left running after a node is dropped (also on panic), users
//! added with rabbitmqctl can log in, the AMQP peer's call and subscription
//! helpers work, the agent binary is built and run, and RabbitMQ 4 nodes
//! deny the deprecated features.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_protocol::envelope::{AmqpProperties, Envelope, HeaderValue};
use hostbus_protocol::names::{self, COMMAND_EXCHANGE, EVENT_EXCHANGE};
use hostbus_protocol::now_ms;
use hostbus_tests::{
    consume_no_ack, declare_queue, declare_topic, group_alive, to_lapin, AgentProcess, AmqpPeer,
    QueueKind, RabbitNode,
};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Processes whose command line contains `pattern`.
fn pgrep(pattern: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-f", pattern])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn persistent() -> AmqpProperties {
    AmqpProperties {
        delivery_mode: Some(2),
        ..AmqpProperties::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_messages_survive_a_restart() {
    let mut node = RabbitNode::start_private().expect("start a node");
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("connect");
    declare_queue(peer.channel(), "harness.durable", QueueKind::Durable)
        .await
        .expect("declare a durable queue");
    peer.publish("", "harness.durable", &persistent(), b"kept")
        .await
        .expect("publish a persistent message");
    let port = node.port();

    node.restart().expect("restart the node");
    assert_eq!(node.port(), port, "a restarted node keeps its port");
    assert!(
        peer.channel()
            .basic_get("harness.durable".into(), BasicGetOptions::default())
            .await
            .is_err(),
        "connections to the old node are gone"
    );

    let peer = AmqpPeer::connect(&node.amqp_url())
        .await
        .expect("connect after the restart");
    let got = peer
        .channel()
        .basic_get("harness.durable".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .unwrap_or_else(|| panic!("the message is lost\n{}", node.log_tail(30)));
    assert_eq!(got.delivery.data, b"kept");
    assert_eq!(*got.delivery.properties.delivery_mode(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_refuses_connections_until_started_again() {
    let mut node = RabbitNode::start_private().expect("start a node");
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("connect");
    node.stop().expect("stop the node");
    assert!(!node.is_running());
    // Each wait is bounded: once, on RabbitMQ 4.0.5 under load, the declare
    // on the dead connection never resolved (lapin's I/O thread had ended
    // without failing it) and the suite hung in scripts/test for minutes.
    let bound = Duration::from_secs(30);
    assert!(
        !matches!(
            tokio::time::timeout(bound, AmqpPeer::connect(&node.amqp_url())).await,
            Ok(Ok(_))
        ),
        "a stopped node accepts no connection"
    );
    assert!(
        // Exclusive: RabbitMQ 4 refuses a transient queue that is not,
        // node up or down.
        !matches!(
            tokio::time::timeout(
                bound,
                declare_queue(peer.channel(), "", QueueKind::Exclusive)
            )
            .await,
            Ok(Ok(_))
        ),
        "an open connection no longer serves once its node stops"
    );
    node.start_again().expect("start the node again");
    AmqpPeer::connect(&node.amqp_url())
        .await
        .expect("connect after starting again");
}

/// The proof that hostbus uses none of RabbitMQ 4's deprecated features
/// rests on this: on a 4.x node of the harness, a deprecated feature is
/// denied, and its use, refused or quietly ignored, shows in the node's log,
/// which fails the test that asked for it when the node is dropped.
/// Checked with the two an AMQP 0-9-1 client can reach: a transient queue
/// that is not exclusive (refused: the connection is closed), and a QoS for
/// the whole channel (ignored: it becomes per consumer). RabbitMQ 3.10
/// knows no deprecated features and permits both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_4_nodes_deny_its_deprecated_features_and_log_their_use() {
    let mut node = RabbitNode::start_private().expect("start a node");
    let version = node.version().expect("a private node");
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("connect");
    let transient = peer
        .channel()
        .queue_declare(
            "harness.transient".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    // On a connection of its own: the refusal above closes the first one.
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("connect");
    let global_qos = peer
        .channel()
        .basic_qos(10, BasicQosOptions { global: true })
        .await;
    if version.has_deprecated_features() {
        let err = transient
            .expect_err("a transient non-exclusive queue is refused")
            .to_string();
        assert!(err.contains("transient_nonexcl_queues"), "{err}");
        global_qos.expect("a global QoS is taken, as a per-consumer one");
        // The log is written a moment after the refusal.
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut uses = Vec::new();
        while uses.len() < 2 && std::time::Instant::now() < deadline {
            uses.extend(node.take_deprecated_feature_uses());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        uses.sort();
        assert_eq!(
            uses,
            ["global_qos", "transient_nonexcl_queues"],
            "RabbitMQ {version}'s log\n{}",
            node.log_tail(40)
        );
    } else {
        transient.expect("RabbitMQ 3.10 declares a transient non-exclusive queue");
        global_qos.expect("RabbitMQ 3.10 takes a global QoS");
        assert_eq!(node.take_deprecated_feature_uses(), Vec::<String>::new());
    }
}

#[test]
fn dropped_node_leaves_no_process_or_directory() {
    let node = RabbitNode::start_private().expect("start a node");
    let name = node.node_name().expect("a private node").to_owned();
    let pgid = node.process_group().expect("a running node");
    let dir = node.data_dir().expect("a private node").to_owned();
    assert!(
        pgrep(&name).contains("beam"),
        "the Erlang VM carries the node name on its command line:\n{}",
        pgrep(&name)
    );
    drop(node);
    assert_eq!(pgrep(&name), "", "processes of {name} outlive the node");
    assert!(!group_alive(pgid), "the node's process group outlives it");
    assert!(!dir.exists(), "{} outlives the node", dir.display());
}

#[test]
fn node_of_a_panicking_test_is_cleaned_up() {
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = RabbitNode::start_private().expect("start a node");
        *seen.lock().expect("lock") = node.node_name().map(str::to_owned);
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let name = seen
        .into_inner()
        .expect("lock")
        .expect("the node had started");
    assert_eq!(pgrep(&name), "", "processes of {name} outlive the panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_with_rabbitmqctl_log_in_and_user_id_is_verified() {
    let node = RabbitNode::start_private().expect("start a node");
    node.add_user("manager", "s3cret pass").expect("add a user");
    let users = node.ctl(&["-q", "list_users"]).expect("list users");
    assert!(users.contains("manager"), "{users}");

    let peer = AmqpPeer::connect(&node.url_for("manager", "s3cret pass"))
        .await
        .expect("a new user logs in over 127.0.0.1");
    let ok = AmqpProperties {
        user_id: Some("manager".into()),
        ..AmqpProperties::default()
    };
    peer.publish("", "nowhere", &ok, b"")
        .await
        .expect("own user_id");
    let forged = AmqpProperties {
        user_id: Some("guest".into()),
        ..AmqpProperties::default()
    };
    assert!(
        peer.publish("", "nowhere", &forged, b"").await.is_err(),
        "RabbitMQ refuses a user_id other than the login"
    );
    assert!(
        AmqpPeer::connect(&node.url_for("manager", "wrong"))
            .await
            .is_err(),
        "a wrong password is refused"
    );
}

/// A stand-in agent on plain lapin: answers every command routed with
/// `host.fake` by echoing its body, with the correlation id and a header.
async fn fake_responder(url: &str) -> tokio::task::JoinHandle<()> {
    let peer = AmqpPeer::connect(url).await.expect("connect the responder");
    let ch = peer.channel().clone();
    declare_topic(&ch, COMMAND_EXCHANGE)
        .await
        .expect("declare hostbus.cmd");
    let q = declare_queue(&ch, "", QueueKind::Exclusive)
        .await
        .expect("declare the responder's queue");
    ch.queue_bind(
        q.name().clone(),
        COMMAND_EXCHANGE.into(),
        names::host_key("fake").into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let mut consumer = consume_no_ack(&ch, q.name().as_str())
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _peer = peer;
        // An error from the consumer ends the responder: said, so a test
        // that then waits for a reply in vain shows why.
        while let Some(next) = consumer.next().await {
            let d = match next {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("fake responder: its consumer failed: {e}");
                    break;
                }
            };
            let Some(reply_to) = d.properties.reply_to().clone() else {
                continue;
            };
            let mut props = AmqpProperties {
                correlation_id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string()),
                ..AmqpProperties::default()
            };
            props
                .headers
                .insert("x-echo".into(), HeaderValue::Str("yes".into()));
            ch.basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &d.data,
                to_lapin(&props),
            )
            .await
            .map_or_else(
                |e| eprintln!("fake responder: cannot publish a reply: {e}"),
                |_| {},
            );
        }
        eprintln!("fake responder: its consumer ended");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_through_direct_reply_to_and_subscribes_to_events() {
    let node = RabbitNode::start().expect("start a node");
    let responder = fake_responder(&node.amqp_url()).await;
    let mut peer = AmqpPeer::connect(&node.amqp_url()).await.expect("connect");

    let props = Envelope::new("host.get").to_properties(now_ms());
    let reply = peer
        .call(&names::host_key("fake"), &props, b"ping", TIMEOUT)
        .await
        .expect("a reply");
    assert_eq!(reply.body, b"ping");
    assert_eq!(reply.properties.correlation_id, props.message_id);
    assert_eq!(reply.header_str("x-echo"), Some("yes"));

    let silent = Envelope::new("host.get").to_properties(now_ms());
    let err = peer
        .call(
            &names::host_key("nobody"),
            &silent,
            b"",
            Duration::from_millis(300),
        )
        .await
        .expect_err("nobody answers");
    assert!(err.is_timeout(), "{err:?}");

    let mut events = peer.watch(EVENT_EXCHANGE, "h9.vm.*").await;
    for key in ["h9.vm.started", "h9.pool.defined", "h9.vm.stopped"] {
        peer.publish(
            EVENT_EXCHANGE,
            key,
            &AmqpProperties::default(),
            key.as_bytes(),
        )
        .await
        .expect("publish an event");
    }
    let got = events
        .collect_for(Duration::from_millis(500))
        .await
        .expect("collect");
    let keys: Vec<&str> = got.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(keys, ["h9.vm.started", "h9.vm.stopped"]);
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_is_built_and_invalid_config_exits_64() {
    let node = RabbitNode::start().expect("start a node");
    let mut agent = AgentProcess::builder("Not.A.Host", &node.amqp_url()).start();
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent still runs\n{}", agent.log_tail(30)));
    assert_eq!(
        status.code(),
        Some(64),
        "invalid config exits 64\n{}",
        agent.log_tail(30)
    );
    assert!(agent.log().contains("host_id"), "{}", agent.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_process_is_signalled_restarted_and_killed() {
    let node = RabbitNode::start().expect("start a node");
    let mut agent = AgentProcess::builder("h1", &node.amqp_url())
        .label("rack1")
        .start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.is_running(), "the agent runs\n{}", agent.log_tail(30));
    let first = agent.pid().expect("a pid");
    let journal = agent.journal_path().to_owned();

    agent.terminate().expect("SIGTERM");
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("SIGTERM stops the agent\n{}", agent.log_tail(30)));
    assert!(status.success(), "{status}\n{}", agent.log_tail(30));

    agent.restart().expect("restart the agent");
    assert_ne!(agent.pid(), Some(first));
    assert_eq!(agent.journal_path(), journal);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(agent.is_running(), "{}", agent.log_tail(30));
    assert_eq!(agent.log().matches("=== hostbus-tests: start #").count(), 2);

    agent.kill().expect("SIGKILL");
    let status = agent.wait_exit(Duration::from_secs(5)).expect("killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    agent.restart().expect("restart after a crash");
    let pid = agent.pid().expect("a pid");
    drop(agent);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "a dropped agent's process is gone"
    );
}
