//! The connection to the broker and the call machinery: calls with
//! deadlines, casts, broadcasts, asynchronous submissions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_amqp::{from_lapin, to_lapin};
use hostbus_protocol::envelope::HOST_HEADER;
use hostbus_protocol::names::{self, Target, COMMAND_EXCHANGE, DIRECT_REPLY_TO, PRESENCE_EXCHANGE};
use hostbus_protocol::types::TaskRecord;
use hostbus_protocol::{
    decode, encode, now_ms, AmqpProperties, Announcement, Command, ContentType, Envelope,
    HeaderValue, Reply, RosterAction,
};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{ClientError, ErrorKind};
use crate::presence::Presence;

/// Largest reply the client accepts.
const MAX_REPLY: usize = 64 << 20;

/// How long a broadcast waits before asking the broker whether the alive
/// hosts that have not answered still have a consumer, and how often after.
const PROBE_AFTER: Duration = Duration::from_millis(500);
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker URLs, tried in order (`amqp://user:pass@host:5672/%2f`, `amqps://...`).
    pub urls: Vec<String>,
    /// Default deadline of a call.
    pub timeout: Duration,
    /// Encoding of requests (replies come back in the same one).
    pub content_type: ContentType,
    /// The `user_id` property to send: must equal the broker login, which
    /// RabbitMQ verifies; the agent authorizes on it. Taken from the first
    /// URL's user when not set.
    pub user_id: Option<String>,
    /// TLS material for `amqps://` URLs (CA, optional client certificate).
    pub tls: hostbus_amqp::Tls,
    /// Connection timeout and AMQP heartbeat (10 s each by default).
    pub connect: hostbus_amqp::ConnectOptions,
}

