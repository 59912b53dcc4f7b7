//! The broker objects hostbus uses, declared the same way by the agent (on
//! every connection) and by an administrator (`hostctl admin setup`).
//!
//! * Exchanges `hostbus.cmd`, `hostbus.evt`, `hostbus.presence` (topic) and
//!   `hostbus.dlx` (fanout).
//! * The dead-letter queue `hostbus.dead-letter`, bounded by length and age
//!   (the oldest are dropped; RabbitMQ counts them in its
//!   `messages_dead_lettered_{maxlen,expired}_total` counters).
//! * Three streams: `hostbus.events` (every event, for replay),
//!   `hostbus.presence.beats` (recent heartbeats) and
//!   `hostbus.presence.roster` (host announcements, kept for days).
//! * One command queue per agent, `hostbus.agent.<id>`, bound with
//!   `host.<id>`, `all` and `group.<label>`.
//!
//! Queues are quorum queues by default (replicated, delivery counting,
//! at-least-once dead-lettering), classic on request; streams are streams.
//! Exclusive, server-named queues (subscribers', reply queues) cannot be
//! quorum queues and stay classic.
//!
//! RabbitMQ refuses to redeclare a queue with other arguments
//! (`PRECONDITION_FAILED`; a classic queue cannot become a quorum queue in
//! place). [`declare_queue`] then uses the queue as it is and reports the
//! mismatch, so an agent upgraded before its queue was migrated keeps
//! serving (docs/operations.md, "Moving to quorum queues").

use std::time::Duration;

use hostbus_protocol::names;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};

use crate::is_precondition_failed;

/// The queue type of command queues and the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, counts deliveries, dead-letters at least once.
    Quorum,
    /// One node's queue.
    Classic,
}

/// How the objects are declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySettings {
    /// Type of command queues and the dead-letter queue.
    pub queue_type: QueueType,
    /// A command queue without consumers this long is deleted; `None`: never.
    pub queue_expires: Option<Duration>,
    /// Deliveries the agent makes of one message before giving it up; the
    /// broker's own limit on quorum queues is one more.
    pub max_deliveries: u32,
    /// Most dead letters kept.
    pub dead_letter_max_length: u64,
    /// Oldest dead letter kept.
    pub dead_letter_max_age: Duration,
    /// How long events are kept.
    pub event_retention: Duration,
    /// Most bytes of events kept.
    pub event_retention_bytes: u64,
    /// How long roster announcements are kept.
    pub roster_retention: Duration,
    /// How long heartbeats are kept.
    pub beat_retention: Duration,
}

impl Default for TopologySettings {
    /// The agent's defaults (docs/operations.md).
    fn default() -> Self {
        Self {
            queue_type: QueueType::Quorum,
            queue_expires: Some(Duration::from_secs(7 * 86_400)),
            max_deliveries: 3,
            dead_letter_max_length: 100_000,
            dead_letter_max_age: Duration::from_secs(7 * 86_400),
            event_retention: Duration::from_secs(86_400),
            event_retention_bytes: 1 << 30,
            roster_retention: Duration::from_secs(7 * 86_400),
            beat_retention: Duration::from_secs(600),
        }
    }
}

/// A queue that exists with other arguments than asked for: used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The queue.
    pub queue: String,
    /// What the broker said.
    pub reason: String,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn int(n: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The arguments of a stream kept for `age` and at most `bytes`, in
/// segments of `segment` bytes (retention drops whole segments, so small
/// segments keep age retention close to the mark).
fn stream_args(age: Duration, bytes: u64, segment: u64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), long("stream"));
    t.insert(
        "x-max-age".into(),
        long(&format!("{}s", age.as_secs().max(1))),
    );
    t.insert("x-max-length-bytes".into(), int(bytes));
    t.insert(
        "x-stream-max-segment-size-bytes".into(),
        int(segment.min(bytes)),
    );
    t
}

/// The arguments of the dead-letter queue.
pub fn dead_letter_args(s: &TopologySettings) -> FieldTable {
    let mut t = FieldTable::default();
    if s.queue_type == QueueType::Quorum {
        t.insert("x-queue-type".into(), long("quorum"));
    }
    t.insert("x-max-length".into(), int(s.dead_letter_max_length));
    t.insert("x-message-ttl".into(), int(millis(s.dead_letter_max_age)));
    t.insert("x-overflow".into(), long("drop-head"));
    t
}

/// The arguments of an agent's command queue.
pub fn agent_queue_args(s: &TopologySettings) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-dead-letter-exchange".into(),
        long(names::DEAD_LETTER_EXCHANGE),
    );
    if let Some(e) = s.queue_expires {
        t.insert("x-expires".into(), int(millis(e)));
    }
    if s.queue_type == QueueType::Quorum {
        t.insert("x-queue-type".into(), long("quorum"));
        // Dead letters are confirmed by the dead-letter queue before they
        // leave; that needs the source queue to refuse publishes when full.
        t.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        t.insert("x-overflow".into(), long("reject-publish"));
        // A backstop behind the agent's own count: a message that keeps
        // closing the agent's connection is dead-lettered by the broker.
        t.insert(
            "x-delivery-limit".into(),
            int(u64::from(s.max_deliveries) + 1),
        );
        // Leaders spread over the cluster's nodes.
        t.insert("x-queue-leader-locator".into(), long("balanced"));
    }
    t
}

