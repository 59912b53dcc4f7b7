//! The raw-lapin baseline: a minimal responder on direct reply-to and a
//! client that calls it, with the broker operations a hostbus call makes
//! switchable one by one (the breakdown).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;

use crate::measure::Call;

pub(crate) fn raw_call(raw: &Arc<Raw>) -> Call {
    let r = raw.clone();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move || {
        let r = r.clone();
        let id = counter.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { r.call(id).await })
    })
}

/// What a raw request/reply pays for, beyond the minimal baseline; each
/// flag adds one of the broker operations a hostbus call makes, so the
/// breakdown (`--breakdown`) prices them one by one on the same broker.
#[derive(Clone, Copy, Default)]
pub(crate) struct RawOpts {
    /// Route through a topic exchange instead of the default exchange.
    pub(crate) topic: bool,
    /// Requests carry a per-message TTL (`expiration`), as hostbus commands do.
    pub(crate) ttl: bool,
    /// A durable queue (requests still transient).
    pub(crate) durable: bool,
    /// Persistent requests (delivery mode 2).
    pub(crate) persistent: bool,
    /// A quorum queue (durable, replicated on a cluster; every message a
    /// Raft command), as hostbus's command queues by default.
    pub(crate) quorum: bool,
    /// The responder answers each request in its own task.
    pub(crate) spawn: bool,
    /// The responder acks each request after publishing its reply.
    pub(crate) ack: bool,
    /// The client publishes with confirms and the mandatory flag, and waits
    /// for the confirm along with the reply.
    pub(crate) confirm: bool,
}

/// The raw baseline: a responder that echoes on direct reply-to, and a
/// client with one channel and a correlation map, all plain lapin.
pub(crate) struct Raw {
    ch: lapin::Channel,
    opts: RawOpts,
    exchange: &'static str,
    queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    _conns: (Connection, Connection),
}

impl Raw {
    pub(crate) async fn start(url: &str, opts: RawOpts) -> Raw {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let queue = format!("bench.raw.{}", N.fetch_add(1, Ordering::Relaxed));
        let server = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw server");
        let sch = server.create_channel().await.expect("channel");
        let mut args = FieldTable::default();
        if opts.quorum {
            args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        let durable = opts.durable || opts.quorum;
        sch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: !durable,
                durable,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("queue");
        let exchange = if opts.topic {
            let (name, kind) = ("bench.topic", ExchangeKind::Topic);
            sch.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange");
            sch.queue_bind(
                queue.as_str().into(),
                name.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
            name
        } else {
            ""
        };
        if opts.ack {
            sch.basic_qos(64, BasicQosOptions::default())
                .await
                .expect("qos");
        }
        // Replies and acks on the consuming channel, as the agent does for
        // direct reply-to.
        let reply_ch = sch.clone();
        let mut requests = sch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: !opts.ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                let reply_ch = reply_ch.clone();
                let answer = async move {
                    let (Some(to), Some(corr)) = (
                        d.properties.reply_to().clone(),
                        d.properties.correlation_id().clone(),
                    ) else {
                        return;
                    };
                    if reply_ch
                        .basic_publish(
                            "".into(),
                            to,
                            BasicPublishOptions::default(),
                            &d.data,
                            BasicProperties::default().with_correlation_id(corr),
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if opts.ack {
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    }
                };
                if opts.spawn {
                    tokio::spawn(answer);
                } else {
                    answer.await;
                }
            }
        });
        let client = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw client");
        let ch = client.create_channel().await.expect("channel");
        if opts.confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
        }
        let mut replies = hostbus_tests::consume_no_ack(&ch, "amq.rabbitmq.reply-to")
            .await
            .expect("reply-to");
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let p2 = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                if let Some(c) = d.properties.correlation_id() {
                    if let Some(tx) = p2.lock().expect("pending").remove(c.as_str()) {
                        let _ = tx.send(());
                    }
                }
            }
        });
        Raw {
            ch,
            opts,
            exchange,
            queue,
            pending,
            _conns: (server, client),
        }
    }

    /// Closes both connections (dropping a lapin connection leaves it open).
    pub(crate) async fn close(&self) {
        for c in [&self._conns.0, &self._conns.1] {
            let _ = c.close(200, "done".into()).await;
        }
    }

    pub(crate) async fn call(&self, id: u64) -> bool {
        let corr = id.to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending")
            .insert(corr.clone(), tx);
        let mut props = BasicProperties::default()
            .with_correlation_id(corr.as_str().into())
            .with_reply_to("amq.rabbitmq.reply-to".into());
        if self.opts.persistent {
            props = props.with_delivery_mode(2);
        }
        if self.opts.ttl {
            props = props.with_expiration("30000".into());
        }
        let Ok(confirm) = self
            .ch
            .basic_publish(
                self.exchange.into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: self.opts.confirm,
                    ..BasicPublishOptions::default()
                },
                b"\x80",
                props,
            )
            .await
        else {
            return false;
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), rx);
        if self.opts.confirm {
            let (reply, confirm) = futures_lite::future::zip(reply, confirm).await;
            reply.is_ok_and(|r| r.is_ok()) && confirm.is_ok()
        } else {
            reply.await.is_ok_and(|r| r.is_ok())
        }
    }
}
