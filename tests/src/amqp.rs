//! A small AMQP peer on lapin, used the way a third-party program would talk
//! to hostbus (not through the hostbus SDK): publish raw commands with
//! chosen properties, receive replies through direct reply-to, and collect
//! events and heartbeats on exclusive queues.

use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_protocol::envelope::{AmqpProperties, HeaderValue};
use hostbus_protocol::names::{COMMAND_EXCHANGE, DIRECT_REPLY_TO};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use crate::error::{ErrorKind, HarnessError, Result};
pub(crate) use hostbus_amqp::redact;
pub use hostbus_amqp::{from_lapin, to_lapin};

/// A message received by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The exchange it was published to (empty for the default exchange and
    /// direct reply-to).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// Its properties.
    pub properties: AmqpProperties,
    /// Its body.
    pub body: Vec<u8>,
}

impl Received {
    /// A delivery as received.
    pub fn from_delivery(d: lapin::message::Delivery) -> Self {
        Self {
            exchange: d.exchange.as_str().to_owned(),
            routing_key: d.routing_key.as_str().to_owned(),
            redelivered: d.redelivered,
            properties: from_lapin(&d.properties),
            body: d.data,
        }
    }

    /// The value of a string header.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.properties.headers.get(name) {
            Some(HeaderValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// An AMQP connection with one channel in publisher-confirm mode, used as a
/// third party would use the bus.
#[derive(Debug)]
pub struct AmqpPeer {
    connection: Connection,
    channel: Channel,
    replies: Option<Consumer>,
}

impl AmqpPeer {
    /// Connects to `url` and opens a channel with publisher confirms.
    pub async fn connect(url: &str) -> Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| HarnessError::amqp(format!("cannot connect to {}", redact(url)), e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| HarnessError::amqp("cannot open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| HarnessError::amqp("cannot enable publisher confirms", e))?;
        Ok(Self {
            connection,
            channel,
            replies: None,
        })
    }

    /// The connection, for what the helpers do not cover.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The channel (publisher confirms on), for what the helpers do not
    /// cover.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` with `properties` and waits for the broker's
    /// confirm. A negative acknowledgement is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &AmqpProperties,
        body: &[u8],
    ) -> Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                to_lapin(properties),
            )
            .await
            .map_err(|e| HarnessError::amqp(format!("cannot publish to {exchange:?}"), e))?
            .await
            .map_err(|e| HarnessError::amqp(format!("no confirm from {exchange:?}"), e))?;
        if confirm.is_nack() {
            return Err(HarnessError::new(
                ErrorKind::Amqp,
                format!("the broker refused the message to {exchange:?} {routing_key:?}"),
            ));
        }
        Ok(())
    }

    /// Publishes a raw command to `hostbus.cmd` with `routing_key`
    /// (`host.<id>`, `all`, `group.<label>`).
    pub async fn publish_command(
        &self,
        routing_key: &str,
        properties: &AmqpProperties,
        body: &[u8],
    ) -> Result<()> {
        self.publish(COMMAND_EXCHANGE, routing_key, properties, body)
            .await
    }

    /// Starts consuming direct reply-to on this peer's channel (RabbitMQ
    /// requires this before a message with `reply_to =
    /// amq.rabbitmq.reply-to` is published on the same channel). Idempotent;
    /// [`call`](Self::call) does it itself.
    pub async fn consume_replies(&mut self) -> Result<()> {
        if self.replies.is_none() {
            let consumer = consume_no_ack(&self.channel, DIRECT_REPLY_TO)
                .await
                .map_err(|e| HarnessError::amqp("cannot consume direct reply-to", e))?;
            self.replies = Some(consumer);
        }
        Ok(())
    }

    /// Sends a command and waits for its reply: consumes direct reply-to,
    /// sets `reply_to` to it (when `properties` has none) and
    /// `correlation_id` to the message id (when it has none), publishes to
    /// `hostbus.cmd`, and returns the first reply with that correlation id.
    /// Replies with another correlation id are skipped.
    pub async fn call(
        &mut self,
        routing_key: &str,
        properties: &AmqpProperties,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Received> {
        self.consume_replies().await?;
        let mut p = properties.clone();
        if p.reply_to.is_none() {
            p.reply_to = Some(DIRECT_REPLY_TO.to_owned());
        }
        if p.correlation_id.is_none() {
            p.correlation_id = p.message_id.clone();
        }
        let correlation = p.correlation_id.clone();
        self.publish_command(routing_key, &p, body).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let reply = self.next_reply(left).await.map_err(|e| {
                if e.is_timeout() {
                    HarnessError::new(
                        ErrorKind::Timeout,
                        format!(
                            "no reply to {:?} (correlation id {:?}) within {timeout:?}",
                            p.kind.as_deref().unwrap_or("?"),
                            correlation.as_deref().unwrap_or("?")
                        ),
                    )
                } else {
                    e
                }
            })?;
            if correlation.is_none() || reply.properties.correlation_id == correlation {
                return Ok(reply);
            }
        }
    }

    /// The next message on direct reply-to, within `timeout`.
    pub async fn next_reply(&mut self, timeout: Duration) -> Result<Received> {
        self.consume_replies().await?;
        let Some(consumer) = self.replies.as_mut() else {
            return Err(HarnessError::new(
                ErrorKind::Amqp,
                "direct reply-to is not consumed",
            ));
        };
        next_delivery(consumer, timeout, "direct reply-to").await
    }

