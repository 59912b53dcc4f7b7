//! The agent's life: connect (forever, with jittered backoff), declare the
//! topology, announce itself with a full inventory, consume commands,
//! publish events and heartbeats; on a lost connection start over; on
//! SIGTERM drain and say goodbye.

mod events;
mod presence;
mod serve;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_bridge::{Bridge, CallContext};
use hostbus_protocol::commands::Empty;
use hostbus_protocol::{now_ms, Event, EventAction, RosterAction};
use hostbus_protocol::{AnyRequest, AnyResponse};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::Config;
use crate::dispatch::{Dispatcher, Policy};
use crate::feed::Feed;
use crate::journal::Journal;
use crate::lane::ReplyLane;
use crate::metrics::Metrics;
use crate::settle::Settler;
use crate::stamp::Stamp;
use crate::sync::lock;
use hostbus_amqp::{redact, topology};
use presence::Facts;

/// Why a session ended.
enum SessionEnd {
    /// A clean stop was requested and done.
    Shutdown,
    /// The broker connection was lost, or the session could not start.
    Lost {
        /// Why.
        why: String,
        /// When the session began consuming, if it got that far.
        serving_since: Option<std::time::Instant>,
    },
}

impl SessionEnd {
    fn lost(why: impl Into<String>) -> Self {
        Self::Lost {
            why: why.into(),
            serving_since: None,
        }
    }
}

/// A session that consumed at least this long counts as started: its end
/// resets the reconnect backoff. One that ends sooner (its topology cannot
/// be declared, a message or the broker closes it at once) backs off like
/// a failed connection, so a sick broker or a poison message cannot make
/// the agent reconnect in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// What every command of a session publishes and settles with.
struct Lanes {
    publ: Channel,
    cmd: Channel,
    settler: Settler,
    lane: ReplyLane,
}

/// The stamped events for the bus, awaited by one session's publisher at a time.
type Events = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>>;

/// One running agent.
pub struct Agent {
    cfg: Config,
    bridge: Arc<Bridge>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    /// Host id, epoch and event sequence: the stamp on what it publishes.
    stamp: Arc<Stamp>,
    /// Where events are numbered and handed to the bindings.
    feed: Arc<Feed>,
    /// The feed's bus end, taken by `run`.
    bus_events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    started_at: u64,
    facts: Arc<Mutex<Facts>>,
    refreshing: Arc<AtomicBool>,
    journal: Arc<Journal>,
    tls: hostbus_amqp::Tls,
    /// Redeliveries seen by this process, by message id (or body hash).
    redeliveries: Mutex<HashMap<String, u32>>,
    /// Messages this process copied to the dead-letter exchange, by the same
    /// key: a redelivered one (its ack was lost with a connection) is acked
    /// without a second copy.
    dead_lettered: Mutex<std::collections::HashSet<String>>,
}

