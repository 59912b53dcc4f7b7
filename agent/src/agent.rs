//! The agent's life: connect (forever, with jittered backoff), declare the
//! topology, announce itself with a full inventory, consume commands,
//! publish events and heartbeats; on a lost connection start over; on
//! SIGTERM drain and say goodbye.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_bridge::{Bridge, ObjectEvent};
use hostbus_protocol::envelope::VERSION_HEADER;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::names;
use hostbus_protocol::types::{HealthStatus, Inventory, ObjectClass, Record};
use hostbus_protocol::{
    encode, now_ms, AmqpProperties, Announcement, ContentType, Event, EventAction, HeaderValue,
    Heartbeat, RosterAction, COMMANDS, PROTOCOL_VERSION,
};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::Config;
use crate::dispatch::{Admission, Dispatcher, Policy, ReplyMessage};
use crate::journal::Journal;
use crate::lane::{LaneError, ReplyLane};
use crate::metrics::Metrics;
use crate::settle::{Settle, Settler};
use hostbus_amqp::{classify_reply_to, redact, to_lapin, topology, ReplyAddress};

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

/// Header in which quorum queues count earlier deliveries of a message.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

#[derive(Clone, Default)]
struct Facts {
    libvirt: String,
    hypervisor: String,
    vms_active: u32,
    memory_free_kib: u64,
    load_avg_milli: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every command of a session publishes and settles with.
struct Lanes {
    publ: Channel,
    cmd: Channel,
    settler: Settler,
    lane: ReplyLane,
}

/// One running agent.
pub struct Agent {
    cfg: Config,
    bridge: Arc<Bridge>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    epoch: Uuid,
    seq: Arc<AtomicU64>,
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

/// What identifies a message across its redeliveries: its message id, or
/// a hash of its body when it has none.
fn message_key(d: &lapin::message::Delivery, props: &AmqpProperties) -> String {
    props.message_id.clone().unwrap_or_else(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        d.data.hash(&mut h);
        format!("body:{:x}", h.finish())
    })
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
            domain_type: cfg.bridge_domain_type()?,
            console_log_dir: cfg.bridge_console_log_dir(),
            ..hostbus_bridge::Config::default()
        })?);
        let epoch = Uuid::new_v4();
        let seq = Arc::new(AtomicU64::new(0));
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
            roles: cfg.role_map()?,
            max_object_queue: cfg.max_object_queue,
            max_deliveries: cfg.max_deliveries,
        };
        let tls = cfg.tls()?;
        let dispatcher = Arc::new(Dispatcher::new(
            bridge.clone(),
            cfg.host_id.clone(),
            epoch,
            seq.clone(),
            policy,
            journal.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            cfg,
            bridge,
            dispatcher,
            metrics,
            epoch,
            seq,
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
        self.epoch
    }

    /// Runs until `shutdown` resolves, then stops gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let agent = Arc::new(self);
        tracing::info!(host = %agent.cfg.host_id, epoch = %agent.epoch, libvirt = %agent.cfg.libvirt_uri, "agent starting");
        // Bridge events cross from the bridge's threads to the runtime here.
        let (ev_tx, ev_rx) = mpsc::channel::<ObjectEvent>(10_000);
        let bridge_rx = agent.bridge.subscribe();
        std::thread::Builder::new()
            .name("hostbus-event-pump".into())
            .spawn(move || {
                for ev in bridge_rx {
                    if ev_tx.blocking_send(ev).is_err() {
                        return;
                    }
                }
            })?;
        let events = Arc::new(tokio::sync::Mutex::new(ev_rx));
        tokio::pin!(shutdown);
        let mut attempt: u32 = 0;
        let mut first = true;
        loop {
            let (conn, url) = tokio::select! {
                c = agent.connect(&mut attempt) => c,
                () = &mut shutdown => {
                    tracing::info!("stopping before a broker connection was made");
                    agent.bridge.shutdown();
                    return Ok(());
                }
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
                SessionEnd::Shutdown => {
                    agent.bridge.shutdown();
                    tracing::info!("agent stopped");
                    return Ok(());
                }
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
                        () = &mut shutdown => {
                            agent.bridge.shutdown();
                            tracing::info!("agent stopped while reconnecting");
                            return Ok(());
                        }
                    }
                }
            }
        }
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
            for url in &order {
                let name = format!("hostbus-agent/{}", self.cfg.host_id);
                match hostbus_amqp::connect(url, &name, &self.tls, self.cfg.connect_options()).await
                {
                    Ok(c) => {
                        tracing::info!(broker = %redact(url), "connected to the broker");
                        return (c, url.clone());
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot connect to the broker"),
                }
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

    /// How many times this message has been delivered, this time included:
    /// the broker's count where the queue keeps one (quorum queues'
    /// `x-delivery-count`, which survives agent restarts and connection
    /// losses), else this process's count of redeliveries.
    fn deliveries(&self, d: &lapin::message::Delivery, props: &AmqpProperties) -> u32 {
        let broker = match props.headers.get(DELIVERY_COUNT_HEADER) {
            Some(HeaderValue::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX).saturating_add(1),
            _ => 1,
        };
        if !d.redelivered {
            return broker;
        }
        let key = message_key(d, props);
        let mut seen = lock(&self.redeliveries);
        if seen.len() > 10_000 {
            seen.clear();
        }
        let n = seen.entry(key).or_insert(1);
        *n = n.saturating_add(1);
        (*n).max(broker)
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
        events: Arc<tokio::sync::Mutex<mpsc::Receiver<ObjectEvent>>>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let setup = async {
            let queue = self.declare(&conn).await?;
            let cmd = conn.create_channel().await?;
            let publ = conn.create_channel().await?;
            publ.confirm_select(ConfirmSelectOptions::default()).await?;
            let prefetch = u16::try_from(self.cfg.concurrency).unwrap_or(u16::MAX);
            cmd.basic_qos(prefetch, BasicQosOptions::default()).await?;
            Ok::<_, lapin::Error>((cmd, publ, queue))
        };
        let (cmd, publ, queue) = match setup.await {
            Ok(x) => x,
            Err(e) => return SessionEnd::lost(format!("cannot set up channels and topology: {e}")),
        };
        // Events queued while disconnected are covered by the fresh inventory.
        {
            let mut rx = events.lock().await;
            while rx.try_recv().is_ok() {}
        }
        if let Err(e) = self.announce(&publ, EventAction::Online).await {
            return SessionEnd::lost(format!("cannot publish agent.online: {e}"));
        }
        if let Err(e) = self.enroll(&publ, RosterAction::Online).await {
            return SessionEnd::lost(format!("cannot publish the roster announcement: {e}"));
        }
        let tag = format!("hostbus-agent-{}-{}", self.cfg.host_id, self.epoch);
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
        let serving_since = Some(std::time::Instant::now());
        tracing::info!(queue = %queue, labels = ?self.cfg.labels, "serving commands");

        let mut background = JoinSet::new();
        {
            let agent = self.clone();
            let publ = publ.clone();
            background.spawn(async move {
                let mut rx = events.lock().await;
                while let Some(ev) = rx.recv().await {
                    if let Err(e) = agent.publish_event(&publ, ev).await {
                        return format!("cannot publish an event: {e}");
                    }
                }
                "the bridge's event stream ended".to_owned()
            });
        }
        {
            let agent = self.clone();
            let publ = publ.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(agent.cfg.heartbeat_interval());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = agent.publish_heartbeat(&publ).await {
                        return format!("cannot publish a heartbeat: {e}");
                    }
                }
            });
        }

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
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency as usize));
        let mut inflight = JoinSet::new();
        let lost = |why: String| SessionEnd::Lost { why, serving_since };
        let end = loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(d)) => {
                        let permit = match permits.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => break lost("the command semaphore closed".into()),
                        };
                        // Admitted here, in arrival order: commands on one
                        // object then run in that order.
                        let props = hostbus_amqp::from_lapin(&d.properties);
                        let deliveries = self.deliveries(&d, &props);
                        let admission = self.dispatcher.admit(&props, &d.data, deliveries);
                        let (agent, lanes) = (self.clone(), lanes.clone());
                        inflight.spawn(async move {
                            let _permit = permit;
                            agent.serve(&lanes, admission, props, d, deliveries).await;
                        });
                    }
                    Some(Err(e)) => break lost(format!("consumer failed: {e}")),
                    None => break lost("the broker cancelled the consumer".into()),
                },
                Some(done) = background.join_next() => {
                    let why = done.unwrap_or_else(|e| format!("a background task failed: {e}"));
                    break lost(why);
                }
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                () = shutdown.as_mut() => break SessionEnd::Shutdown,
            }
        };
        match end {
            lost @ SessionEnd::Lost { .. } => {
                background.abort_all();
                // In-flight commands finish on their own; unacked ones are redelivered.
                inflight.detach_all();
                settling.abort();
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
                let _ = tokio::time::timeout(Duration::from_secs(1), settling).await;
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

    /// Handles one admitted delivery: reply first, then ack.
    async fn serve(
        &self,
        lanes: &Lanes,
        admission: Admission,
        props: AmqpProperties,
        d: lapin::message::Delivery,
        deliveries: u32,
    ) {
        let tag = d.delivery_tag;
        let handled = match admission {
            Admission::Done(h) => h,
            Admission::Ready(a) => self.dispatcher.run(a).await,
        };
        let mut dead = false;
        if let Some(reason) = &handled.dead_letter {
            if let Err(e) = self
                .dead_letter(&lanes.publ, props.clone(), &d, reason, &handled.outcome)
                .await
            {
                tracing::warn!(error = %e, "cannot dead-letter a message; it will be redelivered");
                lanes.settler.settle(Settle::Requeue(tag));
                return;
            }
            dead = true;
        }
        if let Some(reply) = handled.reply {
            // A message seen before may have been redelivered because its
            // reply closed our connection: reply where that cannot happen.
            let risky = deliveries > 1 && classify_reply_to(&reply.to) == ReplyAddress::Direct;
            let sent = if risky {
                match lanes
                    .lane
                    .publish(&reply, || lanes.cmd.status().connected())
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(LaneError::Refused(e)) => {
                        tracing::warn!(command = %handled.command, reply_to = %reply.to, error = %e, "the broker refused this reply address; not replying to it again");
                        let why = format!("the broker closed the connection when given reply_to {:?}; not replied", reply.to);
                        if !dead {
                            if let Err(e) = self
                                .dead_letter(&lanes.publ, props, &d, &why, "BAD_ENVELOPE")
                                .await
                            {
                                tracing::warn!(error = %e, "cannot dead-letter a message; it will be redelivered");
                                lanes.settler.settle(Settle::Requeue(tag));
                                return;
                            }
                        }
                        Ok(())
                    }
                    Err(LaneError::Unavailable(e)) => Err(anyhow::anyhow!(e)),
                }
            } else {
                self.publish_reply(&lanes.publ, &lanes.cmd, reply).await
            };
            if let Err(e) = sent {
                tracing::warn!(command = %handled.command, error = %e, "cannot publish the reply; the command will be redelivered");
                lanes.settler.settle(Settle::Requeue(tag));
                return;
            }
        }
        lanes.settler.settle(Settle::Ack(tag));
    }

    /// Sends the original message to the dead-letter exchange, with the
    /// reason, the error code and this host in its headers, for inspection;
    /// once per message: a redelivery of one this process already copied
    /// (the ack was lost with its connection) is only acked.
    async fn dead_letter(
        &self,
        publ: &Channel,
        mut props: AmqpProperties,
        d: &lapin::message::Delivery,
        reason: &str,
        code: &str,
    ) -> anyhow::Result<()> {
        let key = message_key(d, &props);
        if d.redelivered && lock(&self.dead_lettered).contains(&key) {
            tracing::info!(
                code,
                "a redelivered message was dead-lettered before; acked without another copy"
            );
            return Ok(());
        }
        props.expiration = None;
        props.headers.insert(
            "x-hostbus-dead-reason".into(),
            HeaderValue::Str(reason.to_owned()),
        );
        props.headers.insert(
            "x-hostbus-dead-code".into(),
            HeaderValue::Str(code.to_owned()),
        );
        props.headers.insert(
            "x-hostbus-dead-host".into(),
            HeaderValue::Str(self.cfg.host_id.clone()),
        );
        props.headers.insert(
            "x-hostbus-dead-at".into(),
            HeaderValue::Int(i64::try_from(now_ms()).unwrap_or(i64::MAX)),
        );
        self.publish_confirmed(
            publ,
            names::DEAD_LETTER_EXCHANGE,
            &names::agent_queue(&self.cfg.host_id),
            &d.data,
            props,
        )
        .await?;
        {
            let mut copied = lock(&self.dead_lettered);
            if copied.len() > 10_000 {
                copied.clear();
            }
            copied.insert(key);
        }
        self.metrics.dead_lettered(code);
        tracing::warn!(reason, code, "message dead-lettered");
        Ok(())
    }

    /// Publishes a reply before the command is acked.
    ///
    /// A reply to direct reply-to goes out on the command channel without a
    /// confirm: the broker handles a channel's frames in order, so once it
    /// has the ack it has the reply, and a confirm would promise no more
    /// (the reply lives only as long as the caller's connection). A reply to
    /// a named queue may have to survive a broker restart: it goes out on
    /// the confirm channel, and the command is acked only once the broker
    /// has confirmed it.
    async fn publish_reply(
        &self,
        publ: &Channel,
        cmd: &Channel,
        r: ReplyMessage,
    ) -> anyhow::Result<()> {
        if r.to.starts_with(names::DIRECT_REPLY_TO) {
            cmd.basic_publish(
                "".into(),
                r.to.as_str().into(),
                BasicPublishOptions::default(),
                &r.body,
                to_lapin(&r.properties),
            )
            .await?;
            return Ok(());
        }
        let confirm = publ
            .basic_publish(
                "".into(),
                r.to.as_str().into(),
                BasicPublishOptions::default(),
                &r.body,
                to_lapin(&r.properties),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => anyhow::bail!("the broker refused the reply"),
            _ => Ok(()),
        }
    }

    fn message_props(&self, kind: &str, expiration_ms: Option<u64>) -> AmqpProperties {
        let mut p = AmqpProperties {
            message_id: Some(Uuid::new_v4().to_string()),
            kind: Some(kind.to_owned()),
            content_type: Some(ContentType::MsgPack.as_str().to_owned()),
            timestamp: Some(now_ms() / 1000),
            expiration: expiration_ms.map(|e| e.to_string()),
            delivery_mode: Some(2),
            ..AmqpProperties::default()
        };
        p.headers.insert(
            VERSION_HEADER.to_owned(),
            HeaderValue::Str(PROTOCOL_VERSION.to_string()),
        );
        p.headers.insert(
            hostbus_protocol::envelope::HOST_HEADER.to_owned(),
            HeaderValue::Str(self.cfg.host_id.clone()),
        );
        p
    }

    async fn publish_confirmed(
        &self,
        publ: &Channel,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: AmqpProperties,
    ) -> anyhow::Result<()> {
        let confirm = publ
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions::default(),
                body,
                to_lapin(&props),
            )
            .await?
            .await?;
        if let Confirmation::Nack(_) = confirm {
            anyhow::bail!("the broker refused the message");
        }
        Ok(())
    }

    async fn publish_event(&self, publ: &Channel, ev: ObjectEvent) -> anyhow::Result<()> {
        let event = Event {
            host_id: self.cfg.host_id.clone(),
            epoch: self.epoch,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            time: ev.time,
            class: ev.class,
            action: ev.action,
            object_id: ev.object_id,
            generation: ev.generation,
            record: ev.record,
            inventory: None,
        };
        self.send_event(publ, &event).await
    }

    async fn send_event(&self, publ: &Channel, event: &Event) -> anyhow::Result<()> {
        let body = encode(ContentType::MsgPack, event)?;
        let kind = format!("{}.{}", event.class, event.action);
        self.publish_confirmed(
            publ,
            names::EVENT_EXCHANGE,
            &event.routing_key(),
            &body,
            self.message_props(&kind, None),
        )
        .await?;
        self.metrics.event_published();
        Ok(())
    }

    /// Publishes `agent.online` (with the full inventory) or `agent.offline`.
    async fn announce(&self, publ: &Channel, action: EventAction) -> anyhow::Result<()> {
        let inventory = if action == EventAction::Online {
            let bridge = self.bridge.clone();
            match tokio::task::spawn_blocking(move || bridge.inventory()).await? {
                Ok(inv) => Some(inv),
                Err(e) => {
                    tracing::warn!(error = %e, "no inventory for agent.online");
                    None
                }
            }
        } else {
            None
        };
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let inventory = inventory.map(|mut inv: Inventory| {
            inv.epoch = Some(self.epoch);
            inv.seq = seq;
            self.note_inventory(&inv);
            inv
        });
        let event = Event {
            host_id: self.cfg.host_id.clone(),
            epoch: self.epoch,
            seq,
            time: now_ms(),
            class: ObjectClass::Agent,
            action,
            object_id: self.cfg.host_id.clone(),
            generation: seq,
            record: inventory
                .as_ref()
                .map_or(Record::None, |i| Record::Host(i.host.clone())),
            inventory,
        };
        self.send_event(publ, &event).await?;
        tracing::info!(action = %action, seq, "announced");
        Ok(())
    }

    /// Publishes this host's roster announcement (`<host>.online` at every
    /// session start, `<host>.offline` at a clean stop), which the broker
    /// keeps in the roster stream for a manager that starts later.
    async fn enroll(&self, publ: &Channel, action: RosterAction) -> anyhow::Result<()> {
        let f = lock(&self.facts).clone();
        let a = Announcement {
            host_id: self.cfg.host_id.clone(),
            action,
            epoch: Some(self.epoch),
            time: now_ms(),
            started_at: self.started_at,
            interval_ms: u32::try_from(self.cfg.heartbeat_interval_ms).unwrap_or(u32::MAX),
            labels: self.cfg.labels.clone(),
            versions: Some(self.versions(&f)),
            capabilities: if action == RosterAction::Online {
                COMMANDS.iter().map(|c| c.name.to_owned()).collect()
            } else {
                Vec::new()
            },
            by: None,
        };
        let body = encode(ContentType::MsgPack, &a)?;
        self.publish_confirmed(
            publ,
            names::PRESENCE_EXCHANGE,
            &a.routing_key(),
            &body,
            self.message_props("announcement", None),
        )
        .await
    }

    fn versions(&self, f: &Facts) -> Versions {
        Versions {
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION.to_string(),
            libvirt: f.libvirt.clone(),
            hypervisor: f.hypervisor.clone(),
        }
    }

    fn note_inventory(&self, inv: &Inventory) {
        let mut f = lock(&self.facts);
        f.libvirt = inv.host.libvirt_version.clone();
        f.hypervisor = format!("{} {}", inv.host.hypervisor, inv.host.hypervisor_version);
    }

    /// Refreshes load facts on a blocking thread; heartbeats never wait for it.
    fn refresh_facts(&self) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let bridge = self.bridge.clone();
        let facts = self.facts.clone();
        let flag = self.refreshing.clone();
        tokio::task::spawn_blocking(move || {
            let load = bridge.host_load();
            let mut f = lock(&facts);
            f.load_avg_milli = load.load_avg_milli;
            if let (Some(vms), Some(free)) = (load.vms_active, load.memory_free_kib) {
                f.vms_active = vms;
                f.memory_free_kib = free;
            }
            drop(f);
            flag.store(false, Ordering::SeqCst);
        });
    }

    async fn publish_heartbeat(&self, publ: &Channel) -> anyhow::Result<()> {
        self.refresh_facts();
        let f = lock(&self.facts).clone();
        let h = self.bridge.health();
        let hb = Heartbeat {
            host_id: self.cfg.host_id.clone(),
            epoch: self.epoch,
            last_seq: self.seq.load(Ordering::SeqCst),
            time: now_ms(),
            started_at: self.started_at,
            interval_ms: u32::try_from(self.cfg.heartbeat_interval_ms).unwrap_or(u32::MAX),
            versions: self.versions(&f),
            // In the roster announcement and host.capabilities, not every beat.
            capabilities: Vec::new(),
            labels: self.cfg.labels.clone(),
            health: Health {
                status: h.status,
                hypervisor_connected: h.connected,
                message: if h.status == HealthStatus::Ok {
                    String::new()
                } else {
                    h.message
                },
            },
            load: Load {
                in_flight: u32::try_from(self.metrics.in_flight()).unwrap_or(u32::MAX),
                commands_total: self.metrics.commands_total(),
                tasks_running: u32::try_from(self.bridge.running_tasks()).unwrap_or(u32::MAX),
                vms_active: f.vms_active,
                load_avg_milli: f.load_avg_milli,
                memory_free_kib: f.memory_free_kib,
            },
            facts: Default::default(),
        };
        let body = encode(ContentType::MsgPack, &hb)?;
        // A heartbeat older than three intervals is worthless: let the broker drop it.
        let props = self.message_props(
            "heartbeat",
            Some(self.cfg.heartbeat_interval_ms.saturating_mul(3)),
        );
        self.publish_confirmed(
            publ,
            names::PRESENCE_EXCHANGE,
            &hb.routing_key(),
            &body,
            props,
        )
        .await?;
        self.metrics.heartbeat_published();
        Ok(())
    }
}
