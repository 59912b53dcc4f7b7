//! Per-host broker users and the agent's authorization, on a private
//! RabbitMQ node. With the permissions and topic permissions of
//! docs/security.md (an administrator declares the exchanges):
//!
//! * agent h1, logged in as user `h1` with `HOSTBUS_DECLARE_EXCHANGES=false`,
//!   serves commands (also through `group.<label>`), publishes events and
//!   heartbeats;
//! * a manager user, through the SDK, subscribes to events and presence and
//!   starts a VM; a read-only manager may read but gets `PERMISSION_DENIED`
//!   for `vm.start`; with `HOSTBUS_ROLES` set, `guest` has no role;
//! * with host h2's credentials, the broker refuses (403) events and
//!   heartbeats under h1's id, commands to `hostbus.cmd`, consuming,
//!   declaring or binding to h1's commands, declaring exchanges, and (406)
//!   a forged `user_id`; what it cannot refuse, a message put into h1's
//!   queue through the default exchange, the agent refuses (h2 has no role),
//!   and an event or goodbye of h1's put into the streams that way, the
//!   SDK's subscription and fleet views skip.
//!
//! The permission strings below are the ones docs/security.md shows; change
//! both together.

use std::time::Duration;

use hostbus_client::{Client, ClientConfig, Liveness, Notification};
use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::STATUS_HEADER;
use hostbus_protocol::names;
use hostbus_protocol::types::{PowerState, VmRecord};
use hostbus_protocol::{
    decode, encode, now_ms, AmqpProperties, Announcement, Command, ContentType, ErrorCode, Event,
    EventAction, Heartbeat, Reply, RosterAction,
};
use hostbus_tests::sdk::{next_notification, subscribe};
use hostbus_tests::{
    call_as, command_props, declare_queue, declare_topic, to_lapin, AgentProcess, AmqpPeer,
    QueueKind, RabbitNode,
};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

const DB01: &str = "11111111-0000-4000-8000-000000000002";
const BATCH01: &str = "11111111-0000-4000-8000-000000000003";
const T: Duration = Duration::from_secs(15);

/// Checks the outcome of one of h2's attempts and notes it.
fn expect_code(what: &str, got: Option<u16>, want: Option<u16>) {
    println!("h2: {what}: {got:?}");
    assert_eq!(got, want, "h2: {what}");
}

/// `rabbitmqctl set_permissions` arguments (configure, write, read) of host
/// user `h`: its own command queue only; events, heartbeats, dead letters
/// and replies (the default exchange) to write; its queue and the command
/// exchange (for bindings) to read.
fn host_permissions(h: &str) -> [String; 3] {
    [
        format!(r"^hostbus\.agent\.{h}(\.reads)?$"),
        format!(
            r"^(hostbus\.agent\.{h}(\.reads)?|hostbus\.evt|hostbus\.presence|hostbus\.dlx|amq\.default)$"
        ),
        format!(r"^(hostbus\.agent\.{h}(\.reads)?|hostbus\.cmd)$"),
    ]
}

/// `rabbitmqctl set_topic_permissions` arguments (exchange, write, read) of
/// host user `h`: events and heartbeats only under its own host id, and
/// command bindings only for `host.<h>`, `all` and `group.<label>`.
fn host_topic_permissions(h: &str) -> [[String; 3]; 3] {
    [
        [
            "hostbus.evt".to_owned(),
            format!(r"^{h}\."),
            "^$".to_owned(),
        ],
        [
            "hostbus.presence".to_owned(),
            format!(r"^{h}\.(heartbeat|online|offline)$"),
            "^$".to_owned(),
        ],
        [
            "hostbus.cmd".to_owned(),
            "^$".to_owned(),
            format!(r"^(read\.)?(host\.{h}|all|group\.[a-z0-9-]+)$"),
        ],
    ]
}

