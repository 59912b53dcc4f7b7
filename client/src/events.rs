//! Event subscriptions as a typed stream that survives disconnection.
//!
//! Every event is kept by the broker in the stream `hostbus.events` (for
//! `event_retention_s`, a day by default). A subscription reads that stream
//! from where it is told to start ([`StartAt`]): the next event, the first
//! the broker keeps, a time, or an offset. The offset of the last
//! notification taken from a [`Subscription`] is its
//! [`position`](Subscription::position): store it, and a later subscription
//! from `StartAt::Offset(position + 1)` misses nothing, like xapi's
//! `event.from` token. A subscription whose connection drops reconnects on
//! its own and resumes after the last event it read.
//!
//! The stream holds every host's events in one order, so a subscription
//! filters by its patterns locally and still sees every sequence number of
//! every host: a filtered subscriber cannot mistake a filtered event for a
//! lost one. A resync (a fresh `host.snapshot`) is needed only when events
//! really were lost: the agent dropped them while it was cut off from the
//! broker (its `agent.online` carries the inventory), the agent restarted
//! (a new epoch), or the offset asked for is older than the broker keeps.
//!
//! Over a local agent's socket, the subscription reads the agent's event
//! stream (`GET /v1/events`, server-sent events) through the same filter
//! and resync rules. The agent keeps no history, so it starts at the next
//! event only and has no [`position`](Subscription::position); each
//! (re)connection starts with the agent's `hello` (its epoch and last
//! sequence number), which tells whether events were missed meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{Stream, StreamExt};
use hostbus_protocol::commands::{Empty, HostSnapshot};
use hostbus_protocol::names::{EVENT_EXCHANGE, EVENT_STREAM};
use hostbus_protocol::types::{Inventory, ObjectClass};
use hostbus_protocol::{decode, ContentType, Event, EventAction};
use http_body_util::BodyExt;
use lapin::options::{BasicAckOptions, BasicQosOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::client::Client;
use crate::connection::{close, closed_error, Tie};
use crate::error::{ClientError, ErrorKind};
use crate::socket::{Socket, EVENTS};
use crate::sse;
use crate::stream::{self, content_type, offset_of};

/// Where a subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// With the next event published.
    #[default]
    Next,
    /// With the oldest event the broker keeps.
    First,
    /// With the first event published at or after this time, ms since the
    /// Unix epoch (the broker's granularity is a second).
    Time(u64),
    /// With the event at this stream offset: a stored
    /// [`Subscription::position`] plus one.
    Offset(u64),
}

/// Options of a subscription.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Where to start.
    pub from: StartAt,
    /// Fetch a fresh inventory when events of a host were lost.
    pub resync: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from: StartAt::Next,
            resync: true,
        }
    }
}

