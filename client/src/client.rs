//! The call session and the call machinery: calls with deadlines, casts,
//! asynchronous submissions, over the broker or a local agent's socket
//! (`socket.rs`). Broadcasts are in `broadcast.rs`, fleet administration in
//! `admin.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_amqp::{from_lapin, to_lapin};
use hostbus_protocol::names::{Target, COMMAND_EXCHANGE, DIRECT_REPLY_TO};
use hostbus_protocol::types::TaskRecord;
use hostbus_protocol::{encode, now_ms, Access, Command, Envelope, Reply};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::config::{CallOptions, ClientConfig};
use crate::connection::{close, closed_error, lock, Connector, Ties};
use crate::error::{ClientError, ErrorKind};
use crate::presence::Presence;
use crate::reply::{decode_reply, response, RawReply};
use crate::socket::Socket;

/// A call or broadcast waiting for replies.
pub(crate) enum Pending {
    One(oneshot::Sender<RawReply>),
    Many(mpsc::UnboundedSender<RawReply>),
}

/// The connection and channel calls go out on. The session's reply reader
/// holds the connection too: it closes it when the client closes or is
/// dropped.
pub(crate) struct Session {
    pub(crate) conn: Arc<Connection>,
    pub(crate) channel: Channel,
}

/// How a command goes out.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mode {
    /// Ask for a reply (to direct reply-to).
    pub(crate) reply: bool,
    /// Ask for a task.
    pub(crate) asynchronous: bool,
    /// An absolute deadline, ms since the epoch, kept across retries of
    /// one command; else now plus the call's timeout.
    pub(crate) deadline: Option<u64>,
    /// Send it on the read lane (`read.host.<id>`, ...): the agents' classic
    /// read queues instead of their durable command queues. Reads only.
    pub(crate) read_lane: bool,
}

/// How long a read on the read lane waits for its reply before it is sent
/// again with the same command id (then twice as long, and so on): a read
/// queue goes with the broker node it lives on, taking the reads in it.
const READ_RESEND: Duration = Duration::from_secs(2);

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    connector: Connector,
    /// The local agent's socket, when the client goes through one instead
    /// of the broker.
    pub(crate) socket: Option<Arc<Socket>>,
    /// The live session; read without waiting on every call.
    session: std::sync::RwLock<Option<Arc<Session>>>,
    /// Held while (re)connecting, so one task reconnects and the others wait.
    reconnecting: tokio::sync::Mutex<()>,
    /// Waiting calls and broadcasts by correlation id, with the number of
    /// the session that was current when they registered.
    pending: Mutex<HashMap<String, (u64, Pending)>>,
    /// Number of the latest session.
    session_gen: std::sync::atomic::AtomicU64,
    presence: tokio::sync::OnceCell<Presence>,
    /// The tasks that hold a connection (each session's reply reader, the
    /// fleet view's, the subscriptions'), which [`Client::close`] tells to
    /// close it and waits for.
    pub(crate) ties: Ties,
}