/// Permissions of a manager user: server-named queues of its own,
/// commands and presence sync markers to write, events, heartbeats and the
/// streams to read.
const MANAGER_PERMISSIONS: [&str; 3] = [
    r"^amq\.gen-.*$",
    r"^(hostbus\.cmd|hostbus\.presence|amq\.gen-.*)$",
    r"^(hostbus\.evt|hostbus\.presence|hostbus\.events|hostbus\.presence\.(beats|roster)|amq\.gen-.*)$",
];

/// Topic permission of a manager on `hostbus.presence`: sync markers only
/// (`_sync.<id>`), never another host's heartbeat or announcement.
const MANAGER_PRESENCE_TOPICS: [&str; 3] = ["hostbus.presence", r"^_sync\.", ".*"];

fn add_host_user(node: &RabbitNode, h: &str, password: &str) {
    node.ctl(&["add_user", h, password]).expect("add_user");
    let [conf, write, read] = host_permissions(h);
    node.ctl(&["set_permissions", "-p", "/", h, &conf, &write, &read])
        .expect("set_permissions");
    for [exchange, write, read] in host_topic_permissions(h) {
        node.ctl(&[
            "set_topic_permissions",
            "-p",
            "/",
            h,
            &exchange,
            &write,
            &read,
        ])
        .expect("set_topic_permissions");
    }
}

fn add_manager(node: &RabbitNode, user: &str, password: &str) {
    node.ctl(&["add_user", user, password]).expect("add_user");
    let [conf, write, read] = MANAGER_PERMISSIONS;
    node.ctl(&["set_permissions", "-p", "/", user, conf, write, read])
        .expect("set_permissions");
    let [exchange, write, read] = MANAGER_PRESENCE_TOPICS;
    node.ctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        user,
        exchange,
        write,
        read,
    ])
    .expect("set_topic_permissions");
}

/// What an administrator declares once (the agents do not, with
/// `HOSTBUS_DECLARE_EXCHANGES=false`): the agents' shared topology, the way
/// `hostctl admin setup` does it.
async fn declare_topology(admin: &AmqpPeer) {
    let m = hostbus_amqp::topology::declare_shared(
        admin.connection(),
        &hostbus_amqp::topology::TopologySettings::default(),
    )
    .await
    .expect("declare the topology");
    assert!(m.is_empty(), "{m:?}");
}

/// The AMQP reply code of a failed operation: 403 ACCESS_REFUSED, 406
/// PRECONDITION_FAILED, ...; `None` when it succeeded. Channel errors close
/// the channel, so every check runs on a fresh one.
fn code_of<T>(r: Result<T, lapin::Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
            other => panic!("expected a channel error from the broker, got {other:?}"),
        },
    }
}

async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("open a channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch
}

