//! The steps the fault suites (`tests/tests/faults_*.rs`) share: commands
//! published as a third party publishes them, with chosen ids, deadlines
//! and reply queues ([`Sent`], [`command`]); their replies collected by
//! correlation id and checked ([`collect_replies`], [`replies_for`],
//! [`check_replies`]); dead letters; agent `h1` online on a node of its own
//! ([`h1_online`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_protocol::commands::{VmDefineRequest, VmList, VmListRequest, VolumeList};
use hostbus_protocol::envelope::STATUS_HEADER;
use hostbus_protocol::names;
use hostbus_protocol::types::VmRecord;
use hostbus_protocol::{
    decode, encode, now_ms, AmqpProperties, Command, ContentType, Envelope, Reply,
};
use hostbus_testkit::{pool_name, small_vm};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::agent::{AgentBuilder, AgentProcess};
use crate::amqp::{
    consume_no_ack, declare_queue, from_lapin, AmqpPeer, QueueKind, Received, Subscription,
};
use crate::calls::{ok, reply_error};
use crate::online::spawn_online;
use crate::rabbit::RabbitNode;

/// How long [`replies_for`] waits.
const T: Duration = Duration::from_secs(15);

/// A command as published: its id (also the correlation id), name,
/// properties and body, and whether it changes anything (journaled).
#[derive(Debug, Clone)]
pub struct Sent {
    /// The command id, also its correlation id.
    pub id: String,
    /// The command's name.
    pub command: &'static str,
    /// Its properties.
    pub props: AmqpProperties,
    /// Its body (MessagePack).
    pub body: Vec<u8>,
    /// Whether it changes anything (and is journaled).
    pub changing: bool,
}

/// A command `C` from `guest` (an admin by default), without a deadline (so
/// nothing expires while a broker or agent is down), replying to `reply_to`.
pub fn command<C: Command>(req: &C::Request, reply_to: &str) -> Sent {
    command_due::<C>(req, reply_to, None)
}

/// [`command`], due within `within_ms` milliseconds from now when given.
pub fn command_due<C: Command>(req: &C::Request, reply_to: &str, within_ms: Option<u64>) -> Sent {
    let mut env = Envelope::new(C::NAME);
    env.sender = Some("guest".into());
    env.reply_to = Some(reply_to.to_owned());
    env.correlation_id = Some(env.command_id.to_string());
    env.deadline = within_ms.map(|ms| now_ms() + ms);
    Sent {
        id: env.command_id.to_string(),
        command: C::NAME,
        props: env.to_properties(now_ms()),
        body: encode(ContentType::MsgPack, req).expect("encode"),
        changing: C::ACCESS != hostbus_protocol::Access::Read,
    }
}

/// `vm.define` of [`small_vm`] `name` with `disks` (0 to 3) new disks.
pub fn define_request(name: &str, disks: usize) -> VmDefineRequest {
    VmDefineRequest {
        spec: small_vm(name, &["vda", "vdb", "vdc"][..disks]),
    }
}

/// Declares a durable, non-exclusive reply queue (it survives a broker
/// restart; the agent publishes replies persistent).
pub async fn declare_reply_queue(url: &str, name: &str) {
    let peer = AmqpPeer::connect(url).await.expect("peer");
    declare_queue(peer.channel(), name, QueueKind::Durable)
        .await
        .expect("declare the reply queue");
    let _ = peer.close().await;
}

/// Consumes `queue` (acking each reply) until every id in `ids` has a reply
/// (within `secs.0` seconds), then `secs.1` seconds longer to catch late
/// duplicates. Replies by correlation id, in arrival order.
pub async fn collect_replies(
    url: &str,
    queue: &str,
    ids: &BTreeSet<String>,
    secs: (u64, u64),
    agent: &AgentProcess,
) -> BTreeMap<String, Vec<Received>> {
    let (timeout, grace) = (Duration::from_secs(secs.0), Duration::from_secs(secs.1));
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume the reply queue");
    let mut replies: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_until: Option<Instant> = None;
    loop {
        let answered = ids.iter().filter(|id| replies.contains_key(*id)).count();
        if answered == ids.len() && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + grace);
        }
        let until = quiet_until.unwrap_or(deadline);
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack a reply");
                let r = Received::from_delivery(d);
                let corr = r.properties.correlation_id.clone().unwrap_or_default();
                replies.entry(corr).or_default().push(r);
            }
            Ok(other) => panic!("the reply consumer ended: {other:?}"),
            Err(_) if quiet_until.is_some() => break,
            Err(_) => {
                let missing: Vec<&String> =
                    ids.iter().filter(|id| !replies.contains_key(*id)).collect();
                panic!(
                    "{} of {} commands unanswered after {timeout:?}: {missing:?}\n{}",
                    missing.len(),
                    ids.len(),
                    agent.log_tail(60)
                );
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    replies
}

