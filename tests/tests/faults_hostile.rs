//! Hostile messages: ten thousand malformed, oversized and unauthorized
//! commands are answered or dead-lettered in flat memory, messages no
//! client library could produce (written frame by frame) are answered and
//! the agent serves on, and a poison reply address costs at most one
//! session. What they show is written down in docs/security.md ("No single
//! message stops an agent"). Figures (memory, dead letters) are printed;
//! run with `--nocapture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::VERSION_HEADER;
use hostbus_protocol::names::{self, host_key};
use hostbus_protocol::{
    encode, now_ms, AmqpProperties, Command, ContentType, Envelope, HeaderValue,
};
use hostbus_tests::faults::{
    command, h1_online, next_reply_for, reply_queue, take_dead_letter, RAW_REPLIES,
};
use hostbus_tests::{
    commands_total, consume_no_ack, declare_queue, long_str, metric, nested_table, ok, reply_error,
    spawn_online, table, to_lapin, AgentProcess, AmqpPeer, QueueKind, RabbitNode, RawOutcome,
    RawProperties, RawProperty, RawPublisher, Received,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};

const WEB01: &str = "11111111-0000-4000-8000-000000000001";
const T: Duration = Duration::from_secs(15);

/// The sum of every series of metric `name`, whatever its labels.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// xorshift64*: reproducible noise without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// One hostile message: what to send and what must come of it.
struct Hostile {
    props: AmqpProperties,
    body: Vec<u8>,
    /// The error code of the reply (when `reply_to` is set).
    code: &'static str,
    /// Whether it must land in `hostbus.dead-letter`.
    dead: bool,
}