/// Binds `queue` to the command exchange with `key`.
async fn bind_command_key(ch: &Channel, queue: &str, key: &str) -> Result<(), lapin::Error> {
    ch.queue_bind(
        queue.into(),
        names::COMMAND_EXCHANGE.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Starts consuming `queue` (the broker checks read permission here).
async fn consume(ch: &Channel, queue: &str) -> Result<lapin::Consumer, lapin::Error> {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Publishes on a fresh channel and waits for the broker's confirm; the
/// AMQP error code if the broker closed the channel instead.
async fn publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    props: &AmqpProperties,
) -> Option<u16> {
    let ch = channel(conn).await;
    let result = async {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b"\x80",
                to_lapin(props),
            )
            .await?
            .await?;
        assert!(confirm.is_ack(), "{confirm:?}");
        Ok::<_, lapin::Error>(())
    }
    .await;
    code_of(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_users_are_confined_and_roles_are_enforced() {
    let node = RabbitNode::start_private().expect("rabbit");
    let admin = AmqpPeer::connect(&node.amqp_url())
        .await
        .expect("admin peer");
    declare_topology(&admin).await;
    add_host_user(&node, "h1", "h1-secret");
    add_host_user(&node, "h2", "h2-secret");
    add_manager(&node, "ops", "ops-secret");
    add_manager(&node, "viewer", "viewer-secret");

    let mut events = admin.watch(names::EVENT_EXCHANGE, "#").await;
    let mut beats = admin.watch(names::PRESENCE_EXCHANGE, "h1.heartbeat").await;

    // Agent h1, logged in as h1, declaring only its own queue.
    let agent = AgentProcess::builder("h1", &node.url_for("h1", "h1-secret"))
        .label("rack-a")
        .env("HOSTBUS_DECLARE_EXCHANGES", "false")
        .env("HOSTBUS_ROLES", "ops=operator,viewer=read-only")
        .start();
    let online = events
        .next(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(40)));
    assert_eq!(online.routing_key, "h1.agent.online");
    let hb: Heartbeat = decode(
        ContentType::MsgPack,
        &beats.next(T).await.expect("a heartbeat").body,
        1 << 20,
    )
    .expect("heartbeat");
    assert_eq!(hb.host_id, "h1");

    // An operator, through the SDK with nothing but the manager
    // permissions: it subscribes to events and presence (server-named
    // queues), starts a VM, and sees the event the agent published.
    let ops_client = Client::connect(ClientConfig::new(node.url_for("ops", "ops-secret")))
        .await
        .expect("ops client");
    let mut sub = subscribe(&ops_client, &["h1.vm.*"]).await;
    let presence = ops_client.presence().await.expect("ops watches presence");
    let db01: uuid::Uuid = DB01.parse().expect("uuid");
    let vm = ops_client
        .host("h1")
        .vm(db01)
        .start()
        .await
        .expect("ops may start a VM");
    assert_eq!(vm.power_state, PowerState::Running);
    loop {
        match next_notification(&mut sub, T, "an event for ops").await {
            Notification::Event(e) if e.action == EventAction::Started => {
                assert_eq!(e.object_id, DB01);
                break;
            }
            _ => {}
        }
    }
    let started = events
        .next_matching(T, |r| r.routing_key == "h1.vm.started")
        .await
        .expect("h1.vm.started");
    let ev: Event = decode(ContentType::MsgPack, &started.body, 1 << 20).expect("event");
    assert_eq!(
        (ev.action, ev.object_id.as_str()),
        (EventAction::Started, DB01)
    );
    presence.wait_ready(Duration::from_secs(5)).await;
    assert!(
        presence.hosts().iter().any(|h| h.host_id == "h1"),
        "ops sees h1 in the fleet view"
    );
    let mut ops = AmqpPeer::connect(&node.url_for("ops", "ops-secret"))
        .await
        .expect("ops peer");
    // Reaching the agent through `group.<label>` works too (its binding was allowed).
    let r = ops
        .call(
            &names::group_key("rack-a"),
            &command_props(HostPing::NAME, "ops", ContentType::MsgPack),
            &encode(ContentType::MsgPack, &Ping { echo: None }).expect("encode"),
            T,
        )
        .await
        .expect("group ping");
    assert_eq!(r.header_str(STATUS_HEADER), Some("ok"));

    // A read-only manager may read, not operate.
    let mut viewer = AmqpPeer::connect(&node.url_for("viewer", "viewer-secret"))
        .await
        .expect("viewer peer");
    let batch01: uuid::Uuid = BATCH01.parse().expect("uuid");
    let (r, reply) = call_as::<VmStart>(
        &mut viewer,
        "h1",
        "viewer",
        &VmStartRequest {
            uuid: batch01,
            paused: false,
        },
    )
    .await;
    assert_eq!(r.header_str(STATUS_HEADER), Some("error"));
    match reply {
        Reply::Error(e) => {
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
            assert_eq!(
                (e.param("user"), e.param("command")),
                (Some("viewer"), Some("vm.start"))
            );
        }
        other => panic!("viewer must not start a VM: {other:?}"),
    }
    let (_, reply) = call_as::<VmGet>(&mut viewer, "h1", "viewer", &VmUuid { uuid: batch01 }).await;
    match reply {
        Reply::Ok(vm) => assert_eq!(vm.power_state, PowerState::Halted, "nothing ran"),
        other => panic!("viewer may read: {other:?}"),
    }
    // With HOSTBUS_ROLES set, `guest` has no role at all.
    let mut guest = AmqpPeer::connect(&node.amqp_url()).await.expect("guest");
    let (_, reply) = call_as::<VmGet>(&mut guest, "h1", "guest", &VmUuid { uuid: batch01 }).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.code == ErrorCode::PermissionDenied),
        "{reply:?}"
    );

    // Host h2's credentials, used directly.
    let h2 = Connection::connect(
        &node.url_for("h2", "h2-secret"),
        ConnectionProperties::default(),
    )
    .await
    .expect("h2 logs in");
    // Its own queue: declare (with the dead-letter exchange) and bind.
    let ch = channel(&h2).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names::DEAD_LETTER_EXCHANGE.into()),
    );
    ch.queue_declare(
        "hostbus.agent.h2".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("h2 may declare its own queue");
    for key in ["host.h2", "all", "group.rack-b"] {
        bind_command_key(&ch, "hostbus.agent.h2", key)
            .await
            .unwrap_or_else(|e| panic!("h2 may bind its queue with {key}: {e}"));
    }

    let mut event_props = AmqpProperties {
        delivery_mode: Some(2),
        ..AmqpProperties::default()
    };
    expect_code(
        "publish hostbus.evt h1.vm.started",
        publish(&h2, names::EVENT_EXCHANGE, "h1.vm.started", &event_props).await,
        Some(403),
    );
    expect_code(
        "publish hostbus.evt h2.vm.started",
        publish(&h2, names::EVENT_EXCHANGE, "h2.vm.started", &event_props).await,
        None,
    );
    events
        .next_matching(T, |r| r.routing_key == "h2.vm.started")
        .await
        .expect("h2's own event arrives");
    expect_code(
        "publish hostbus.presence h1.heartbeat",
        publish(&h2, names::PRESENCE_EXCHANGE, "h1.heartbeat", &event_props).await,
        Some(403),
    );
    expect_code(
        "publish a command to hostbus.cmd host.h1",
        publish(
            &h2,
            names::COMMAND_EXCHANGE,
            "host.h1",
            &command_props(VmStart::NAME, "h2", ContentType::MsgPack),
        )
        .await,
        Some(403),
    );
    event_props.user_id = Some("h1".into());
    expect_code(
        "publish with user_id h1",
        publish(&h2, names::EVENT_EXCHANGE, "h2.vm.started", &event_props).await,
        Some(406),
    );
    let ch = channel(&h2).await;
    expect_code(
        "consume hostbus.agent.h1",
        code_of(consume(&ch, "hostbus.agent.h1").await),
        Some(403),
    );
    let ch = channel(&h2).await;
    expect_code(
        "declare hostbus.agent.h1",
        code_of(declare_queue(&ch, "hostbus.agent.h1", QueueKind::Durable).await),
        Some(403),
    );
    let ch = channel(&h2).await;
    expect_code(
        "bind hostbus.agent.h2 to host.h1",
        code_of(bind_command_key(&ch, "hostbus.agent.h2", "host.h1").await),
        Some(403),
    );
    let ch = channel(&h2).await;
    expect_code(
        "declare exchange hostbus.evt",
        code_of(declare_topic(&ch, names::EVENT_EXCHANGE).await),
        Some(403),
    );

    // What the permissions cannot stop: replies need write on the default
    // exchange, and the default exchange routes to any queue by name, so h2
    // can put a message straight into h1's command queue. The broker stamps
    // it with h2's login and the agent refuses it: h2 has no role.
    let mut sneaky = AmqpPeer::connect(&node.url_for("h2", "h2-secret"))
        .await
        .expect("h2 peer");
    sneaky
        .consume_replies()
        .await
        .expect("direct reply-to as h2");
    let mut p = command_props(VmStart::NAME, "h2", ContentType::MsgPack);
    p.reply_to = Some(names::DIRECT_REPLY_TO.into());
    p.correlation_id = p.message_id.clone();
    let body = encode(
        ContentType::MsgPack,
        &VmStartRequest {
            uuid: batch01,
            paused: false,
        },
    )
    .expect("encode");
    sneaky
        .publish("", "hostbus.agent.h1", &p, &body)
        .await
        .expect("the default exchange takes it");
    let r = sneaky.next_reply(T).await.expect("the agent answers h2");
    let reply: Reply<VmRecord> = decode(ContentType::MsgPack, &r.body, 1 << 20).expect("decode");
    match reply {
        Reply::Error(e) => {
            println!("h2: a command through the default exchange: {e}");
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
            assert_eq!(e.param("user"), Some("h2"));
        }
        other => panic!("h2's command must be refused: {other:?}"),
    }

    // The same path reaches the streams: h2 can append to `hostbus.events`
    // an event that claims to be h1's, and to the roster h1's goodbye. The
    // broker takes both; a subscription and a fleet view skip them, for
    // neither came through its topic exchange under the key its body gives
    // (the key h2's topic permissions refuse it above).
    let mut forged = ev.clone();
    forged.object_id = BATCH01.into();
    forged.seq += 1;
    let msgpack = AmqpProperties {
        content_type: Some(ContentType::MsgPack.as_str().into()),
        ..AmqpProperties::default()
    };
    sneaky
        .publish(
            "",
            names::EVENT_STREAM,
            &msgpack,
            &encode(ContentType::MsgPack, &forged).expect("encode"),
        )
        .await
        .expect("the default exchange takes a forged event into the stream");
    let h1_view = presence
        .hosts()
        .into_iter()
        .find(|h| h.host_id == "h1")
        .expect("h1 in the fleet view");
    let bye = Announcement {
        host_id: "h1".into(),
        action: RosterAction::Offline,
        epoch: Some(h1_view.epoch),
        time: now_ms(),
        started_at: 0,
        interval_ms: 0,
        labels: vec![],
        versions: None,
        capabilities: vec![],
        by: None,
        migration_uri: None,
    };
    sneaky
        .publish(
            "",
            names::ROSTER_STREAM,
            &msgpack,
            &encode(ContentType::MsgPack, &bye).expect("encode"),
        )
        .await
        .expect("the default exchange takes a forged goodbye into the roster");
    // A real event after the forged one: the subscription's next event.
    let (_, reply) = call_as::<VmDestroy>(&mut ops, "h1", "ops", &VmUuid { uuid: db01 }).await;
    assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    loop {
        match next_notification(&mut sub, T, "h1's real event after the forged one").await {
            Notification::Event(e) if e.object_id == BATCH01 => {
                panic!("a forged event reached the subscriber: {e:?}")
            }
            Notification::Event(e) if e.action == EventAction::Stopped => {
                assert_eq!(e.object_id, DB01);
                break;
            }
            Notification::Resync { host, reason, .. } => {
                panic!("a resync of {host} ({reason:?}): the forged event was taken in")
            }
            _ => {}
        }
    }
    // Both fleet views, the one following the streams and a fresh one,
    // still see h1 alive.
    let fresh = ops_client.presence().await.expect("a fresh fleet view");
    fresh.wait_ready(Duration::from_secs(5)).await;
    for (what, view) in [("following", &presence), ("fresh", &fresh)] {
        let h1 = view
            .hosts()
            .into_iter()
            .find(|h| h.host_id == "h1")
            .expect("h1");
        assert_eq!(h1.liveness, Liveness::Alive, "{what} view: {h1:?}");
    }

    // h1 kept working through all of this, and nothing h2 sent ran.
    let (_, reply) = call_as::<VmGet>(&mut ops, "h1", "ops", &VmUuid { uuid: batch01 }).await;
    match reply {
        Reply::Ok(vm) => assert_eq!(vm.power_state, PowerState::Halted),
        other => panic!("{other:?}"),
    }
    let (_, reply) = call_as::<VmGet>(&mut ops, "h1", "ops", &VmUuid { uuid: db01 }).await;
    assert!(matches!(reply, Reply::Ok(VmRecord { .. })), "{reply:?}");
    assert!(
        !agent.log().contains("ACCESS_REFUSED"),
        "the agent hit a permission it lacks:\n{}",
        agent.log_tail(40)
    );
}