impl ClientConfig {
    /// A configuration for one broker URL with a 10 s default deadline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            timeout: Duration::from_secs(10),
            content_type: ContentType::MsgPack,
            user_id: None,
            tls: hostbus_amqp::Tls::default(),
            connect: hostbus_amqp::ConnectOptions::default(),
        }
    }

    fn user(&self) -> Option<String> {
        self.user_id.clone().or_else(|| {
            let url = self.urls.first()?;
            let rest = url.split_once("://")?.1;
            let (creds, _) = rest.rsplit_once('@')?;
            let user = creds.split(':').next()?;
            (!user.is_empty()).then(|| user.to_owned())
        })
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline (default: the client's). Also the message expiration, so an
    /// agent that was down does not run a command nobody waits for.
    pub timeout: Option<Duration>,
    /// The command id; reuse it to retry a call safely (the agent answers a
    /// repeated id from its journal).
    pub command_id: Option<Uuid>,
}

/// A raw reply: its properties and body.
#[derive(Debug, Clone)]
pub(crate) struct RawReply {
    pub(crate) props: AmqpProperties,
    pub(crate) body: Vec<u8>,
}

enum Pending {
    One(oneshot::Sender<RawReply>),
    Many(mpsc::UnboundedSender<RawReply>),
}

#[derive(Clone)]
struct Session {
    conn: Arc<Connection>,
    channel: Channel,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    /// The broker URLs in the order this process tries them: from a random
    /// position, so a fleet of managers spreads over a cluster's nodes.
    order: Vec<String>,
    /// The live session; read without waiting on every call.
    session: std::sync::RwLock<Option<Arc<Session>>>,
    /// Held while (re)connecting, so one task reconnects and the others wait.
    reconnecting: tokio::sync::Mutex<()>,
    pending: Mutex<HashMap<String, Pending>>,
    presence: tokio::sync::OnceCell<Presence>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to the bus. Cheap to clone; reconnects on its own when the
/// broker connection is lost (calls in flight at that moment fail with
/// [`ErrorKind::Connection`]).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// The replies of a broadcast.
#[derive(Debug)]
pub struct Broadcast<T> {
    /// Each answering host's reply.
    pub replies: BTreeMap<String, Result<T, ClientError>>,
    /// Hosts the fleet view expected (every host it knows that the target
    /// reaches: alive, stale or gone) that did not answer.
    pub missing: Vec<String>,
}

impl Client {
    /// Connects to the first broker URL that answers.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        if cfg.urls.is_empty() {
            return Err(ClientError::new(
                ErrorKind::InvalidArgument,
                "no broker URL given",
            ));
        }
        let order = hostbus_amqp::spread(&cfg.urls, Uuid::new_v4().as_u128() as u64);
        let client = Self {
            inner: Arc::new(Inner {
                order,
                cfg,
                session: std::sync::RwLock::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
                pending: Mutex::default(),
                presence: tokio::sync::OnceCell::new(),
            }),
        };
        client.session().await?;
        Ok(client)
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Opens a new AMQP connection to the first URL that answers (for
    /// subscriptions, which own their connection).
    pub(crate) async fn open_connection(&self, purpose: &str) -> Result<Connection, ClientError> {
        let mut last = None;
        for url in &self.inner.order {
            match hostbus_amqp::connect(
                url,
                &format!("hostbus-client/{purpose}"),
                &self.inner.cfg.tls,
                self.inner.cfg.connect,
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::new(
            ErrorKind::Connection,
            last.unwrap_or_else(|| "no broker URL".to_owned()),
        ))
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        let guard = self
            .inner
            .session
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .filter(|s| s.conn.status().connected() && s.channel.status().connected())
            .cloned()
    }

    async fn session(&self) -> Result<Arc<Session>, ClientError> {
        if let Some(s) = self.live_session() {
            return Ok(s);
        }
        let _reconnecting = self.inner.reconnecting.lock().await;
        if let Some(s) = self.live_session() {
            return Ok(s);
        }
        if self
            .inner
            .session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            tracing::info!("broker connection lost; reconnecting");
        }
        let conn = self.open_connection("calls").await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let Some(inner) = inner.upgrade() else { return };
                let props = from_lapin(&d.properties);
                let Some(corr) = props.correlation_id.clone() else {
                    continue;
                };
                let reply = RawReply {
                    props,
                    body: d.data,
                };
                let mut pending = lock(&inner.pending);
                match pending.get(&corr) {
                    Some(Pending::Many(tx)) => {
                        let _ = tx.send(reply);
                    }
                    Some(Pending::One(_)) => {
                        if let Some(Pending::One(tx)) = pending.remove(&corr) {
                            let _ = tx.send(reply);
                        }
                    }
                    None => {
                        tracing::debug!(correlation_id = %corr, "late or unknown reply dropped")
                    }
                }
            }
            // The connection is gone: fail every waiting call now.
            if let Some(inner) = inner.upgrade() {
                lock(&inner.pending).clear();
            }
        });
        // Shared, not cloned per call: cloning a lapin channel showed in profiles.
        let s = Arc::new(Session {
            conn: Arc::new(conn),
            channel,
        });
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(s.clone());
        Ok(s)
    }

    /// Publishes a command and waits for the broker's confirm.
    async fn publish<C: Command>(
        &self,
        target: &Target,
        req: &C::Request,
        opts: &CallOptions,
        reply: bool,
        asynchronous: bool,
    ) -> Result<Envelope, ClientError> {
        let (env, confirm) = self
            .send::<C>(target, req, opts, reply, asynchronous)
            .await?;
        check_confirm(target, confirm.await?)?;
        Ok(env)
    }

    /// Publishes a command; returns its envelope and the pending confirm.
    async fn send<C: Command>(
        &self,
        target: &Target,
        req: &C::Request,
        opts: &CallOptions,
        reply: bool,
        asynchronous: bool,
    ) -> Result<(Envelope, lapin::PublisherConfirm), ClientError> {
        self.send_until::<C>(target, req, opts, reply, asynchronous, None)
            .await
    }

    /// [`send`](Self::send) with an absolute deadline (ms since the epoch),
    /// kept across retries of one command.
    async fn send_until<C: Command>(
        &self,
        target: &Target,
        req: &C::Request,
        opts: &CallOptions,
        reply: bool,
        asynchronous: bool,
        deadline: Option<u64>,
    ) -> Result<(Envelope, lapin::PublisherConfirm), ClientError> {
        target
            .validate()
            .map_err(|e| ClientError::from(hostbus_protocol::Error::from(e)))?;
        let cfg = &self.inner.cfg;
        let mut env = Envelope::new(C::NAME);
        if let Some(id) = opts.command_id {
            env.command_id = id;
        }
        env.content_type = cfg.content_type;
        env.sender = cfg.user();
        env.asynchronous = asynchronous;
        let now = now_ms();
        let timeout = opts.timeout.unwrap_or(cfg.timeout);
        env.deadline = Some(deadline.unwrap_or(now + timeout.as_millis() as u64));
        if reply {
            env.reply_to = Some(DIRECT_REPLY_TO.to_owned());
        }
        let body = encode(env.content_type, req)
            .map_err(|e| ClientError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let session = self.session().await?;
        let confirm = session
            .channel
            .basic_publish(
                COMMAND_EXCHANGE.into(),
                target.routing_key().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                to_lapin(&env.to_properties(now)),
            )
            .await?;
        Ok((env, confirm))
    }

    fn register(&self, corr: String, p: Pending) {
        lock(&self.inner.pending).insert(corr, p);
    }

    fn forget(&self, corr: &str) {
        lock(&self.inner.pending).remove(corr);
    }

    /// Sends one command to `host` and waits for its reply. When the
    /// broker connection is lost on the way (a broker node died, the network
    /// broke), the command is sent again with the same command id, over a
    /// new connection, until its deadline: the agent runs a command id at
    /// most once and answers a repeat from its journal.
    async fn round_trip<C: Command>(
        &self,
        host: &str,
        req: &C::Request,
        opts: &CallOptions,
        asynchronous: bool,
    ) -> Result<Reply<C::Response>, ClientError> {
        let id = opts.command_id.unwrap_or_else(Uuid::new_v4);
        let opts = CallOptions {
            command_id: Some(id),
            ..opts.clone()
        };
        let timeout = opts.timeout.unwrap_or(self.inner.cfg.timeout);
        let deadline = now_ms() + timeout.as_millis() as u64;
        let until = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let result = self
                .attempt::<C>(host, req, &opts, asynchronous, deadline, until)
                .await;
            match result {
                Err(e)
                    if e.kind() == ErrorKind::Connection
                        && tokio::time::Instant::now() + pause < until =>
                {
                    tracing::info!(command = C::NAME, command_id = %id, error = %e, "broker connection lost during a call; sending it again with the same command id");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn attempt<C: Command>(
        &self,
        host: &str,
        req: &C::Request,
        opts: &CallOptions,
        asynchronous: bool,
        deadline: u64,
        until: tokio::time::Instant,
    ) -> Result<Reply<C::Response>, ClientError> {
        let id = opts.command_id.unwrap_or_default();
        let corr = id.to_string();
        let (tx, rx) = oneshot::channel();
        self.register(corr.clone(), Pending::One(tx));
        let timeout = opts.timeout.unwrap_or(self.inner.cfg.timeout);
        let target = Target::Host(host.to_owned());
        let result = async {
            let (_, confirm) = self
                .send_until::<C>(&target, req, opts, true, asynchronous, Some(deadline))
                .await?;
            // The reply proves delivery: wait for it and for the confirm at
            // once, so the confirm's round trip adds no latency; the confirm
            // still matters when the broker returns an unroutable command.
            let reply = tokio::time::timeout_at(until, rx);
            tokio::pin!(reply);
            let waited = tokio::select! {
                r = &mut reply => r,
                c = confirm => {
                    check_confirm(&target, c?)?;
                    reply.await
                }
            };
            match waited {
                Ok(Ok(raw)) => decode_reply::<C>(&raw),
                Ok(Err(_)) => Err(ClientError::new(
                    ErrorKind::Connection,
                    "the broker connection was lost while waiting for the reply",
                )),
                Err(_) => Err(ClientError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no reply from {host} to {} within {} ms (command id {id})",
                        C::NAME,
                        timeout.as_millis()
                    ),
                )),
            }
        }
        .await;
        self.forget(&corr);
        result
    }

    /// Calls command `C` on `host` and waits for its response.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the wait, not the command: the agent may
    /// still run it.
    pub async fn call<C: Command>(
        &self,
        host: &str,
        req: C::Request,
    ) -> Result<C::Response, ClientError> {
        self.call_with::<C>(host, req, &CallOptions::default())
            .await
    }

    /// [`Client::call`] with options.
    pub async fn call_with<C: Command>(
        &self,
        host: &str,
        req: C::Request,
        opts: &CallOptions,
    ) -> Result<C::Response, ClientError> {
        match self.round_trip::<C>(host, &req, opts, false).await? {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e.into()),
            Reply::Task(t) => Err(ClientError::new(
                ErrorKind::Internal,
                format!(
                    "{} answered with task {} to a synchronous call",
                    C::NAME,
                    t.id
                ),
            )),
        }
    }

    /// Starts command `C` on `host` as a task and returns it at once.
    pub async fn submit<C: Command>(
        &self,
        host: &str,
        req: C::Request,
    ) -> Result<TaskRecord, ClientError> {
        match self
            .round_trip::<C>(host, &req, &CallOptions::default(), true)
            .await?
        {
            Reply::Task(t) => Ok(*t),
            Reply::Error(e) => Err(e.into()),
            Reply::Ok(_) => Err(ClientError::new(
                ErrorKind::Unsupported,
                format!(
                    "{} ran synchronously; read commands do not run as tasks",
                    C::NAME
                ),
            )),
        }
    }

    /// Sends command `C` to `target` without waiting for anything (a cast).
    pub async fn cast<C: Command>(
        &self,
        target: &Target,
        req: C::Request,
    ) -> Result<Uuid, ClientError> {
        Ok(self
            .publish::<C>(target, &req, &CallOptions::default(), false, false)
            .await?
            .command_id)
    }

    /// Sends command `C` to every host of `target` (`all` or a label group)
    /// and collects the replies.
    ///
    /// The hosts expected are computed once, from the fleet view: every
    /// host it knows that the target reaches. The broadcast returns as soon
    /// as every *alive* one has answered; stale and gone hosts are not
    /// waited for, but included if they answer meanwhile. An alive host that
    /// is slow to answer is checked with the broker after a moment: when
    /// its command queue has no consumer (its agent is not connected: it
    /// died since its last heartbeat), it is not waited for either. Every
    /// expected host that did not answer is in `missing`. `timeout` bounds
    /// the whole wait and is the command's deadline.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the wait, not the command.
    pub async fn broadcast<C: Command>(
        &self,
        target: &Target,
        req: C::Request,
        timeout: Duration,
    ) -> Result<Broadcast<C::Response>, ClientError> {
        let presence = self.presence().await?;
        let expected = presence.expected(target);
        let id = Uuid::new_v4();
        let corr = id.to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.register(corr.clone(), Pending::Many(tx));
        let opts = CallOptions {
            timeout: Some(timeout),
            command_id: Some(id),
        };
        let missing_of = |replies: &BTreeMap<String, Result<C::Response, ClientError>>| {
            let mut m: Vec<String> = expected
                .alive
                .iter()
                .chain(&expected.not_alive)
                .filter(|h| !replies.contains_key(*h))
                .cloned()
                .collect();
            m.sort();
            m
        };
        let published = self.publish::<C>(target, &req, &opts, true, false).await;
        if let Err(e) = published {
            self.forget(&corr);
            // Nobody bound: an empty broadcast, not an error.
            if e.kind() == ErrorKind::NoRoute {
                return Ok(Broadcast {
                    replies: BTreeMap::new(),
                    missing: missing_of(&BTreeMap::new()),
                });
            }
            return Err(e);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Alive hosts not heard from yet; emptied by replies and probes.
        let mut waiting: std::collections::BTreeSet<String> =
            expected.alive.iter().cloned().collect();
        let mut replies = BTreeMap::new();
        let mut next_probe = started + PROBE_AFTER.min(timeout / 4);
        while !waiting.is_empty() {
            let until = next_probe.min(deadline);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(raw)) => {
                    let host = match raw.props.headers.get(HOST_HEADER) {
                        Some(HeaderValue::Str(h)) => h.clone(),
                        _ => continue,
                    };
                    let value = decode_reply::<C>(&raw).and_then(|r| match r {
                        Reply::Ok(v) => Ok(v),
                        Reply::Error(e) => Err(e.into()),
                        Reply::Task(t) => Err(ClientError::new(
                            ErrorKind::Internal,
                            format!("unexpected task {}", t.id),
                        )),
                    });
                    waiting.remove(&host);
                    replies.insert(host, value);
                }
                Ok(None) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => {
                    for host in self.unconsumed(&waiting).await {
                        tracing::info!(host = %host, "broadcast: the host's queue has no consumer; not waiting for it");
                        waiting.remove(&host);
                    }
                    next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                }
            }
        }
        self.forget(&corr);
        let missing = missing_of(&replies);
        Ok(Broadcast { replies, missing })
    }

    /// Of `hosts`, those whose command queue has no consumer (or does not
    /// exist): the broker's word that their agent is not connected.
    async fn unconsumed(&self, hosts: &std::collections::BTreeSet<String>) -> Vec<String> {
        let Ok(session) = self.session().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for host in hosts {
            // A failed passive declare closes its channel: one per probe.
            let Ok(ch) = session.conn.create_channel().await else {
                break;
            };
            let declared = ch
                .queue_declare(
                    names::agent_queue(host).as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) => {
                    if q.consumer_count() == 0 {
                        out.push(host.clone());
                    }
                    let _ = ch.close(200, "probed".into()).await;
                }
                Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404) =>
                {
                    out.push(host.clone());
                }
                Err(_) => {}
            }
        }
        out
    }

    /// Declares the shared broker objects (exchanges, dead-letter queue,
    /// streams) with `settings`, as an administrator does when agents may
    /// not (docs/security.md). Objects that exist with other arguments are
    /// left as they are and returned.
    pub async fn declare_topology(
        &self,
        settings: &hostbus_amqp::topology::TopologySettings,
    ) -> Result<Vec<hostbus_amqp::topology::Mismatch>, ClientError> {
        let session = self.session().await?;
        Ok(hostbus_amqp::topology::declare_shared(&session.conn, settings).await?)
    }

    /// Removes `host` from the fleet: deletes its command queue (and so
    /// its bindings: broadcasts stop reaching it) and publishes a `forget`
    /// announcement, after which fleet views no longer list it (until its
    /// agent announces itself again). Refused with [`ErrorKind::BadState`]
    /// while the host looks alive, unless `force`. Needs the broker
    /// permissions to delete the queue and publish `<host>.forget` on
    /// `hostbus.presence`.
    pub async fn forget_host(&self, host: &str, force: bool) -> Result<(), ClientError> {
        Target::Host(host.to_owned())
            .validate()
            .map_err(|e| ClientError::from(hostbus_protocol::Error::from(e)))?;
        let presence = self.presence().await?;
        if let Some(h) = presence.host(host) {
            if h.liveness == crate::presence::Liveness::Alive && !force {
                return Err(ClientError::new(
                    ErrorKind::BadState,
                    format!(
                        "host {host} is alive (heard of {} ms ago): stop its agent first, or force",
                        h.last_seen_ms.unwrap_or_default()
                    ),
                ));
            }
        }
        let session = self.session().await?;
        let ch = session.conn.create_channel().await?;
        match ch
            .queue_delete(
                names::agent_queue(host).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404) =>
                {}
            Err(e) => return Err(e.into()),
        }
        let _ = ch.close(200, "forgot".into()).await;
        let a = Announcement {
            host_id: host.to_owned(),
            action: RosterAction::Forget,
            epoch: None,
            time: now_ms(),
            started_at: 0,
            interval_ms: 0,
            labels: Vec::new(),
            versions: None,
            capabilities: Vec::new(),
            by: self.inner.cfg.user(),
        };
        let body = encode(ContentType::MsgPack, &a)
            .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
        let mut props = AmqpProperties {
            kind: Some("announcement".into()),
            content_type: Some(ContentType::MsgPack.as_str().to_owned()),
            timestamp: Some(now_ms() / 1000),
            delivery_mode: Some(2),
            user_id: self.inner.cfg.user(),
            ..AmqpProperties::default()
        };
        props.message_id = Some(Uuid::new_v4().to_string());
        let confirm = session
            .channel
            .basic_publish(
                PRESENCE_EXCHANGE.into(),
                a.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                to_lapin(&props),
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(ClientError::new(
                ErrorKind::Connection,
                "the broker refused the forget announcement",
            ));
        }
        Ok(())
    }

    /// The fleet view (started on first use: it reads what the broker
    /// remembers of every host, then follows heartbeats and announcements).
    pub async fn presence(&self) -> Result<Presence, ClientError> {
        self.inner
            .presence
            .get_or_try_init(|| Presence::start(self.clone()))
            .await
            .cloned()
    }
}

fn check_confirm(target: &Target, confirm: Confirmation) -> Result<(), ClientError> {
    match confirm {
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(ClientError::new(
            ErrorKind::NoRoute,
            match target {
                Target::Host(h) => format!(
                    "no queue took the command for `{}`: no agent of host {h} ever declared its queue, it was forgotten, or its queue is unavailable (a broker node is down); `hostctl hosts` shows what the fleet knows of {h}",
                    target.routing_key()
                ),
                _ => format!(
                    "no queue took the command for `{}` (no host serves it)",
                    target.routing_key()
                ),
            },
        )),
        Confirmation::Nack(None) => Err(ClientError::new(
            ErrorKind::Connection,
            "the broker refused the command",
        )),
        _ => Ok(()),
    }
}

fn decode_reply<C: Command>(raw: &RawReply) -> Result<Reply<C::Response>, ClientError> {
    let ct = ContentType::parse(raw.props.content_type.as_deref())
        .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
    decode(ct, &raw.body, MAX_REPLY).map_err(|e| {
        ClientError::new(
            ErrorKind::Internal,
            format!("undecodable reply to {}: {e}", C::NAME),
        )
    })
}