/// Why a resync happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncReason {
    /// Sequence numbers `expected..got` of this epoch never reached the
    /// broker (the agent was cut off from it).
    Gap {
        /// The sequence number that should have come next.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// The agent restarted (a new epoch).
    NewEpoch,
    /// The agent (re)connected and announced itself with a full inventory.
    AgentOnline,
    /// The broker no longer keeps the events from the offset asked for:
    /// offsets `asked..first` are gone.
    Truncated {
        /// The offset asked for.
        asked: u64,
        /// The first offset the broker still had.
        first: u64,
    },
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Notification {
    /// An event matching the patterns.
    Event(Box<Event>),
    /// The subscriber's view of `host` must be replaced by `inventory`.
    Resync {
        /// The host.
        host: String,
        /// Why.
        reason: ResyncReason,
        /// The host's full state (absent when fetching it failed: see `error`).
        inventory: Option<Box<Inventory>>,
        /// Why the inventory is missing.
        error: Option<ClientError>,
    },
}

/// A stream of notifications, read by a task of its own over a broker
/// connection of its own (over an agent's socket, an HTTP stream).
///
/// # Closing
/// [`Subscription::close`] ends it and closes its connection with AMQP's
/// `connection.close`, waiting for the broker's confirmation at most two
/// seconds; [`Client::close`] does the same for every subscription of the
/// client still open. Dropping the subscription ends it too: its task is
/// told without waiting, and closes the connection the same way on the
/// tokio runtime it runs on; that reaches the broker if the runtime keeps
/// running for a moment (a long-running program), not if the program
/// exits or shuts its runtime down right after the drop (the broker then
/// logs `client unexpectedly closed TCP connection`). Dropping never
/// blocks and never panics, even outside a runtime.
pub struct Subscription {
    rx: mpsc::Receiver<(Option<u64>, Result<Notification, ClientError>)>,
    /// Tells the task to stop and close its connection; dropping it does too.
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
    position: Option<u64>,
}

impl Subscription {
    /// The stream offset of the last event taken from this subscription
    /// (the event of the last [`Notification::Event`], or the one that
    /// caused the last resync): resume after it with
    /// `StartAt::Offset(position + 1)`.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// Ends the subscription and closes its broker connection with AMQP's
    /// `connection.close`, waiting for the broker's confirmation at most
    /// two seconds. Notifications not taken yet are dropped; store
    /// [`position`](Self::position) first to resume later.
    ///
    /// # Errors
    /// The broker did not confirm in time ([`ErrorKind::Timeout`]); the
    /// connection is given up on all the same.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the task closing the connection on its
    /// own, as dropping the subscription does.
    pub async fn close(self) -> Result<(), ClientError> {
        let Self { stop, task, .. } = self;
        let _ = stop.send(());
        task.await.unwrap_or_else(|e| {
            Err(ClientError::new(
                ErrorKind::Internal,
                format!("the subscription's task failed: {e}"),
            ))
        })
    }
}

impl Stream for Subscription {
    type Item = Result<Notification, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((offset, item))) => {
                if offset.is_some() {
                    self.position = offset;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The largest event decoded.
const MAX_EVENT: usize = 64 << 20;

/// Whether a topic pattern (`*` one word, `#` zero or more) matches a routing key.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn rec(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => rec(&p[1..], k) || (!k.is_empty() && rec(p, &k[1..])),
            (Some(&"*"), Some(_)) => rec(&p[1..], &k[1..]),
            (Some(w), Some(x)) if w == x => rec(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    rec(&p, &k)
}

fn check_pattern(p: &str) -> Result<(), ClientError> {
    let ok = !p.is_empty()
        && p.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty()
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }))
        });
    if ok {
        Ok(())
    } else {
        Err(ClientError::new(
            ErrorKind::InvalidArgument,
            format!("`{p}` is not an event pattern like `*.vm.*` or `h1.#`"),
        ))
    }
}

/// The host a pattern is about, when it names one.
fn pattern_host(p: &str) -> Option<&str> {
    p.split('.').next().filter(|h| *h != "*" && *h != "#")
}

/// Per-host sequence tracking.
#[derive(Default)]
struct Seen {
    hosts: HashMap<String, (Uuid, u64)>,
}

/// Where an event stands against what was seen of its host.
enum Order {
    /// The next one (or the first seen of its host).
    Next,
    /// A duplicate or an old event: already reflected.
    Old,
    /// Events were lost before it.
    Lost(ResyncReason),
}

impl Seen {
    fn order(&self, host: &str, epoch: Uuid, seq: u64) -> Order {
        match self.hosts.get(host) {
            None => Order::Next,
            Some((e, _)) if *e != epoch => Order::Lost(ResyncReason::NewEpoch),
            Some((_, last)) if seq <= *last => Order::Old,
            Some((_, last)) if seq > last + 1 => Order::Lost(ResyncReason::Gap {
                expected: last + 1,
                got: seq,
            }),
            Some(_) => Order::Next,
        }
    }
}

/// The first message of an agent's event stream: where the agent stands.
#[derive(serde::Deserialize)]
struct Hello {
    host_id: String,
    epoch: Uuid,
    last_seq: u64,
}