impl Agent {
    /// Opens the bridge and prepares the agent; nothing connects yet.
    pub fn new(cfg: Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let bridge = Arc::new(Bridge::open(hostbus_bridge::Config {
            uri: cfg.libvirt_uri.clone(),
            host_id: cfg.host_id.clone(),
            task_ttl: Duration::from_secs(cfg.task_ttl_s),
            reconcile_interval: Duration::from_millis(cfg.reconcile_interval_ms),
            step_pause: Duration::from_millis(cfg.step_pause_ms),
            domain_type: cfg.domain_type,
            console_log_dir: cfg.console_log_dir.clone(),
            migration_uri: cfg.migration_uri.clone(),
            peers: crate::peers::BusPeers::for_agent(&cfg)?,
            state_file: cfg.journal_path.parent().map(|d| {
                d.join(format!(
                    "{}.placement.json",
                    cfg.journal_path
                        .file_name()
                        .map_or("journal".into(), |f| f.to_string_lossy())
                ))
            }),
            ..hostbus_bridge::Config::default()
        })?);
        let stamp = Arc::new(Stamp::new(cfg.host_id.clone()));
        let (feed, bus_events) = Feed::new(stamp.clone());
        let journal = Arc::new(Journal::open(
            &cfg.journal_path,
            Duration::from_secs(cfg.journal_max_age_s),
            cfg.journal_max_entries,
        )?);
        match journal.prune() {
            Ok(n) if n > 0 => tracing::info!(dropped = n, "pruned the command journal"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune the command journal"),
        }
        let policy = Policy {
            max_payload: cfg.max_payload_bytes,
            roles: cfg.roles.clone(),
            max_object_queue: cfg.max_object_queue,
            max_deliveries: cfg.max_deliveries,
            own_login: hostbus_client::ClientConfig {
                urls: cfg.broker_urls.clone(),
                ..hostbus_client::ClientConfig::new("")
            }
            .user(),
        };
        let tls = cfg.tls()?;
        let dispatcher = Arc::new(Dispatcher::new(
            bridge.clone(),
            stamp.clone(),
            policy,
            journal.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            cfg,
            bridge,
            dispatcher,
            metrics,
            stamp,
            feed: Arc::new(feed),
            bus_events: Mutex::new(Some(bus_events)),
            started_at: now_ms(),
            facts: Arc::default(),
            refreshing: Arc::default(),
            journal,
            tls,
            redeliveries: Mutex::default(),
            dead_lettered: Mutex::default(),
        })
    }

    /// The agent's epoch.
    pub fn epoch(&self) -> Uuid {
        self.stamp.epoch()
    }

    /// Runs until `shutdown` resolves, then stops gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let agent = Arc::new(self);
        tracing::info!(host = %agent.cfg.host_id, epoch = %agent.stamp.epoch(), libvirt = %agent.cfg.libvirt_uri, "agent starting");
        // Bridge events cross from the bridge's threads to the runtime here:
        // the thread that saw a change numbers it and hands it to both
        // bindings (crate::feed), without a thread in between.
        let feed = agent.feed.clone();
        agent
            .bridge
            .subscribe_with(Box::new(move |ev| feed.bridge_event(ev)));
        let Some(bus_events) = lock(&agent.bus_events).take() else {
            anyhow::bail!("the agent runs once");
        };
        let events = Arc::new(tokio::sync::Mutex::new(bus_events));
        // The HTTP binding serves from now on, broker or not; dropping the
        // set stops it (and removes its socket).
        let mut http = tokio::task::JoinSet::new();
        let mut binding = None;
        if let Some(settings) = agent.cfg.http()? {
            let listeners = crate::http::bind(&settings).await?;
            // Heartbeats over HTTP name the libvirt and hypervisor versions
            // and the host's load before any broker session has read an
            // inventory.
            let bridge = agent.bridge.clone();
            let info = tokio::task::spawn_blocking(move || {
                let info = bridge.call(AnyRequest::HostInfo(Empty {}), &CallContext::default());
                (info, bridge.host_load())
            });
            if let Ok((info, load)) = info.await {
                if let Ok(AnyResponse::HostInfo(host)) = info {
                    agent.note_host(&host);
                }
                agent.note_load(&load);
            }
            let a = agent.clone();
            let b = Arc::new(crate::http::HttpBinding::new(
                agent.dispatcher.clone(),
                agent.feed.clone(),
                Box::new(move || a.heartbeat_now()),
                &settings,
                agent.cfg.concurrency as usize,
                agent.cfg.max_payload_bytes,
            ));
            let served = b.clone();
            binding = Some(b);
            http.spawn(async move {
                if let Err(e) = crate::http::serve(served, listeners).await {
                    tracing::error!(error = %e, "the HTTP binding stopped");
                }
            });
        }
        tokio::pin!(shutdown);
        let mut attempt: u32 = 0;
        let mut first = true;
        let stopped = loop {
            let (conn, url) = tokio::select! {
                c = agent.connect(&mut attempt) => c,
                () = &mut shutdown => break "stopped before a broker connection was made",
            };
            if !first {
                agent.metrics.reconnected();
            }
            first = false;
            match agent
                .clone()
                .session(conn, &url, events.clone(), &mut shutdown)
                .await
            {
                SessionEnd::Shutdown => break "agent stopped",
                SessionEnd::Lost { why, serving_since } => {
                    let served = serving_since.map(|t| t.elapsed());
                    if served.is_some_and(|d| d >= STABLE_SESSION) {
                        attempt = 0;
                    }
                    let wait = agent.backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        reason = %why,
                        served_ms = served.map_or(0, |d| d.as_millis() as u64),
                        wait_ms = wait.as_millis() as u64,
                        attempt,
                        "broker connection lost; reconnecting"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => break "agent stopped while reconnecting",
                    }
                }
            }
        };
        // HTTP commands in flight finish (within the bus's bound) before
        // the bridge stops; new ones are answered HOST_UNAVAILABLE.
        if let Some(b) = &binding {
            let bound = Duration::from_millis(agent.cfg.shutdown_timeout_ms);
            if !b.drain(bound).await {
                tracing::warn!(
                    bound_ms = agent.cfg.shutdown_timeout_ms,
                    "HTTP commands did not finish in time"
                );
            }
        }
        drop(http);
        agent.bridge.shutdown();
        tracing::info!("{stopped}");
        Ok(())
    }

    /// The wait before reconnection attempt `attempt` (0 first): doubling
    /// from 100 ms up to `reconnect_max_backoff_ms`, with full jitter
    /// between half and all of it.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = 100u64
            .saturating_mul(1 << attempt.min(16))
            .min(self.cfg.reconnect_max_backoff_ms);
        let jitter = (Uuid::new_v4().as_u128() % u128::from(base / 2 + 1)) as u64;
        Duration::from_millis(base / 2 + jitter)
    }

    /// Connects to the first broker that answers, retrying forever with
    /// jittered exponential backoff. Returns the connection and its URL.
    /// `attempt` counts failures; only a session that started resets it.
    async fn connect(&self, attempt: &mut u32) -> (Connection, String) {
        let order = self.cfg.broker_order();
        loop {
            let name = format!("hostbus-agent/{}", self.cfg.host_id);
            match hostbus_amqp::connect_first(&order, &name, &self.tls, self.cfg.connect_options())
                .await
            {
                Ok((c, url)) => {
                    tracing::info!(broker = %redact(&url), "connected to the broker");
                    return (c, url);
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect to the broker"),
            }
            let wait = self.backoff(*attempt);
            *attempt = attempt.saturating_add(1);
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                attempt = *attempt,
                "retrying the broker connection"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Declares the topology (the shared objects too, with
    /// `declare_exchanges`); returns the command queue's name. Queues that
    /// exist with other arguments are used as they are, with a warning.
    async fn declare(&self, conn: &Connection) -> lapin::Result<String> {
        let settings = self.cfg.topology();
        let mut mismatches = Vec::new();
        if self.cfg.declare_exchanges {
            mismatches = topology::declare_shared(conn, &settings).await?;
        }
        let (queue, mismatch) =
            topology::declare_agent_queue(conn, &self.cfg.host_id, &self.cfg.labels, &settings)
                .await?;
        mismatches.extend(mismatch);
        for m in mismatches {
            tracing::warn!(
                queue = %m.queue,
                queue_type = self.cfg.queue_type.as_str(),
                reason = %m.reason,
                "the queue exists with other arguments; using it as it is (docs/operations.md, \"Moving to quorum queues\")"
            );
        }
        Ok(queue)
    }

    async fn session(
        self: Arc<Self>,
        conn: Connection,
        url: &str,
        events: Events,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let setup = async {
            let queue = self.declare(&conn).await?;
            let cmd = conn.create_channel().await?;
            let publ = conn.create_channel().await?;
            publ.confirm_select(ConfirmSelectOptions::default()).await?;
            let prefetch = u16::try_from(self.cfg.concurrency).unwrap_or(u16::MAX);
            cmd.basic_qos(prefetch, BasicQosOptions::default()).await?;
            // The read lane: its own channel, so its acks and replies never
            // wait behind the command queue's. A broker user that may not
            // declare it (permissions from before the read lane) gets
            // none: reads then come through the command queue.
            let reads = conn.create_channel().await?;
            reads
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let read_queue = match topology::declare_read_queue(
                &reads,
                &self.cfg.host_id,
                &self.cfg.labels,
            )
            .await
            {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot declare the read queue; reads come through the command queue (docs/security.md, \"Host users\")");
                    None
                }
            };
            Ok::<_, lapin::Error>((cmd, publ, queue, reads, read_queue))
        };
        let (cmd, publ, queue, reads, read_queue) = match setup.await {
            Ok(x) => x,
            Err(e) => return SessionEnd::lost(format!("cannot set up channels and topology: {e}")),
        };
        // Events queued while disconnected are covered by the fresh inventory.
        {
            let mut rx = events.lock().await;
            while rx.try_recv().is_ok() {}
        }
        let online = match self.announce(&publ, EventAction::Online).await {
            Ok(seq) => seq,
            Err(e) => return SessionEnd::lost(format!("cannot publish agent.online: {e}")),
        };
        if let Err(e) = self.enroll(&publ, RosterAction::Online).await {
            return SessionEnd::lost(format!("cannot publish the roster announcement: {e}"));
        }
        let tag = format!("hostbus-agent-{}-{}", self.cfg.host_id, self.stamp.epoch());
        let mut consumer = match cmd
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return SessionEnd::lost(format!("cannot consume {queue}: {e}")),
        };
        let read_tag = format!("{tag}-reads");
        let mut read_consumer = match &read_queue {
            Some(q) => match reads
                .basic_consume(
                    q.as_str().into(),
                    read_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => Some(c),
                Err(e) => return SessionEnd::lost(format!("cannot consume {q}: {e}")),
            },
            None => None,
        };
        let serving_since = Some(std::time::Instant::now());
        tracing::info!(queue = %queue, read_queue = ?read_queue, labels = ?self.cfg.labels, "serving commands");

        let mut background = JoinSet::new();
        background.spawn(self.clone().publish_events(publ.clone(), events, online));
        background.spawn(self.clone().heartbeats(publ.clone()));
        {
            let journal = self.journal.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(600));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let j = journal.clone();
                    match tokio::task::spawn_blocking(move || j.prune()).await {
                        Ok(Ok(n)) if n > 0 => {
                            tracing::info!(dropped = n, "pruned the command journal")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot prune the command journal")
                        }
                        _ => {}
                    }
                }
            });
        }
        let (settler, settling) = Settler::start(cmd.clone());
        let lane = ReplyLane::new(
            url,
            &self.cfg.host_id,
            &self.tls,
            self.cfg.connect_options(),
        );
        // What every command needs, shared: cloning lapin channels per
        // command showed in profiles.
        let lanes = Arc::new(Lanes {
            publ: publ.clone(),
            cmd: cmd.clone(),
            settler,
            lane,
        });
        let (read_settler, read_settling) = Settler::start(reads.clone());
        let read_lanes = Arc::new(Lanes {
            publ: publ.clone(),
            cmd: reads.clone(),
            settler: read_settler,
            lane: ReplyLane::new(
                url,
                &self.cfg.host_id,
                &self.tls,
                self.cfg.connect_options(),
            ),
        });
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency as usize));
        let mut inflight = JoinSet::new();
        let lost = |why: String| SessionEnd::Lost { why, serving_since };
        let end = loop {
            // A delivery from the command queue (`read` false) or from the
            // read queue, handled alike but admitted by its own rule.
            let (read, delivery) = tokio::select! {
                d = consumer.next() => (false, d),
                d = async { read_consumer.as_mut().expect("guarded").next().await }, if read_consumer.is_some() => (true, d),
                Some(done) = background.join_next() => {
                    let why = done.unwrap_or_else(|e| format!("a background task failed: {e}"));
                    break lost(why);
                }
                Some(_) = inflight.join_next(), if !inflight.is_empty() => continue,
                () = shutdown.as_mut() => break SessionEnd::Shutdown,
            };
            let which = if read { "read consumer" } else { "consumer" };
            let d = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => break lost(format!("{which} failed: {e}")),
                None => break lost(format!("the broker cancelled the {which}")),
            };
            let permit = match permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => break lost("the command semaphore closed".into()),
            };
            // Admitted here, in arrival order: commands on one object then
            // run in that order.
            let props = hostbus_amqp::from_lapin(&d.properties);
            let deliveries = self.deliveries(&d, &props);
            let (admission, lanes) = if read {
                (
                    self.admit_read(&props, &d.data, deliveries),
                    read_lanes.clone(),
                )
            } else {
                (self.admit(&props, &d.data, deliveries), lanes.clone())
            };
            let agent = self.clone();
            inflight.spawn(async move {
                let _permit = permit;
                agent.serve(&lanes, admission, props, d, deliveries).await;
            });
        };
        match end {
            lost @ SessionEnd::Lost { .. } => {
                background.abort_all();
                // In-flight commands finish on their own; unacked ones are redelivered.
                inflight.detach_all();
                settling.abort();
                read_settling.abort();
                lost
            }
            SessionEnd::Shutdown => {
                tracing::info!(in_flight = inflight.len(), "stopping: no new commands");
                if let Err(e) = cmd
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(error = %e, "cannot cancel the consumer");
                }
                if read_consumer.is_some() {
                    if let Err(e) = reads
                        .basic_cancel(read_tag.as_str().into(), BasicCancelOptions::default())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot cancel the read consumer");
                    }
                }
                let bound = Duration::from_millis(self.cfg.shutdown_timeout_ms);
                let drained = tokio::time::timeout(bound, async {
                    while inflight.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        left = inflight.len(),
                        bound_ms = self.cfg.shutdown_timeout_ms,
                        "in-flight commands did not finish in time; they will be redelivered"
                    );
                    inflight.abort_all();
                }
                // Acks still queued go out before the connection closes.
                drop(lanes);
                drop(read_lanes);
                let _ = tokio::time::timeout(Duration::from_secs(1), settling).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), read_settling).await;
                // Let pending events out before saying goodbye.
                tokio::time::sleep(Duration::from_millis(100)).await;
                background.abort_all();
                if let Err(e) = self.announce(&publ, EventAction::Offline).await {
                    tracing::warn!(error = %e, "cannot publish agent.offline");
                }
                if let Err(e) = self.enroll(&publ, RosterAction::Offline).await {
                    tracing::warn!(error = %e, "cannot publish the roster's offline announcement");
                }
                let _ = conn.close(200, "agent stopping".into()).await;
                SessionEnd::Shutdown
            }
        }
    }
}