/// The VM record of an `ok` reply in MessagePack; panics on any other.
pub fn vm_of(r: &Received) -> VmRecord {
    match decode::<Reply<VmRecord>>(ContentType::MsgPack, &r.body, 64 << 20) {
        Ok(Reply::Ok(vm)) => vm,
        other => panic!("expected a VM record, got {other:?}"),
    }
}

/// Checks that every command got only `ok` replies and that repeated
/// replies to a changing command are byte-identical. Returns how many ids
/// got more than one reply, and the extra deliveries.
pub fn check_replies(sent: &[Sent], replies: &BTreeMap<String, Vec<Received>>) -> (usize, usize) {
    let mut ids_with_duplicates = 0;
    let mut extra = 0;
    for s in sent {
        let rs = &replies[&s.id];
        for r in rs {
            assert_eq!(
                r.header_str(STATUS_HEADER),
                Some("ok"),
                "{} {}: {:?}",
                s.command,
                s.id,
                reply_error(r)
            );
        }
        if rs.len() > 1 {
            ids_with_duplicates += 1;
            extra += rs.len() - 1;
            println!(
                "  {} {} answered {} times (changing: {})",
                s.command,
                s.id,
                rs.len(),
                s.changing
            );
            if s.changing {
                assert!(
                    rs.iter().all(|r| r.body == rs[0].body),
                    "the replies to changing command {} {} differ",
                    s.command,
                    s.id
                );
            }
        }
    }
    (ids_with_duplicates, extra)
}

/// `h1`'s VMs.
pub async fn vm_names(peer: &mut AmqpPeer) -> Vec<VmRecord> {
    ok::<VmList>(peer, "h1", &VmListRequest { power_state: None })
        .await
        .vms
}

/// The names of the volumes in `h1`'s pool `default`.
pub async fn volume_names(peer: &mut AmqpPeer) -> Vec<String> {
    ok::<VolumeList>(peer, "h1", &pool_name("default"))
        .await
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// The reply queue the suites that consume their replies by name declare
/// (exclusive, so each test's own) and publish raw commands to.
pub const RAW_REPLIES: &str = "faults.raw.replies";

/// Gets the oldest dead letter on `ch` (unacked, so it stays in the queue
/// if the channel closes) with its properties; `what` says why there must be one.
pub async fn take_dead_letter(
    ch: &lapin::Channel,
    what: &str,
) -> (BasicGetMessage, AmqpProperties) {
    let m = ch
        .basic_get(names::DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
        .expect(what);
    let props = from_lapin(&m.delivery.properties);
    (m, props)
}

/// Declares `name` as an exclusive reply queue of `peer` and consumes it.
pub async fn reply_queue(peer: &AmqpPeer, name: &str) -> lapin::Consumer {
    let ch = peer.connection().create_channel().await.expect("channel");
    declare_queue(&ch, name, QueueKind::Exclusive)
        .await
        .expect("reply queue");
    consume_no_ack(&ch, name).await.expect("consume replies")
}

/// The reply to `id` (others are dropped), within 15 s.
pub async fn next_reply_for(consumer: &mut lapin::Consumer, id: &str) -> Received {
    replies_for(consumer, &[id])
        .await
        .remove(id)
        .expect("reply")
}

/// One reply for each id, whatever their order (others are dropped).
pub async fn replies_for(
    consumer: &mut lapin::Consumer,
    ids: &[&str],
) -> BTreeMap<String, Received> {
    let deadline = Instant::now() + T;
    let mut got = BTreeMap::new();
    while got.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                let r = Received::from_delivery(d);
                let corr = r.properties.correlation_id.clone().unwrap_or_default();
                if ids.contains(&corr.as_str()) {
                    got.insert(corr, r);
                }
            }
            other => {
                let missing: Vec<&&str> = ids.iter().filter(|i| !got.contains_key(**i)).collect();
                panic!("no reply to {missing:?}: {other:?}")
            }
        }
    }
    got
}

/// A private RabbitMQ node with agent `h1` (its builder adjusted by
/// `configure`) online on it, and a peer that saw it come online.
pub async fn h1_online(
    configure: impl FnOnce(AgentBuilder) -> AgentBuilder,
) -> (RabbitNode, AmqpPeer, Subscription, AgentProcess) {
    let node = RabbitNode::start().expect("rabbit");
    let (peer, events, agent, _) =
        spawn_online(configure(AgentProcess::builder("h1", &node.amqp_url()))).await;
    (node, peer, events, agent)
}