/// A connection to the bus, or to one host through its agent's socket
/// ([`ClientConfig::socket`]). Cheap to clone; reconnects on its own when
/// the connection is lost (calls in flight at that moment are sent again
/// with the same command id until their deadline).
///
/// # Closing
/// A client holds broker connections: one for calls, one for the fleet
/// view once [`Client::presence`] (or a broadcast) started it, and one per
/// [`Subscription`](crate::Subscription). Call [`Client::close`] when done:
/// it closes them all with AMQP's `connection.close`, so the broker logs a
/// clean close instead of a client that vanished, and it returns within
/// about two seconds even when the broker is gone.
///
/// Dropping the last clone without closing sends the same
/// `connection.close` for the call connection and the fleet view's, but
/// without waiting: the client's tasks on the tokio runtime it was
/// connected on see it gone and close them there. That reaches the broker
/// if the runtime keeps running for a moment, as in a long-running
/// program; a program that returns from `main`, or shuts its runtime down,
/// right after the drop ends first (the broker then logs `client
/// unexpectedly closed TCP connection`): call `close` instead. Dropping
/// never blocks and never panics, even outside a runtime. Each
/// subscription holds a clone of its client, so a client with a
/// subscription open stays connected until the subscription ends too.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first broker URL that answers, or, with
    /// [`ClientConfig::socket`] set, to the agent on that socket (opening
    /// no broker connection).
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let socket = match &cfg.socket {
            Some(path) => Some(Arc::new(Socket::connect(path).await?.0)),
            None if cfg.urls.is_empty() => {
                return Err(ClientError::new(
                    ErrorKind::InvalidArgument,
                    "no broker URL given",
                ))
            }
            None => None,
        };
        let client = Self {
            inner: Arc::new(Inner {
                connector: Connector::new(&cfg),
                socket,
                cfg,
                session: std::sync::RwLock::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
                pending: Mutex::default(),
                session_gen: std::sync::atomic::AtomicU64::new(0),
                presence: tokio::sync::OnceCell::new(),
                ties: Ties::new(),
            }),
        };
        if client.inner.socket.is_none() {
            client.session().await?;
        }
        Ok(client)
    }

    /// The host the agent socket serves, when the client goes through one
    /// ([`ClientConfig::socket`]); `None` over the broker.
    pub fn local_host(&self) -> Option<&str> {
        self.inner.socket.as_deref().map(Socket::host)
    }

    /// Fails with [`ErrorKind::Unsupported`] when the client goes through
    /// a local agent's socket: `what` needs the broker.
    pub(crate) fn broker_only(&self, what: &str) -> Result<(), ClientError> {
        match &self.inner.socket {
            Some(s) => Err(ClientError::new(
                ErrorKind::Unsupported,
                format!(
                    "{what} needs a broker; this client drives host {} through its agent socket {}",
                    s.host(),
                    s.path().display()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Over a socket: refuses a call to another host than the one the
    /// agent serves (nothing is sent).
    fn local(&self, socket: &Socket, host: &str) -> Result<(), ClientError> {
        if host == socket.host() {
            return Ok(());
        }
        Err(ClientError::new(
            ErrorKind::NoRoute,
            format!(
                "this client drives host {} through its agent socket {}; {host} is another host (a socket serves one host)",
                socket.host(),
                socket.path().display()
            ),
        ))
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Opens a new AMQP connection to the first URL that answers and sets
    /// it up (for subscriptions, which own their connection); see
    /// `Connector::open`.
    pub(crate) async fn open_connection<T>(
        &self,
        purpose: &str,
        setup: impl AsyncFnOnce(&Connection) -> Result<T, ClientError>,
    ) -> Result<(Connection, T), ClientError> {
        self.inner.connector.open(purpose, setup).await
    }

    /// Closes every broker connection this client (and its clones)
    /// opened, with AMQP's `connection.close`: the call connection, the
    /// fleet view's, and those of the subscriptions still open, which then
    /// end. All are closed at once; the broker's confirmation is awaited at
    /// most two seconds, so a broker that is gone does not hold up the
    /// caller. Afterwards, calls, broadcasts and new subscriptions through
    /// any clone fail with [`ErrorKind::BadState`]; a [`Presence`] taken
    /// from the client keeps the view it had. Over an agent's socket there
    /// is no broker connection: the fleet view's polling stops. Closing a
    /// closed client does nothing.
    ///
    /// What dropping without closing does is said on [`Client`].
    ///
    /// # Errors
    /// The first connection that could not be closed cleanly (the broker
    /// did not confirm in time: [`ErrorKind::Timeout`]); it is given up on
    /// all the same.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the client closed (no new calls) but may
    /// leave connections open until their tasks finish closing them.
    pub async fn close(self) -> Result<(), ClientError> {
        // No reconnection is under way, and none starts after this.
        let _reconnecting = self.inner.reconnecting.lock().await;
        // Every connection's task closes it: the call session's reply
        // reader, the fleet view's, the subscriptions'.
        self.inner.ties.close();
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.inner.ties.ended().await
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

    /// The live session, (re)connecting first if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ClientError> {
        self.broker_only("a broker session")?;
        if let Some(s) = self.live_session() {
            return Ok(s);
        }
        let _reconnecting = self.inner.reconnecting.lock().await;
        if self.inner.ties.closed() {
            return Err(closed_error());
        }
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
        let (conn, (channel, mut consumer)) = self
            .open_connection("calls", async |conn| {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let consumer = channel
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
                Ok((channel, consumer))
            })
            .await?;
        let gen = self
            .inner
            .session_gen
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let conn = Arc::new(conn);
        let inner = Arc::downgrade(&self.inner);
        let dropped = self.inner.ties.dropped();
        let Some(mut tie) = self.inner.ties.tie() else {
            let _ = close(&conn, "client closed").await;
            return Err(closed_error());
        };
        let held = conn.clone();
        tokio::spawn(async move {
            let routed = async {
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
                        Some((_, Pending::Many(tx))) => {
                            let _ = tx.send(reply);
                        }
                        Some((_, Pending::One(_))) => {
                            if let Some((_, Pending::One(tx))) = pending.remove(&corr) {
                                let _ = tx.send(reply);
                            }
                        }
                        None => {
                            tracing::debug!(correlation_id = %corr, "late or unknown reply dropped")
                        }
                    }
                }
                // The connection is gone: fail the calls that waited on it
                // now (not those of a newer session).
                if let Some(inner) = inner.upgrade() {
                    lock(&inner.pending).retain(|_, (g, _)| *g > gen);
                }
            };
            tokio::select! {
                () = routed => {}
                () = dropped => {}
                () = tie.client_closed() => {}
            }
            // Lost, or the client closed or was dropped: the connection is
            // closed here, also a session's that was retired (see
            // `confirmed`), whose reader still routes the replies of the
            // calls it carried. lapin would never close it by itself, as
            // the reader's consumer keeps its channel open.
            let closed = close(&held, "client closed").await;
            tie.end(&closed);
        });
        // Shared, not cloned per call: cloning a lapin channel showed in profiles.
        let s = Arc::new(Session { conn, channel });
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(s.clone());
        Ok(s)
    }

    /// Publishes a command and waits for the broker's confirm.
    pub(crate) async fn publish<C: Command>(
        &self,
        target: &Target,
        req: &C::Request,
        opts: &CallOptions,
        mode: Mode,
    ) -> Result<Envelope, ClientError> {
        let (env, confirm) = self.send::<C>(target, req, opts, mode).await?;
        self.confirmed(target, confirm.await?)?;
        Ok(env)
    }

    /// Checks a publish's confirm. A negative one (a queue the command was
    /// routed to refused it) also retires the channel: RabbitMQ 3.10
    /// registers a channel with each quorum queue it publishes to on its
    /// first publish, and a channel whose registration timed out (a queue's
    /// leader was busy or moving) is refused by that queue for good. The
    /// retired session's connection stays open for the replies of the
    /// calls it carried, and is closed with the client.
    fn confirmed(&self, target: &Target, confirm: Confirmation) -> Result<(), ClientError> {
        let checked = check_confirm(target, confirm);
        if checked
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Connection)
        {
            *self
                .inner
                .session
                .write()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        checked
    }

    /// Publishes a command; returns its envelope and the pending confirm.
    async fn send<C: Command>(
        &self,
        target: &Target,
        req: &C::Request,
        opts: &CallOptions,
        mode: Mode,
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
        env.asynchronous = mode.asynchronous;
        let now = now_ms();
        let timeout = opts.timeout.unwrap_or(cfg.timeout);
        env.deadline = Some(mode.deadline.unwrap_or(now + timeout.as_millis() as u64));
        if mode.reply {
            env.reply_to = Some(DIRECT_REPLY_TO.to_owned());
        }
        let body = encode(env.content_type, req)
            .map_err(|e| ClientError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let session = self.session().await?;
        let confirm = session
            .channel
            .basic_publish(
                COMMAND_EXCHANGE.into(),
                if mode.read_lane {
                    target.read_key()
                } else {
                    target.routing_key()
                }
                .as_str()
                .into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                to_lapin(&{
                    let mut props = env.to_properties(now);
                    if mode.read_lane {
                        // No per-message TTL on the read lane: its queue is
                        // bounded and short-lived, and the agent refuses a
                        // read past its deadline anyway (EXPIRED).
                        props.expiration = None;
                    }
                    props
                }),
            )
            .await?;
        Ok((env, confirm))
    }

    /// Routes replies with correlation id `corr` to `p`.
    pub(crate) fn register(&self, corr: String, p: Pending) {
        let gen = self
            .inner
            .session_gen
            .load(std::sync::atomic::Ordering::SeqCst);
        lock(&self.inner.pending).insert(corr, (gen, p));
    }

    /// Stops routing replies with correlation id `corr`.
    pub(crate) fn forget(&self, corr: &str) {
        lock(&self.inner.pending).remove(corr);
    }

    /// Sends one command to `host` and waits for its reply. When the
    /// connection is lost on the way (a broker node died, the network
    /// broke, the agent closed its socket), the command is sent again with
    /// the same command id, over a new connection, until its deadline: the
    /// agent runs a command id at most once, whichever binding carries it,
    /// and answers a repeat from its journal.
    pub(crate) async fn round_trip<C: Command>(
        &self,
        host: &str,
        req: &C::Request,
        opts: &CallOptions,
        asynchronous: bool,
    ) -> Result<Reply<C::Response>, ClientError> {
        if self.inner.ties.closed() {
            return Err(closed_error());
        }
        let id = opts.command_id.unwrap_or_else(Uuid::new_v4);
        let opts = CallOptions {
            command_id: Some(id),
            ..opts.clone()
        };
        let timeout = opts.timeout.unwrap_or(self.inner.cfg.timeout);
        let deadline = now_ms() + timeout.as_millis() as u64;
        let until = tokio::time::Instant::now() + timeout;
        if let Some(s) = &self.inner.socket {
            self.local(s, host)?;
        }
        let mut pause = Duration::from_millis(100);
        loop {
            let result = match &self.inner.socket {
                Some(s) => {
                    let ct = self.inner.cfg.content_type;
                    let call = s.call::<C>(req, ct, id, deadline, asynchronous);
                    tokio::time::timeout_at(until, call)
                        .await
                        .unwrap_or_else(|_| Err(no_reply::<C>(host, timeout, id)))
                }
                None => {
                    self.attempt::<C>(host, req, &opts, asynchronous, deadline, until)
                        .await
                }
            };
            match result {
                Err(e)
                    if e.kind() == ErrorKind::Connection
                        && tokio::time::Instant::now() + pause < until =>
                {
                    tracing::info!(command = C::NAME, command_id = %id, error = %e, "connection lost during a call; sending it again with the same command id");
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
            let mut mode = Mode {
                reply: true,
                asynchronous,
                deadline: Some(deadline),
                read_lane: C::ACCESS == Access::Read,
            };
            let (_, confirm) = self.send::<C>(&target, req, opts, mode).await?;
            // The reply proves delivery: wait for it and for the confirm at
            // once, so the confirm's round trip adds no latency; the confirm
            // still matters when the broker returns an unroutable command.
            let reply = tokio::time::timeout_at(until, rx);
            tokio::pin!(reply);
            let mut confirm = Some(Box::pin(confirm));
            let mut resend = READ_RESEND;
            let mut resend_at = tokio::time::Instant::now() + resend;
            let waited = loop {
                tokio::select! {
                    r = &mut reply => break r,
                    c = async { confirm.as_mut().expect("guarded").await }, if confirm.is_some() => {
                        confirm = None;
                        match self.confirmed(&target, c?) {
                            Ok(()) => {}
                            // No read queue took it: the agent is away (its
                            // read queue goes with its connection) or older
                            // than the read lane. Its durable queue takes it.
                            Err(e) if mode.read_lane && e.kind() == ErrorKind::NoRoute => {
                                mode.read_lane = false;
                                let (_, c) = self.send::<C>(&target, req, opts, mode).await?;
                                confirm = Some(Box::pin(c));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    () = tokio::time::sleep_until(resend_at), if mode.read_lane && confirm.is_none() => {
                        // A read lost with its queue's broker node: the same
                        // read again, same id (a read runs twice harmlessly).
                        tracing::info!(command = C::NAME, command_id = %id, "no reply to a read yet; sending it again");
                        let (_, c) = self.send::<C>(&target, req, opts, mode).await?;
                        confirm = Some(Box::pin(c));
                        resend *= 2;
                        resend_at = tokio::time::Instant::now() + resend;
                    }
                }
            };
            match waited {
                Ok(Ok(raw)) => decode_reply::<C>(&raw),
                Ok(Err(_)) => Err(ClientError::new(
                    ErrorKind::Connection,
                    "the broker connection was lost while waiting for the reply",
                )),
                Err(_) => Err(no_reply::<C>(host, timeout, id)),
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
        response::<C>(self.round_trip::<C>(host, &req, opts, false).await?)
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
    ///
    /// Over an agent's socket, HTTP has no one-way message: the command is
    /// posted to the one host if `target` reaches it (else
    /// [`ErrorKind::NoRoute`], as for a target no queue is bound to), and
    /// its reply is awaited and dropped, as nobody reads a cast's reply on
    /// the bus.
    pub async fn cast<C: Command>(
        &self,
        target: &Target,
        req: C::Request,
    ) -> Result<Uuid, ClientError> {
        if let Some(s) = &self.inner.socket {
            let reached = self.presence().await?.expected(target);
            if reached.alive.is_empty() && reached.not_alive.is_empty() {
                return Err(ClientError::new(
                    ErrorKind::NoRoute,
                    format!(
                        "`{}` does not reach host {}, the one its agent socket {} serves",
                        target.routing_key(),
                        s.host(),
                        s.path().display()
                    ),
                ));
            }
            let id = Uuid::new_v4();
            let opts = CallOptions {
                command_id: Some(id),
                ..CallOptions::default()
            };
            self.round_trip::<C>(s.host(), &req, &opts, false).await?;
            return Ok(id);
        }
        Ok(self
            .publish::<C>(target, &req, &CallOptions::default(), Mode::default())
            .await?
            .command_id)
    }

    /// The fleet view (started on first use: it reads what the broker
    /// remembers of every host, then follows heartbeats and announcements).
    /// Over an agent's socket, the one host it serves, from the agent's
    /// heartbeat (read again every heartbeat interval).
    pub async fn presence(&self) -> Result<Presence, ClientError> {
        self.inner
            .presence
            .get_or_try_init(|| async {
                let tie = self.inner.ties.tie().ok_or_else(closed_error)?;
                match &self.inner.socket {
                    Some(s) => Presence::local(s.clone(), tie).await,
                    None => Presence::start(self.inner.connector.clone(), tie).await,
                }
            })
            .await
            .cloned()
    }
}

/// The error of a call whose reply did not come in time.
fn no_reply<C: Command>(host: &str, timeout: Duration, id: Uuid) -> ClientError {
    ClientError::new(
        ErrorKind::Timeout,
        format!(
            "no reply from {host} to {} within {} ms (command id {id})",
            C::NAME,
            timeout.as_millis()
        ),
    )
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
            format!(
                "the broker refused the command for `{}`: a queue it was routed to could not take it (its leader is busy or moving); it was not delivered there",
                target.routing_key()
            ),
        )),
        _ => Ok(()),
    }
}