/// What one subscription's task needs.
struct Follow {
    client: Client,
    patterns: Vec<String>,
    resync: bool,
    tx: mpsc::Sender<(Option<u64>, Result<Notification, ClientError>)>,
    seen: Seen,
}

impl Follow {
    async fn send(&self, offset: Option<u64>, n: Result<Notification, ClientError>) -> bool {
        self.tx.send((offset, n)).await.is_ok()
    }

    async fn resync(&mut self, host: &str, reason: ResyncReason, offset: Option<u64>) -> bool {
        if !self.resync {
            return true;
        }
        let (inventory, error) = match self.client.call::<HostSnapshot>(host, Empty {}).await {
            Ok(inv) => (Some(Box::new(inv)), None),
            Err(e) => (None, Some(e)),
        };
        if let Some(inv) = &inventory {
            if let Some(epoch) = inv.epoch {
                self.seen.hosts.insert(host.to_owned(), (epoch, inv.seq));
            }
        }
        self.send(
            offset,
            Ok(Notification::Resync {
                host: host.to_owned(),
                reason,
                inventory,
                error,
            }),
        )
        .await
    }

    /// Whether the patterns follow `host`'s events.
    fn followed(&self, host: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| pattern_host(p).is_none_or(|h| h == host))
    }

    /// Handles one event read at `offset`; false when the subscriber is gone.
    async fn event(&mut self, ev: Event, offset: Option<u64>) -> bool {
        let host = ev.host_id.clone();
        let reason = match self.seen.order(&host, ev.epoch, ev.seq) {
            Order::Next => None,
            Order::Old => return true,
            Order::Lost(reason) => Some(reason),
        };
        let online = ev.class == ObjectClass::Agent && ev.action == EventAction::Online;
        let reason = reason.or(online.then_some(ResyncReason::AgentOnline));
        let followed = self.followed(&host);
        let mut last = ev.seq;
        if let (Some(reason), true, true) = (reason, self.resync, followed) {
            let (inventory, error) = match (&ev.inventory, online) {
                (Some(inv), true) => (Some(Box::new(inv.clone())), None),
                _ => match self.client.call::<HostSnapshot>(&host, Empty {}).await {
                    Ok(inv) => (Some(Box::new(inv)), None),
                    Err(e) => (None, Some(e)),
                },
            };
            if let Some(inv) = &inventory {
                if inv.epoch == Some(ev.epoch) {
                    last = last.max(inv.seq);
                }
            }
            let n = Notification::Resync {
                host: host.clone(),
                reason,
                inventory,
                error,
            };
            if !self.send(offset, Ok(n)).await {
                return false;
            }
        }
        self.seen.hosts.insert(host, (ev.epoch, last));
        let key = ev.routing_key();
        if self.patterns.iter().any(|p| topic_matches(p, &key)) {
            return self
                .send(offset, Ok(Notification::Event(Box::new(ev))))
                .await;
        }
        true
    }
}

impl Follow {
    /// Handles an agent's `hello` (where it stands when the stream opens):
    /// a host seen before resyncs when it restarted or published events
    /// this subscription did not get; false when the subscriber is gone.
    async fn hello(&mut self, h: Hello) -> bool {
        // As if its next event had come: the last one published was seen.
        let order = self.seen.order(&h.host_id, h.epoch, h.last_seq + 1);
        if matches!(order, Order::Old) {
            return true;
        }
        self.seen
            .hosts
            .insert(h.host_id.clone(), (h.epoch, h.last_seq));
        match order {
            Order::Lost(reason) if self.followed(&h.host_id) => {
                self.resync(&h.host_id, reason, None).await
            }
            _ => true,
        }
    }

    /// Handles one message of an agent's event stream; false when the
    /// subscriber is gone.
    async fn message(&mut self, m: sse::Message) -> bool {
        let data = m.data.as_bytes();
        if m.event == "hello" {
            return match decode::<Hello>(ContentType::Json, data, MAX_EVENT) {
                Ok(h) => self.hello(h).await,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable hello of the agent's event stream");
                    true
                }
            };
        }
        match decode::<Event>(ContentType::Json, data, MAX_EVENT) {
            Ok(ev) => self.event(ev, None).await,
            Err(e) => {
                tracing::warn!(error = %e, event = %m.event, "undecodable event skipped");
                true
            }
        }
    }
}