fn hostile(i: usize, rng: &mut Rng, reply_to: &str) -> Hostile {
    let web01: uuid::Uuid = WEB01.parse().expect("uuid");
    let valid = encode(ContentType::MsgPack, &VmUuid { uuid: web01 }).expect("encode");
    let base = |command: &str| {
        let mut env = Envelope::new(command);
        env.sender = Some("guest".into());
        env.to_properties(now_ms())
    };
    let (mut props, body, code, dead) = if i.is_multiple_of(997) {
        // Over the 1 MiB limit.
        let n = (1 << 20) + 1 + rng.below(2 << 20) as usize;
        (base(VmPause::NAME), rng.bytes(n), "PAYLOAD_TOO_LARGE", true)
    } else {
        match i % 12 {
            0 | 1 => {
                let n = rng.below(300) as usize + 1;
                (base(VmPause::NAME), rng.bytes(n), "MALFORMED_MESSAGE", true)
            }
            2 => {
                let cut = rng.below(valid.len() as u64 - 1) as usize + 1;
                (
                    base(VmPause::NAME),
                    valid[..cut].to_vec(),
                    "MALFORMED_MESSAGE",
                    true,
                )
            }
            3 => {
                // Well-formed, but another command's request.
                let body = encode(
                    ContentType::MsgPack,
                    &Ping {
                        echo: Some("x".repeat(rng.below(64) as usize)),
                    },
                )
                .expect("encode");
                (base(VmStart::NAME), body, "MALFORMED_MESSAGE", true)
            }
            4 => {
                let mut p = base(VmPause::NAME);
                p.content_type = Some(ContentType::Json.as_str().to_owned());
                let body = match rng.below(3) {
                    0 => br#"{"uuid": 42}"#.to_vec(),
                    1 => br#"{"uuid": ["not", "a", "uuid"]}"#.to_vec(),
                    _ => {
                        format!("{{\"uuid\": \"{}", "z".repeat(rng.below(50) as usize)).into_bytes()
                    }
                };
                (p, body, "MALFORMED_MESSAGE", true)
            }
            5 => (
                base(&format!("vm.fly{}", rng.below(1000))),
                valid.clone(),
                "UNKNOWN_COMMAND",
                true,
            ),
            6 => {
                let mut p = base(VmPause::NAME);
                p.message_id = None;
                (p, valid.clone(), "BAD_ENVELOPE", true)
            }
            7 => {
                let mut p = base(VmPause::NAME);
                p.headers.remove(VERSION_HEADER);
                (p, valid.clone(), "BAD_ENVELOPE", true)
            }
            8 => {
                let mut p = base(VmPause::NAME);
                p.headers
                    .insert(VERSION_HEADER.into(), HeaderValue::Str("9.0".into()));
                (p, valid.clone(), "UNSUPPORTED_VERSION", true)
            }
            9 => {
                let mut p = base(VmPause::NAME);
                p.content_type = Some("application/xml".into());
                (p, valid.clone(), "UNSUPPORTED_CONTENT_TYPE", true)
            }
            10 => {
                // No user: refused before decoding, answered, not dead-lettered.
                let mut p = base(VmPause::NAME);
                p.user_id = None;
                (p, rng.bytes(16), "PERMISSION_DENIED", false)
            }
            _ => {
                // Decodes, but a field is invalid: answered, not dead-lettered.
                let req = VmDetachNicRequest {
                    uuid: web01,
                    mac: format!("not-a-mac-{}", rng.below(1000)),
                };
                (
                    base(VmDetachNic::NAME),
                    encode(ContentType::MsgPack, &req).expect("encode"),
                    "INVALID_ARGUMENT",
                    false,
                )
            }
        }
    };
    // Every tenth dead-lettered message is a cast (no reply expected).
    props.correlation_id = Some(format!("hostile-{i}"));
    if !(dead && i % 10 == 3) {
        props.reply_to = Some(reply_to.to_owned());
    }
    Hostile {
        props,
        body,
        code,
        dead,
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    hostbus_tests::rss_kib(pid).expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_messages_are_answered_or_dead_lettered_in_flat_memory() {
    const N: usize = 10_000;
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let (mut peer, _events, mut agent, _) = spawn_online(AgentProcess::builder("h1", &url)).await;
    ok::<HostPing>(&mut peer, "h1", &Ping { echo: None }).await;
    let pid = agent.pid().expect("pid");
    let rss_before = vm_rss_kib(pid);

    // A reply queue of our own, consumed without acks.
    let ch = peer.connection().create_channel().await.expect("channel");
    let q = declare_queue(&ch, "", QueueKind::Exclusive)
        .await
        .expect("reply queue");
    let reply_queue = q.name().as_str().to_owned();
    let mut consumer = consume_no_ack(&ch, &reply_queue)
        .await
        .expect("consume replies");

    let mut rng = Rng(0x5EED_0000_0000_0001);
    let msgs: Vec<Hostile> = (0..N).map(|i| hostile(i, &mut rng, &reply_queue)).collect();
    let expected_replies: BTreeMap<String, &'static str> = msgs
        .iter()
        .filter(|m| m.props.reply_to.is_some())
        .map(|m| (m.props.correlation_id.clone().expect("corr"), m.code))
        .collect();
    let expected_dead = msgs.iter().filter(|m| m.dead).count();
    let oversized = msgs.iter().filter(|m| m.body.len() > 1 << 20).count();
    let casts = msgs.iter().filter(|m| m.props.reply_to.is_none()).count();
    println!(
        "{N} messages: {} with reply_to, {casts} casts, {oversized} over 1 MiB, {expected_dead} to be dead-lettered",
        expected_replies.len()
    );

    let started = Instant::now();
    let publisher = {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("publisher");
        let pch = conn.create_channel().await.expect("channel");
        pch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        tokio::spawn(async move {
            for chunk in msgs.chunks(500) {
                let mut confirms = Vec::with_capacity(chunk.len());
                for m in chunk {
                    confirms.push(
                        pch.basic_publish(
                            names::COMMAND_EXCHANGE.into(),
                            host_key("h1").as_str().into(),
                            BasicPublishOptions::default(),
                            &m.body,
                            to_lapin(&m.props),
                        )
                        .await
                        .expect("publish"),
                    );
                }
                for c in confirms {
                    assert!(c.await.expect("confirm").is_ack(), "the broker refused");
                }
            }
            let _ = conn.close(200, "done".into()).await;
        })
    };

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < expected_replies.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!(
                "{} of {} replies after {:?}: {other:?}\n{}",
                seen.len(),
                expected_replies.len(),
                started.elapsed(),
                agent.log_tail(20)
            ),
        };
        let r = Received::from_delivery(d);
        let corr = r.properties.correlation_id.clone().unwrap_or_default();
        let e = reply_error(&r).unwrap_or_else(|| panic!("{corr}: not an error reply"));
        let want = expected_replies
            .get(&corr)
            .unwrap_or_else(|| panic!("a reply to {corr:?}, which expects none"));
        assert_eq!(e.code.as_str(), *want, "{corr}: {e}");
        assert!(seen.insert(corr.clone()), "{corr} answered twice");
        *codes.entry(e.code.as_str().to_owned()).or_default() += 1;
    }
    publisher.await.expect("publisher");
    let replies_done = started.elapsed();

    // Everything to be dead-lettered is in hostbus.dead-letter.
    let dl = peer.connection().create_channel().await.expect("channel");
    let dead = loop {
        let q = declare_queue(&dl, names::DEAD_LETTER_QUEUE, QueueKind::Passive)
            .await
            .expect("passive declare");
        let n = q.message_count() as usize;
        if n >= expected_dead || started.elapsed() > Duration::from_secs(150) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "replies {} (by code {codes:?}) in {replies_done:?}; dead letters {dead}",
        seen.len()
    );
    assert_eq!(dead, expected_dead, "dead-lettered messages");
    let m = agent.metrics_text();
    assert_eq!(
        metric_sum(&m, "hostbus_dead_lettered_total") as usize,
        expected_dead,
        "{m}"
    );
    let (_one, props) = take_dead_letter(&dl, "a dead letter").await;
    let header = |k: &str| match props.headers.get(k) {
        Some(HeaderValue::Str(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(header("x-hostbus-dead-host"), "h1");
    assert!(!header("x-hostbus-dead-reason").is_empty());
    assert!(!header("x-hostbus-dead-code").is_empty());

    // Alive, and memory stayed flat.
    assert!(agent.is_running(), "{}", agent.log_tail(30));
    ok::<HostPing>(&mut peer, "h1", &Ping { echo: None }).await;
    let rss_after = vm_rss_kib(pid);
    println!(
        "agent VmRSS before {} KiB, after {} KiB (+{} KiB)",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(agent.pid(), Some(pid), "the same process throughout");
}

// No message stops an agent (issue 12). Messages that no well-behaved client
// can produce are written frame by frame with the harness's raw publisher.

/// A raw command: every property valid but what the caller changes.
fn raw_command(kind: &[u8]) -> (String, RawProperties) {
    let id = uuid::Uuid::new_v4().to_string();
    let props = RawProperties::default()
        .short(RawProperty::MessageId, id.as_bytes())
        .short(RawProperty::CorrelationId, id.as_bytes())
        .short(RawProperty::Type, kind)
        .short(RawProperty::ReplyTo, RAW_REPLIES.as_bytes())
        .short(RawProperty::UserId, b"guest")
        .set(RawProperty::Headers, version_table(&[]));
    (id, props)
}

/// A header table with the protocol version and `extra` entries.
fn version_table(extra: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut version = vec![b'S'];
    version.extend_from_slice(&long_str(b"1.0"));
    let mut entries: Vec<(&[u8], Vec<u8>)> = vec![(VERSION_HEADER.as_bytes(), version)];
    entries.extend(extra.iter().cloned());
    table(&entries)
}

/// Messages in the dead-letter queue now.
async fn dead_letters(peer: &AmqpPeer) -> u32 {
    let ch = peer.connection().create_channel().await.expect("channel");
    let q = declare_queue(&ch, names::DEAD_LETTER_QUEUE, QueueKind::Passive)
        .await
        .expect("passive declare");
    let _ = ch.close(200, "done".into()).await;
    q.message_count()
}

/// Issue 12, finding 1: a short string that is not UTF-8 (in `type`,
/// `message_id`, `content_type` or a header name) made lapin fail the whole
/// frame; the agent reconnected, the broker redelivered, for ever. A header
/// table nested fifteen thousand deep overflowed the stack and aborted the
/// agent. A version header of another type was refused as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_no_client_library_could_parse_are_answered_and_the_agent_serves_on() {
    let (node, mut peer, _events, agent) =
        h1_online(|b| b.heartbeat_interval(Duration::from_secs(5))).await;
    let mut replies = reply_queue(&peer, RAW_REPLIES).await;
    let dead_before = dead_letters(&peer).await;
    let ping = encode(ContentType::MsgPack, &Ping { echo: None }).expect("encode");

    let deep = {
        let mut v = vec![b'F'];
        v.extend_from_slice(&nested_table(15_000));
        v
    };
    let cases: Vec<(&str, RawProperties, &str, bool)> = vec![
        (
            "type not UTF-8",
            raw_command(b"host.\xff\xfe").1,
            "UNKNOWN_COMMAND",
            true,
        ),
        (
            "message_id not UTF-8",
            raw_command(b"host.ping")
                .1
                .short(RawProperty::MessageId, b"\xff\xfe"),
            "BAD_ENVELOPE",
            true,
        ),
        (
            "content_type not UTF-8",
            raw_command(b"host.ping")
                .1
                .short(RawProperty::ContentType, b"\xc3"),
            "UNSUPPORTED_CONTENT_TYPE",
            true,
        ),
        (
            "a header name not UTF-8",
            raw_command(b"host.ping").1.set(
                RawProperty::Headers,
                version_table(&[(b"\xff\xfe", vec![b't', 1])]),
            ),
            "ok",
            false,
        ),
        (
            "a header nested fifteen thousand deep",
            raw_command(b"host.ping")
                .1
                .set(RawProperty::Headers, version_table(&[(b"x-deep", deep)])),
            "ok",
            false,
        ),
        (
            "a version header that is a table",
            raw_command(b"host.ping").1.set(
                RawProperty::Headers,
                table(&[(VERSION_HEADER.as_bytes(), {
                    let mut v = vec![b'F'];
                    v.extend_from_slice(&table(&[]));
                    v
                })]),
            ),
            "BAD_ENVELOPE",
            true,
        ),
    ];
    let mut raw = RawPublisher::connect(node.port(), "guest", "guest")
        .await
        .expect("raw publisher");
    let expected_dead = cases.iter().filter(|c| c.3).count() as u32;
    for (what, props, want, _) in &cases {
        let id = uuid::Uuid::new_v4().to_string();
        // The correlation id stays valid so the reply can be matched.
        let props = props
            .clone()
            .short(RawProperty::CorrelationId, id.as_bytes());
        let out = raw
            .publish(names::COMMAND_EXCHANGE, &host_key("h1"), &props, &ping, T)
            .await
            .expect("publish");
        assert_eq!(out, RawOutcome::Ack, "{what}: the broker took it");
        let r = next_reply_for(&mut replies, &id).await;
        let got = reply_error(&r).map_or("ok".to_owned(), |e| {
            if *want == "BAD_ENVELOPE" && what.contains("version") {
                assert_eq!(e.param("reason"), Some("is not `<major>.<minor>`"), "{e}");
            }
            e.code.as_str().to_owned()
        });
        println!("{what}: answered {got}");
        assert_eq!(got, *want, "{what}");
        // And the agent serves the next command at once.
        ok::<HostPing>(&mut peer, "h1", &Ping { echo: None }).await;
    }
    let deadline = Instant::now() + T;
    while dead_letters(&peer).await < dead_before + expected_dead && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead_letters(&peer).await, dead_before + expected_dead);
    let m = agent.metrics_text();
    assert_eq!(metric(&m, "hostbus_reconnects_total"), 0, "{m}");
    assert!(
        !agent.log().contains("broker connection lost"),
        "{}",
        agent.log_tail(30)
    );
}

/// Issue 12, findings 2 and 3: a poison `reply_to` made RabbitMQ close the
/// agent's connection on every reply; the agent kept replying before acking
/// (hundreds of deliveries) and reconnected within milliseconds. Now an
/// address the broker could not have issued is refused without a reply,
/// and one that looks right costs the session once on RabbitMQ 3.10: the
/// redelivery is answered on the reply lane, which the broker closes
/// instead, and the command is dead-lettered. RabbitMQ 4.0 drops a reply to
/// such an address quietly (`rabbit_direct_reply_to:decode_reply_to_v2/2`
/// returns an error instead of crashing the channel): the command runs once,
/// is acked, and no session is lost at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_reply_address_is_dead_lettered_after_at_most_one_lost_session() {
    let (node, mut peer, _events, agent) =
        h1_online(|b| b.heartbeat_interval(Duration::from_secs(5))).await;
    // Whether the broker closes a connection that replies to a well-formed
    // direct reply-to address of no node (3.10) or drops the reply (4.0).
    let closes = node.version().is_none_or(|v| v.major < 4);
    let dead_before = dead_letters(&peer).await;

    // Garbage after the prefix: refused at once, no reply, no lost session.
    let garbage = command::<HostPing>(&Ping { echo: None }, "amq.rabbitmq.reply-to.abc.def");
    peer.publish_command(&host_key("h1"), &garbage.props, &garbage.body)
        .await
        .expect("publish");
    // A well-formed address of a node that does not exist, on a change: it
    // runs once; on 3.10 its reply costs the session once, then it is
    // dead-lettered; on 4.0 its reply is dropped and it is acked.
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    let forged = command::<VmSetMemory>(
        &VmSetMemoryRequest {
            uuid: web,
            memory_kib: 777 * 1024,
        },
        &hostbus_amqp::reply_to::forged_direct_reply_to(),
    );
    peer.publish_command(&host_key("h1"), &forged.props, &forged.body)
        .await
        .expect("publish");

    let expected_dead = if closes { 2 } else { 1 };
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead_letters(&peer).await < dead_before + expected_dead && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // They are there, once each, and nothing more piles up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        dead_letters(&peer).await,
        dead_before + expected_dead,
        "{}",
        agent.log_tail(30)
    );
    let vm = ok::<VmGet>(&mut peer, "h1", &VmUuid { uuid: web }).await;
    assert_eq!(vm.memory_kib, 777 * 1024, "the change ran");
    let m = agent.metrics_text();
    assert_eq!(
        commands_total(&m, VmSetMemory::NAME, "ok"),
        1,
        "ran once, then answered from the journal: {m}"
    );
    let lost = agent.log().matches("broker connection lost").count();
    println!("sessions lost to the poison reply addresses: {lost}");
    let most_lost = u64::from(closes);
    assert!(lost as u64 <= most_lost, "{}", agent.log_tail(30));
    assert!(metric(&m, "hostbus_reconnects_total") <= most_lost, "{m}");
    ok::<HostPing>(&mut peer, "h1", &Ping { echo: None }).await;
}
