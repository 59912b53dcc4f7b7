//! The agent over a real RabbitMQ node, driven with plain lapin the way a
//! third party would: every kind of command gets its reply, every bad input
//! its error, events and heartbeats flow, a broker restart is survived and
//! SIGTERM drains in-flight work.

use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::{DEADLINE_HEADER, HOST_HEADER, STATUS_HEADER, VERSION_HEADER};
use hostbus_protocol::names::{self, host_key};
use hostbus_protocol::types::{DiskFormat, ObjectClass, PowerState, TaskStatus, VolumeSpec};
use hostbus_protocol::{
    decode, encode, now_ms, Announcement, Command, ContentType, ErrorCode, Event, EventAction,
    HeaderValue, Heartbeat, Reply, RosterAction,
};
use hostbus_tests::{
    call_in, command_props, commands_total, error_of, metric, named, ok, pool_name, small_vm,
    spawn_online, AgentProcess, AmqpPeer, RabbitNode, Received,
};

const WEB01: &str = "11111111-0000-4000-8000-000000000001";
const DB01: &str = "11111111-0000-4000-8000-000000000002";
const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_command_gets_its_reply() {
    let node = RabbitNode::start().expect("rabbit");
    let mut peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut online = peer.watch(names::EVENT_EXCHANGE, "*.agent.online").await;
    let agent = AgentProcess::builder("h1", &node.amqp_url())
        .label("gpu")
        .start();
    let h2 = AgentProcess::builder("h2", &node.amqp_url())
        .libvirt_uri(hostbus_tests::node_file_uri("h2"))
        .start();
    for _ in 0..2 {
        online
            .next(Duration::from_secs(60))
            .await
            .expect("agents online");
    }
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    let db: uuid::Uuid = DB01.parse().expect("uuid");

    // Reads.
    let pong = ok::<HostPing>(
        &mut peer,
        "h1",
        Ping {
            echo: Some("x".into()),
        },
    )
    .await;
    assert_eq!(
        (pong.host_id.as_str(), pong.echo.as_deref()),
        ("h1", Some("x"))
    );
    assert_eq!(
        ok::<HostInfo>(&mut peer, "h1", Empty {}).await.host_id,
        "h1"
    );
    assert!(!ok::<HostCapabilities>(&mut peer, "h1", Empty {})
        .await
        .commands
        .is_empty());
    assert_eq!(
        ok::<HostStatsGet>(&mut peer, "h1", Empty {})
            .await
            .vms_total,
        3
    );
    let inv = ok::<HostSnapshot>(&mut peer, "h1", Empty {}).await;
    assert!(
        inv.epoch.is_some() && inv.seq >= 1,
        "a served inventory carries the agent's epoch and seq"
    );
    assert_eq!(
        ok::<VmList>(&mut peer, "h1", VmListRequest { power_state: None })
            .await
            .vms
            .len(),
        3
    );
    assert_eq!(
        ok::<VmGet>(&mut peer, "h1", VmUuid { uuid: web })
            .await
            .name,
        "web01"
    );
    assert_eq!(
        ok::<VmGetByName>(&mut peer, "h1", named("db01")).await.uuid,
        db
    );
    assert!(
        ok::<VmStatsGet>(&mut peer, "h1", VmUuid { uuid: web })
            .await
            .cpu_time_ns
            > 0
    );
    assert!(ok::<SnapshotList>(&mut peer, "h1", VmUuid { uuid: web })
        .await
        .snapshots
        .is_empty());
    assert_eq!(
        ok::<PoolList>(&mut peer, "h1", Empty {}).await.pools.len(),
        2
    );
    assert_eq!(
        ok::<PoolGet>(&mut peer, "h1", named("iso")).await.volumes,
        1
    );
    assert_eq!(
        ok::<VolumeList>(&mut peer, "h1", pool_name("default"))
            .await
            .volumes
            .len(),
        3
    );
    ok::<VolumeGet>(
        &mut peer,
        "h1",
        VolumeKey {
            pool: "iso".into(),
            name: "debian-12.iso".into(),
        },
    )
    .await;
    assert_eq!(
        ok::<NetworkList>(&mut peer, "h1", Empty {})
            .await
            .networks
            .len(),
        2
    );
    ok::<NetworkGet>(&mut peer, "h1", named("default")).await;
    ok::<TaskList>(&mut peer, "h1", TaskListRequest { status: None }).await;

    // Changes.
    assert_eq!(
        ok::<VmStart>(
            &mut peer,
            "h1",
            VmStartRequest {
                uuid: db,
                paused: false
            }
        )
        .await
        .power_state,
        PowerState::Running
    );
    assert_eq!(
        ok::<VmPause>(&mut peer, "h1", VmUuid { uuid: db })
            .await
            .power_state,
        PowerState::Paused
    );
    ok::<SnapshotCreate>(
        &mut peer,
        "h1",
        SnapshotCreateRequest {
            vm: db,
            name: "s1".into(),
            description: String::new(),
        },
    )
    .await;
    assert_eq!(
        ok::<VmResume>(&mut peer, "h1", VmUuid { uuid: db })
            .await
            .power_state,
        PowerState::Running
    );
    let spec = VolumeSpec {
        name: "t.qcow2".into(),
        capacity_bytes: 1 << 30,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    };
    ok::<VolumeCreate>(
        &mut peer,
        "h1",
        VolumeCreateRequest {
            pool: "iso".into(),
            spec,
        },
    )
    .await;
    ok::<VolumeDelete>(
        &mut peer,
        "h1",
        VolumeKey {
            pool: "iso".into(),
            name: "t.qcow2".into(),
        },
    )
    .await;
    assert!(
        !ok::<NetworkStop>(&mut peer, "h1", named("storage-net"))
            .await
            .active
    );
    assert!(
        ok::<NetworkStart>(&mut peer, "h1", named("storage-net"))
            .await
            .active
    );

    // JSON in, JSON out.
    match call_in::<VmGet>(&mut peer, "h1", &VmUuid { uuid: web }, ContentType::Json).await {
        (r, Reply::Ok(vm)) => {
            assert_eq!(vm.name, "web01");
            assert_eq!(r.header_str(HOST_HEADER), Some("h1"));
            assert!(r.body.starts_with(b"{\"ok\""));
        }
        other => panic!("{other:?}"),
    }

    // Asynchronous: a task comes back at once, then finishes.
    let mut p = command_props(VmDefine::NAME, "guest", ContentType::MsgPack);
    p.headers.insert(
        hostbus_protocol::envelope::ASYNC_HEADER.into(),
        HeaderValue::Bool(true),
    );
    let spec = small_vm("async01", &["vda"]);
    let body = encode(ContentType::MsgPack, &VmDefineRequest { spec }).expect("encode");
    let r = peer
        .call(&host_key("h1"), &p, &body, T)
        .await
        .expect("async define");
    assert_eq!(r.header_str(STATUS_HEADER), Some("task"));
    let task = match decode::<Reply<hostbus_protocol::types::VmRecord>>(
        ContentType::MsgPack,
        &r.body,
        1 << 20,
    )
    .expect("decode")
    {
        Reply::Task(t) => t,
        other => panic!("{other:?}"),
    };
    let deadline = Instant::now() + T;
    loop {
        let t = ok::<TaskGet>(&mut peer, "h1", TaskId { id: task.id }).await;
        if t.status.is_final() {
            assert_eq!(t.status, TaskStatus::Success, "{t:?}");
            break;
        }
        assert!(Instant::now() < deadline, "task never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok::<VmGetByName>(&mut peer, "h1", named("async01")).await;

    // A cast gets no reply but runs.
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.reply_to = None;
    peer.publish_command(
        &host_key("h1"),
        &p,
        &encode(ContentType::MsgPack, &VmUuid { uuid: web }).expect("encode"),
    )
    .await
    .expect("cast");
    let deadline = Instant::now() + T;
    while ok::<VmGet>(&mut peer, "h1", VmUuid { uuid: web })
        .await
        .power_state
        != PowerState::Paused
    {
        assert!(Instant::now() < deadline, "the cast never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `all` and `group.<label>` reach the right agents.
    let p = command_props(HostPing::NAME, "guest", ContentType::MsgPack);
    let body = encode(ContentType::MsgPack, &Ping { echo: None }).expect("encode");
    let mut answered = Vec::new();
    let mut all = p.clone();
    all.reply_to = Some(names::DIRECT_REPLY_TO.into());
    all.correlation_id = all.message_id.clone();
    peer.consume_replies().await.expect("replies");
    peer.publish_command(names::ALL_KEY, &all, &body)
        .await
        .expect("broadcast");
    for _ in 0..2 {
        let r = peer.next_reply(T).await.expect("reply from each host");
        answered.push(r.header_str(HOST_HEADER).unwrap_or_default().to_owned());
    }
    answered.sort();
    assert_eq!(answered, ["h1", "h2"]);
    let r = peer
        .call(
            &names::group_key("gpu"),
            &command_props(HostPing::NAME, "guest", ContentType::MsgPack),
            &body,
            T,
        )
        .await
        .expect("group");
    assert_eq!(
        r.header_str(HOST_HEADER),
        Some("h1"),
        "only h1 carries the gpu label"
    );

    let m = agent.metrics_text();
    assert!(commands_total(&m, HostPing::NAME, "ok") >= 1, "{m}");
    assert!(
        metric(
            &m,
            "hostbus_command_duration_seconds_count{command=\"vm.start\"}"
        ) >= 1,
        "{m}"
    );
    drop(h2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_error_and_nothing_runs() {
    let node = RabbitNode::start().expect("rabbit");
    node.add_user("viewer", "viewer-pw").expect("viewer user");
    let (mut peer, _online, agent, _) = spawn_online(
        AgentProcess::builder("h1", &node.amqp_url())
            .env("HOSTBUS_ROLES", "guest=admin,viewer=read-only"),
    )
    .await;
    let key = host_key("h1");
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    let pause_body = encode(ContentType::MsgPack, &VmUuid { uuid: web }).expect("encode");

    let check = |r: &Received, code: ErrorCode| {
        let e = error_of(r);
        assert_eq!(e.code, code, "{e}");
        e
    };

    // Unknown command.
    let r = peer
        .call(
            &key,
            &command_props("vm.fly", "guest", ContentType::MsgPack),
            &pause_body,
            T,
        )
        .await
        .expect("reply");
    assert_eq!(
        check(&r, ErrorCode::UnknownCommand).param("command"),
        Some("vm.fly")
    );
    // Garbage, truncated and wrong-typed payloads.
    for body in [
        &b"\xc1\xff\x00garbage"[..],
        &pause_body[..pause_body.len() - 3],
        &encode(ContentType::MsgPack, &Ping { echo: None }).expect("encode"),
    ] {
        let r = peer
            .call(
                &key,
                &command_props(VmPause::NAME, "guest", ContentType::MsgPack),
                body,
                T,
            )
            .await
            .expect("reply");
        check(&r, ErrorCode::MalformedMessage);
    }
    let r = peer
        .call(
            &key,
            &command_props(VmPause::NAME, "guest", ContentType::Json),
            br#"{"uuid": 42}"#,
            T,
        )
        .await
        .expect("reply");
    check(&r, ErrorCode::MalformedMessage);
    // An invalid field is named.
    let bad = VmDetachNicRequest {
        uuid: web,
        mac: "not-a-mac".into(),
    };
    let r = peer
        .call(
            &key,
            &command_props(VmDetachNic::NAME, "guest", ContentType::MsgPack),
            &encode(ContentType::MsgPack, &bad).expect("encode"),
            T,
        )
        .await
        .expect("reply");
    assert_eq!(
        check(&r, ErrorCode::InvalidArgument).param("field"),
        Some("mac")
    );
    // Oversized.
    let big = vec![0x90u8; 2 << 20];
    let r = peer
        .call(
            &key,
            &command_props(VmPause::NAME, "guest", ContentType::MsgPack),
            &big,
            T,
        )
        .await
        .expect("reply");
    check(&r, ErrorCode::PayloadTooLarge);
    // A foreign major version, a foreign encoding, a missing message id.
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.headers
        .insert(VERSION_HEADER.into(), HeaderValue::Str("2.0".into()));
    check(
        &peer.call(&key, &p, &pause_body, T).await.expect("reply"),
        ErrorCode::UnsupportedVersion,
    );
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.content_type = Some("application/xml".into());
    check(
        &peer.call(&key, &p, &pause_body, T).await.expect("reply"),
        ErrorCode::UnsupportedContentType,
    );
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.message_id = None;
    p.correlation_id = Some("corr-1".into());
    let r = peer.call(&key, &p, &pause_body, T).await.expect("reply");
    assert_eq!(
        check(&r, ErrorCode::BadEnvelope).param("property"),
        Some("message_id")
    );
    assert_eq!(r.properties.correlation_id.as_deref(), Some("corr-1"));
    // An expired deadline (no broker expiration, so the agent sees it).
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.expiration = None;
    p.headers.insert(
        DEADLINE_HEADER.into(),
        HeaderValue::Int(i64::try_from(now_ms()).expect("now") - 1000),
    );
    check(
        &peer.call(&key, &p, &pause_body, T).await.expect("reply"),
        ErrorCode::Expired,
    );

    // No user_id: refused before anything runs.
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.user_id = None;
    let e = check(
        &peer.call(&key, &p, &pause_body, T).await.expect("reply"),
        ErrorCode::PermissionDenied,
    );
    assert_eq!(e.param("command"), Some("vm.pause"));
    // A read-only user may read but not operate.
    let mut viewer = AmqpPeer::connect(&node.url_for("viewer", "viewer-pw"))
        .await
        .expect("viewer peer");
    let mut p = command_props(VmPause::NAME, "guest", ContentType::MsgPack);
    p.user_id = Some("viewer".into());
    let e = check(
        &viewer.call(&key, &p, &pause_body, T).await.expect("reply"),
        ErrorCode::PermissionDenied,
    );
    assert_eq!(e.param("user"), Some("viewer"));
    let mut p = command_props(VmGet::NAME, "guest", ContentType::MsgPack);
    p.user_id = Some("viewer".into());
    let r = viewer.call(&key, &p, &pause_body, T).await.expect("reply");
    assert_eq!(r.header_str(STATUS_HEADER), Some("ok"), "reads are allowed");

    // None of the refused pauses ran, and the agent is alive.
    assert_eq!(
        ok::<VmGet>(&mut peer, "h1", VmUuid { uuid: web })
            .await
            .power_state,
        PowerState::Running
    );
    let m = agent.metrics_text();
    assert!(m.contains("outcome=\"EXPIRED\""), "{m}");
    assert!(m.contains("outcome=\"UNKNOWN_COMMAND\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_growing_sequence_numbers_and_heartbeats_arrive() {
    let node = RabbitNode::start().expect("rabbit");
    let mut peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.#").await;
    let mut beats = peer.watch(names::PRESENCE_EXCHANGE, "h1.heartbeat").await;
    let mut roster = peer.watch(names::PRESENCE_EXCHANGE, "h1.online").await;
    let _agent = AgentProcess::builder("h1", &node.amqp_url())
        .label("rack-a")
        .heartbeat_interval(Duration::from_millis(300))
        .start();
    let ev =
        |r: &Received| decode::<Event>(ContentType::MsgPack, &r.body, 64 << 20).expect("event");

    let online = ev(&events.next(Duration::from_secs(60)).await.expect("online"));
    assert_eq!(
        (online.class, online.action, online.seq),
        (ObjectClass::Agent, EventAction::Online, 1)
    );
    let inv = online
        .inventory
        .expect("agent.online carries the inventory");
    assert_eq!(inv.vms.len(), 3);
    assert_eq!((inv.epoch, inv.seq), (Some(online.epoch), 1));

    let db: uuid::Uuid = DB01.parse().expect("uuid");
    ok::<VmStart>(
        &mut peer,
        "h1",
        VmStartRequest {
            uuid: db,
            paused: false,
        },
    )
    .await;
    ok::<VmPause>(&mut peer, "h1", VmUuid { uuid: db }).await;
    ok::<VmResume>(&mut peer, "h1", VmUuid { uuid: db }).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = events.next(T).await.expect("event");
        let e = ev(&r);
        assert_eq!(r.routing_key, e.routing_key());
        assert_eq!(e.epoch, online.epoch);
        if e.object_id == DB01 {
            seen.push(e);
        }
    }
    let actions: Vec<EventAction> = seen.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            EventAction::Started,
            EventAction::Paused,
            EventAction::Resumed
        ]
    );
    assert!(
        seen.windows(2)
            .all(|w| w[1].seq > w[0].seq && w[1].generation > w[0].generation),
        "{seen:?}"
    );
    assert!(seen[0].seq > online.seq);

    let hb: Vec<Heartbeat> = beats
        .collect_for(Duration::from_millis(1500))
        .await
        .expect("heartbeats")
        .iter()
        .map(|r| decode(ContentType::MsgPack, &r.body, 1 << 20).expect("heartbeat"))
        .collect();
    assert!(hb.len() >= 3, "{} heartbeats in 1.5 s at 300 ms", hb.len());
    let last = hb.last().expect("one");
    assert_eq!(
        (last.host_id.as_str(), last.epoch, last.interval_ms),
        ("h1", online.epoch, 300)
    );
    assert_eq!(last.labels, ["rack-a"]);
    assert!(last.health.hypervisor_connected);
    assert!(last.last_seq >= seen[2].seq);
    // The command list is in the roster announcement, not in every beat.
    assert!(last.capabilities.is_empty());
    let a: Announcement = decode(
        ContentType::MsgPack,
        &roster
            .next(Duration::from_secs(10))
            .await
            .expect("announcement")
            .body,
        1 << 20,
    )
    .expect("announcement");
    assert_eq!(
        (a.host_id.as_str(), a.action, a.epoch, a.interval_ms),
        ("h1", RosterAction::Online, Some(online.epoch), 300)
    );
    assert_eq!(a.labels, ["rack-a"]);
    assert!(a.capabilities.iter().any(|c| c == "vm.start"));
}

/// At the production heartbeat interval (5 s) the first heartbeat is what
/// a manager, or `hostctl hosts` in a fresh process, sees for five seconds
/// after an agent (re)starts: its load must be the host's, not zeros (it
/// said `vms_active: 0` and `memory_free_kib: 0` before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_heartbeat_reports_the_hosts_load() {
    let node = RabbitNode::start().expect("rabbit");
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.agent.online").await;
    let mut beats = peer.watch(names::PRESENCE_EXCHANGE, "h1.heartbeat").await;
    let _agent = AgentProcess::builder("h1", &node.amqp_url()).start();
    let online = events.next(Duration::from_secs(60)).await.expect("online");
    let online: Event = decode(ContentType::MsgPack, &online.body, 64 << 20).expect("event");
    let inv = online.inventory.expect("inventory");
    let active = inv
        .vms
        .iter()
        .filter(|v| matches!(v.power_state, PowerState::Running | PowerState::Paused))
        .count();
    assert!(active > 0, "the h1 inventory runs a VM");
    let first = beats.next(T).await.expect("first heartbeat");
    let hb: Heartbeat = decode(ContentType::MsgPack, &first.body, 1 << 20).expect("heartbeat");
    assert_eq!(hb.interval_ms, 5000, "production default");
    assert_eq!(hb.load.vms_active as usize, active, "{hb:?}");
    assert!(hb.load.memory_free_kib > 0, "{hb:?}");
    assert!(!hb.versions.libvirt.is_empty(), "{hb:?}");
}

const ONLINE_AGAIN: &str = "test.online-again";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived_and_queued_commands_are_answered() {
    let mut node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let mut agent = AgentProcess::builder("h1", &url)
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "2000")
        .start();
    {
        let mut peer = AmqpPeer::connect(&url).await.expect("peer");
        let mut online = peer.watch(names::EVENT_EXCHANGE, "h1.agent.online").await;
        online.next(Duration::from_secs(60)).await.expect("online");
        ok::<HostPing>(&mut peer, "h1", Ping { echo: None }).await;
        // A durable queue for the agent.online that follows the restart: the
        // agent may be back before a subscription made after the restart is.
        let ch = peer.channel();
        ch.queue_declare(
            ONLINE_AGAIN.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare");
        ch.queue_bind(
            ONLINE_AGAIN.into(),
            names::EVENT_EXCHANGE.into(),
            "h1.agent.online".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    node.stop().expect("stop broker");
    node.start_again().expect("start broker");
    // Publish at once, before the agent is back: the commands wait in its durable queue.
    let mut peer = AmqpPeer::connect(&url).await.expect("peer after restart");
    peer.consume_replies().await.expect("replies");
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut p = command_props(HostPing::NAME, "guest", ContentType::MsgPack);
        p.reply_to = Some(names::DIRECT_REPLY_TO.into());
        p.correlation_id = p.message_id.clone();
        ids.push(p.message_id.clone().expect("id"));
        let body = encode(
            ContentType::MsgPack,
            &Ping {
                echo: Some(format!("q{i}")),
            },
        )
        .expect("encode");
        peer.publish_command(&host_key("h1"), &p, &body)
            .await
            .expect("publish");
    }
    let mut answered = Vec::new();
    while answered.len() < ids.len() {
        let r = peer
            .next_reply(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
        answered.push(r.properties.correlation_id.clone().expect("correlation"));
    }
    answered.sort();
    ids.sort();
    assert_eq!(answered, ids, "every queued command answered exactly once");
    let waited = Instant::now();
    let body = loop {
        let got = peer
            .channel()
            .basic_get(
                ONLINE_AGAIN.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        if let Some(m) = got {
            break m.delivery.data;
        }
        assert!(waited.elapsed() < T, "no agent.online after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let again = decode::<Event>(ContentType::MsgPack, &body, 64 << 20).expect("event");
    assert!(
        again.inventory.is_some(),
        "a fresh snapshot after reconnecting"
    );
    assert!(agent.is_running());
    agent.assert_logged("reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work() {
    let node = RabbitNode::start().expect("rabbit");
    let mut peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.agent.*").await;
    let mut agent = AgentProcess::builder("h1", &node.amqp_url())
        .env("HOSTBUS_STEP_PAUSE_MS", "500")
        .start();
    events.next(Duration::from_secs(60)).await.expect("online");
    // vm.define with three new volumes takes four steps of 500 ms.
    let spec = small_vm("drain01", &["vda", "vdb", "vdc"]);
    let mut p = command_props(VmDefine::NAME, "guest", ContentType::MsgPack);
    p.reply_to = Some(names::DIRECT_REPLY_TO.into());
    p.correlation_id = p.message_id.clone();
    peer.consume_replies().await.expect("replies");
    peer.publish_command(
        &host_key("h1"),
        &p,
        &encode(ContentType::MsgPack, &VmDefineRequest { spec }).expect("encode"),
    )
    .await
    .expect("publish");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent = Instant::now();
    agent.terminate().expect("SIGTERM");
    let r = peer
        .next_reply(T)
        .await
        .expect("the in-flight command is answered");
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "the reply came after the drain, not before the signal"
    );
    match decode::<Reply<hostbus_protocol::types::VmRecord>>(ContentType::MsgPack, &r.body, 1 << 20)
        .expect("decode")
    {
        Reply::Ok(vm) => assert_eq!((vm.name.as_str(), vm.disks.len()), ("drain01", 3)),
        other => panic!("{other:?}"),
    }
    let status = agent.wait_exit(T).expect("the agent exits");
    assert!(status.success(), "{status:?}\n{}", agent.log_tail(20));
    let offline = events.next(T).await.expect("offline");
    let e = decode::<Event>(ContentType::MsgPack, &offline.body, 1 << 20).expect("event");
    assert_eq!(e.action, EventAction::Offline);
}

#[test]
fn invalid_configuration_exits_64_naming_the_field() {
    let bin = hostbus_tests::agent_binary().expect("agent binary");
    let out = std::process::Command::new(bin)
        .env("HOSTBUS_CONCURRENCY", "0")
        .env("HOSTBUS_METRICS_ADDR", "off")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`concurrency`"), "{err}");
    let out = std::process::Command::new(hostbus_tests::agent_binary().expect("bin"))
        .args(["--host-id", "Not_Valid"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`host_id`"));
}