    /// Declares a fresh exclusive, auto-delete queue on a channel of its
    /// own and binds it to `exchange` with `pattern` (e.g. `h1.vm.*`, `#`).
    /// The exchange is declared first as a durable topic exchange (as every
    /// hostbus exchange is), so a subscription can be made before any agent
    /// runs.
    pub async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Subscription> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| HarnessError::amqp("cannot open a channel", e))?;
        declare_topic(&channel, exchange)
            .await
            .map_err(|e| HarnessError::amqp(format!("cannot declare exchange {exchange:?}"), e))?;
        let queue = declare_queue(&channel, "", QueueKind::Exclusive)
            .await
            .map_err(|e| HarnessError::amqp("cannot declare an exclusive queue", e))?;
        let name = queue.name().as_str().to_owned();
        let subscription = Subscription {
            consumer: None,
            queue: name,
            channel,
        };
        subscription.bind(exchange, pattern).await?;
        let consumer = consume_no_ack(&subscription.channel, &subscription.queue)
            .await
            .map_err(|e| HarnessError::amqp("cannot consume the exclusive queue", e))?;
        Ok(Subscription {
            consumer: Some(consumer),
            ..subscription
        })
    }

    /// [`subscribe`](Self::subscribe), panicking when it fails.
    pub async fn watch(&self, exchange: &str, pattern: &str) -> Subscription {
        self.subscribe(exchange, pattern)
            .await
            .unwrap_or_else(|e| panic!("subscribe to {exchange} {pattern}: {e}"))
    }

    /// Closes the connection.
    pub async fn close(self) -> Result<()> {
        self.connection
            .close(200, "bye".into())
            .await
            .map_err(|e| HarnessError::amqp("cannot close the connection", e))
    }
}

/// An exclusive queue bound to an exchange, consumed without
/// acknowledgements.
#[derive(Debug)]
pub struct Subscription {
    channel: Channel,
    queue: String,
    consumer: Option<Consumer>,
}

impl Subscription {
    /// The queue's server-generated name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Adds a binding to `exchange` with `pattern` (the exchange must exist).
    pub async fn bind(&self, exchange: &str, pattern: &str) -> Result<()> {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                HarnessError::amqp(format!("cannot bind to {exchange:?} with {pattern:?}"), e)
            })
    }

    /// The next message, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Received> {
        let Some(consumer) = self.consumer.as_mut() else {
            return Err(HarnessError::new(ErrorKind::Amqp, "not consuming"));
        };
        next_delivery(consumer, timeout, &self.queue).await
    }

    /// The next `n` messages, each within `timeout`.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.next(timeout).await?);
        }
        Ok(got)
    }

    /// The first message for which `matches` holds, within `timeout`;
    /// others are dropped.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&Received) -> bool,
    ) -> Result<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next(left).await?;
            if matches(&m) {
                return Ok(m);
            }
        }
    }

    /// Every message that arrives within `window`.
    pub async fn collect_for(&mut self, window: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(m) => out.push(m),
                Err(e) if e.is_timeout() => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The kinds of queue the suites declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Exclusive to the connection and deleted with its last consumer.
    Exclusive,
    /// Durable, surviving a broker restart.
    Durable,
    /// A passive declare: the queue (with its message and consumer counts)
    /// if it exists, an error (which closes the channel) if not.
    Passive,
}

/// Declares queue `name` (`""`: a fresh name from the broker) of `kind`
/// on `channel`, without arguments.
pub async fn declare_queue(
    channel: &Channel,
    name: &str,
    kind: QueueKind,
) -> std::result::Result<lapin::Queue, lapin::Error> {
    let options = match kind {
        QueueKind::Exclusive => QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        QueueKind::Durable => QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        QueueKind::Passive => QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
    };
    channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
}

/// Declares `exchange` as a durable topic exchange, as every hostbus
/// exchange is.
pub async fn declare_topic(
    channel: &Channel,
    exchange: &str,
) -> std::result::Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Consumes `queue` on `channel` without acknowledgements.
pub async fn consume_no_ack(
    channel: &Channel,
    queue: &str,
) -> std::result::Result<Consumer, lapin::Error> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// A peer on `url` subscribed to `agent.online` events of every host
/// (`*.agent.online` on `hostbus.evt`), made before any agent starts so
/// that none is missed.
pub async fn watch_online(url: &str) -> (AmqpPeer, Subscription) {
    let peer = AmqpPeer::connect(url).await.expect("peer");
    let sub = peer
        .subscribe(hostbus_protocol::names::EVENT_EXCHANGE, "*.agent.online")
        .await
        .expect("subscribe");
    (peer, sub)
}

async fn next_delivery(consumer: &mut Consumer, timeout: Duration, what: &str) -> Result<Received> {
    match tokio::time::timeout(timeout, consumer.next()).await {
        Err(_) => Err(HarnessError::new(
            ErrorKind::Timeout,
            format!("nothing arrived on {what} within {timeout:?}"),
        )),
        Ok(None) => Err(HarnessError::new(
            ErrorKind::Amqp,
            format!("the consumer of {what} was cancelled"),
        )),
        Ok(Some(Err(e))) => Err(HarnessError::amqp(format!("consuming {what} failed"), e)),
        Ok(Some(Ok(d))) => Ok(Received::from_delivery(d)),
    }
}