/// Declares the durable queue `name` with `args`. If it exists with other
/// arguments, it is used as it is and the mismatch is returned.
pub async fn declare_queue(
    conn: &Connection,
    name: &str,
    args: FieldTable,
) -> lapin::Result<Option<Mismatch>> {
    let ch = conn.create_channel().await?;
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match ch.queue_declare(name.into(), opts, args).await {
        Ok(_) => {
            let _ = ch.close(200, "declared".into()).await;
            Ok(None)
        }
        Err(e) if is_precondition_failed(&e) => {
            // The broker closed that channel; check the queue is there.
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
            let _ = ch.close(200, "declared".into()).await;
            Ok(Some(Mismatch {
                queue: name.to_owned(),
                reason: e.to_string(),
            }))
        }
        Err(e) => Err(e),
    }
}

/// Declares the objects every host shares: exchanges, the dead-letter
/// queue and the streams, with their bindings.
pub async fn declare_shared(
    conn: &Connection,
    s: &TopologySettings,
) -> lapin::Result<Vec<Mismatch>> {
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (names::COMMAND_EXCHANGE, ExchangeKind::Topic),
        (names::EVENT_EXCHANGE, ExchangeKind::Topic),
        (names::PRESENCE_EXCHANGE, ExchangeKind::Topic),
        (names::DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    let mut mismatches = Vec::new();
    let queues: [(&str, FieldTable, &str, &[&str]); 4] = [
        (
            names::DEAD_LETTER_QUEUE,
            dead_letter_args(s),
            names::DEAD_LETTER_EXCHANGE,
            &[""],
        ),
        (
            names::EVENT_STREAM,
            stream_args(s.event_retention, s.event_retention_bytes, 32 << 20),
            names::EVENT_EXCHANGE,
            &["#"],
        ),
        (
            names::BEAT_STREAM,
            stream_args(s.beat_retention, 256 << 20, 4 << 20),
            names::PRESENCE_EXCHANGE,
            names::BEAT_STREAM_BINDINGS,
        ),
        (
            names::ROSTER_STREAM,
            stream_args(s.roster_retention, 64 << 20, 1 << 20),
            names::PRESENCE_EXCHANGE,
            names::ROSTER_STREAM_BINDINGS,
        ),
    ];
    for (queue, args, exchange, keys) in queues {
        mismatches.extend(declare_queue(conn, queue, args).await?);
        for key in keys {
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(mismatches)
}

/// Declares the command queue of `host_id` and binds it with `host.<id>`,
/// `all` and `group.<label>` for each label. Returns the queue's name and a
/// mismatch if it exists with other arguments.
pub async fn declare_agent_queue(
    conn: &Connection,
    host_id: &str,
    labels: &[String],
    s: &TopologySettings,
) -> lapin::Result<(String, Option<Mismatch>)> {
    let queue = names::agent_queue(host_id);
    let mismatch = declare_queue(conn, &queue, agent_queue_args(s)).await?;
    let ch = conn.create_channel().await?;
    let mut keys = vec![names::host_key(host_id), names::ALL_KEY.to_owned()];
    keys.extend(labels.iter().map(|l| names::group_key(l)));
    for key in keys {
        ch.queue_bind(
            queue.as_str().into(),
            names::COMMAND_EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok((queue, mismatch))
}

/// Most reads waiting in an agent's read queue; past it the oldest is
/// dropped (its caller sends it again when its reply does not come).
pub const READ_QUEUE_MAX_LENGTH: u64 = 10_000;

/// Declares an agent's read queue on `ch` (the channel that will consume
/// it): classic, exclusive to the agent's connection (it goes with it, so a
/// read never waits for an agent that is not there: the caller's publish
/// comes back unroutable and goes to the durable queue instead), bounded,
/// bound with `read.host.<id>`, `read.all` and `read.group.<label>`.
/// Returns its name.
pub async fn declare_read_queue(
    ch: &lapin::Channel,
    host_id: &str,
    labels: &[String],
) -> lapin::Result<String> {
    let queue = names::agent_read_queue(host_id);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), int(READ_QUEUE_MAX_LENGTH));
    args.insert("x-overflow".into(), long("drop-head"));
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    let mut targets = vec![names::Target::Host(host_id.to_owned()), names::Target::All];
    targets.extend(labels.iter().map(|l| names::Target::Group(l.clone())));
    for target in targets {
        ch.queue_bind(
            queue.as_str().into(),
            names::COMMAND_EXCHANGE.into(),
            target.read_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(queue)
}