/// Follows the event stream of the agent on `socket` (`first`, then a new
/// one whenever it ends), until the subscriber is gone.
async fn follow_socket(
    mut follow: Follow,
    socket: std::sync::Arc<Socket>,
    first: hyper::Response<hyper::body::Incoming>,
) {
    let mut current = Some(first);
    loop {
        let resp = reconnect(current.take(), || socket.stream(EVENTS)).await;
        let mut body = resp.into_body();
        let mut parser = sse::Parser::default();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            for m in parser.push(&chunk) {
                if !follow.message(m).await {
                    return;
                }
            }
        }
        tracing::info!("event subscription: the agent's event stream ended; reconnecting");
    }
}

/// `current`, else what `open` opens once it succeeds, trying again after
/// 200 ms, then twice as long each time, up to 5 s.
async fn reconnect<T, F>(current: Option<T>, mut open: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    if let Some(c) = current {
        return c;
    }
    let mut pause = Duration::from_millis(200);
    loop {
        match open().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::debug!(error = %e, "event subscription: cannot reconnect yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A connection to the event stream: the connection, its channel and the
/// stream's consumer.
type Reading = (lapin::Connection, (lapin::Channel, lapin::Consumer));

/// Opens a connection and a consumer on the event stream at `from`.
async fn open(client: &Client, from: StartAt) -> Result<Reading, ClientError> {
    client
        .open_connection("events", async |conn| {
            let ch = conn.create_channel().await?;
            ch.basic_qos(500, BasicQosOptions::default()).await?;
            let offset = match from {
                StartAt::Next => stream::named("next"),
                StartAt::First => stream::named("first"),
                StartAt::Time(ms) => stream::at_time(ms),
                StartAt::Offset(o) => stream::at(o),
            };
            let consumer = stream::consume(&ch, EVENT_STREAM, offset).await?;
            Ok((ch, consumer))
        })
        .await
}

/// Follows the broker's event stream (`first`, then a new connection
/// whenever one is lost), until the subscriber is gone; the connection in
/// use is kept in `conn`, for the caller to close.
async fn follow_broker(
    mut follow: Follow,
    from: StartAt,
    first: Reading,
    conn: &mut Option<lapin::Connection>,
) {
    // The offset the next delivery should have, when known.
    let mut asked = match from {
        StartAt::Offset(o) => Some(o),
        _ => None,
    };
    let mut current = Some(first);
    loop {
        let from = asked.map_or(StartAt::Next, StartAt::Offset);
        let (c, (ch, mut consumer)) =
            reconnect(current.take(), || open(&follow.client, from)).await;
        *conn = Some(c);
        let mut first_delivery = true;
        let mut unacked = 0u32;
        while let Some(d) = consumer.next().await {
            let Ok(d) = d else { break };
            let offset = offset_of(&d);
            unacked += 1;
            if unacked >= 100 {
                unacked = 0;
                let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
            }
            if let (Some(o), Some(a)) = (offset, asked) {
                if o < a {
                    // The broker starts at a chunk's beginning.
                    continue;
                }
                if first_delivery && o > a {
                    // Retention removed what was asked for.
                    let hosts: BTreeSet<String> = follow
                        .seen
                        .hosts
                        .keys()
                        .cloned()
                        .chain(
                            follow
                                .patterns
                                .iter()
                                .filter_map(|p| pattern_host(p).map(str::to_owned)),
                        )
                        .collect();
                    for h in hosts {
                        let reason = ResyncReason::Truncated { asked: a, first: o };
                        if !follow.resync(&h, reason, None).await {
                            return;
                        }
                    }
                }
            }
            first_delivery = false;
            if let Some(o) = offset {
                asked = Some(o + 1);
            }
            match decode::<Event>(content_type(&d), &d.data, MAX_EVENT) {
                Ok(ev) if !stream::published_as(&d, EVENT_EXCHANGE, &ev.routing_key()) => {}
                Ok(ev) => {
                    if !follow.event(ev, offset).await {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "undecodable event skipped"),
            }
        }
        drop((consumer, ch));
        if let Some(c) = conn.take() {
            // Usually lost already; a consumer that failed on a live
            // connection leaves it to be closed.
            let _ = close(&c, "subscription reconnecting").await;
        }
        tracing::info!("event subscription: connection lost; resuming after the last event read");
    }
}

/// Closes a subscription's broker connection, if it has one, and ends its
/// tie to the client with the outcome.
async fn finish(conn: Option<lapin::Connection>, tie: Tie) -> Result<(), ClientError> {
    let closed = match conn {
        Some(c) => close(&c, "subscription closed").await,
        None => Ok(()),
    };
    tie.end(&closed);
    closed
}

impl Client {
    /// Subscribes to events whose routing key (`<host>.<class>.<action>`)
    /// matches any of `patterns` (all when empty), reading the event stream
    /// from `opts.from`. Fails at once if the broker cannot be reached or
    /// the stream does not exist; after that, the subscription reconnects
    /// on its own. Over an agent's socket, `opts.from` must be
    /// [`StartAt::Next`] (else [`ErrorKind::Unsupported`]). The
    /// subscription has a broker connection of its own: close it with
    /// [`Subscription::close`] (or [`Client::close`]) when done.
    pub async fn subscribe(
        &self,
        patterns: &[&str],
        opts: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        for p in patterns {
            check_pattern(p)?;
        }
        let patterns: Vec<String> = if patterns.is_empty() {
            vec!["#".to_owned()]
        } else {
            patterns.iter().map(|p| (*p).to_owned()).collect()
        };
        let tie = self.inner.ties.tie().ok_or_else(closed_error)?;
        let (tx, rx) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel();
        let follow = Follow {
            client: self.clone(),
            patterns,
            resync: opts.resync,
            tx,
            seen: Seen::default(),
        };
        if let Some(socket) = &self.inner.socket {
            if opts.from != StartAt::Next {
                return Err(ClientError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "an agent socket ({}) serves events from the next one only: the agent keeps no history ({:?} needs the broker's event stream)",
                        socket.path().display(),
                        opts.from
                    ),
                ));
            }
            let first = socket.stream(EVENTS).await?;
            let socket = socket.clone();
            let task = tokio::spawn(async move {
                let mut tie = tie;
                tie.until_stopped(follow_socket(follow, socket, first), stopped)
                    .await;
                finish(None, tie).await
            });
            return Ok(Subscription {
                rx,
                stop,
                task,
                position: None,
            });
        }
        let first = open(self, opts.from).await?;
        let task = tokio::spawn(async move {
            let mut tie = tie;
            let mut conn = None;
            let follow = follow_broker(follow, opts.from, first, &mut conn);
            tie.until_stopped(follow, stopped).await;
            finish(conn, tie).await
        });
        Ok(Subscription {
            rx,
            stop,
            task,
            position: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("*.vm.*", "h1.vm.started"));
        assert!(!topic_matches("*.vm.*", "h1.pool.started"));
        assert!(topic_matches("h1.#", "h1.vm.started"));
        assert!(topic_matches("#", "h1.agent.online"));
        assert!(!topic_matches("h1.#", "h2.vm.started"));
        assert!(topic_matches("h1.vm.#", "h1.vm"));
    }

    #[test]
    fn patterns_are_checked_and_name_their_host() {
        assert!(check_pattern("*.vm.*").is_ok());
        assert!(check_pattern("h1..x").is_err());
        assert_eq!(pattern_host("h1.vm.*"), Some("h1"));
        assert_eq!(pattern_host("*.vm.*"), None);
        assert_eq!(pattern_host("#"), None);
    }
}
