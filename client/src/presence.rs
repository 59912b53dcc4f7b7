//! The fleet view: every host the broker remembers, alive, stale or gone,
//! complete as soon as it is started, however young the process.
//!
//! Agents publish on the presence exchange: a roster announcement when a
//! session starts (`<host>.online`) and at a clean stop (`<host>.offline`),
//! and a heartbeat every interval (`<host>.heartbeat`). The broker keeps
//! both in streams: announcements for days (`hostbus.presence.roster`),
//! heartbeats for minutes (`hostbus.presence.beats`). A new view reads the
//! roster from its beginning and the heartbeats of the last three intervals,
//! so it knows every host that ever announced itself (until forgotten or
//! past the roster's retention) and the last beat of every host alive now.
//! To know when it has read everything the broker had, it first publishes a
//! sync marker (`_sync.<id>`, bound to both streams) and reads until the
//! marker comes back.
//!
//! A host silent for three intervals or more is stale while its agent is
//! still connected to the broker (its command queue has a consumer: the
//! agent is hung, or its heartbeats are delayed) and gone once it is not
//! (it died, or it cannot reach the broker): the view asks the broker, with
//! a passive `queue.declare`, instead of reading minutes of heartbeats. One
//! stream chunk per heartbeat makes reading history cost per message: three
//! intervals of a thousand hosts read in a fraction of the time ten would.
//! The view then keeps following both streams, and asks again about hosts
//! that fall silent.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::names::{self, Target, PRESENCE_EXCHANGE};
use hostbus_protocol::types::Timestamp;
use hostbus_protocol::{decode, now_ms, Announcement, ContentType, Heartbeat, RosterAction};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::client::Client;
use crate::error::{ClientError, ErrorKind};

/// How alive a host looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// A heartbeat arrived within three intervals.
    Alive,
    /// Silent for three intervals or more, but its agent is still connected
    /// to the broker (hung, or its heartbeats are delayed); before the
    /// broker was asked, silent for three to ten intervals.
    Stale,
    /// The agent said goodbye, is not connected to the broker, or has been
    /// silent for ten intervals without the broker being asked.
    Gone,
}

/// What presence knows of one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostView {
    /// Host id.
    pub host_id: String,
    /// Alive, stale or gone.
    pub liveness: Liveness,
    /// Whether the agent was connected to the broker when last asked (a
    /// host is asked about once it is silent for three intervals); `None`
    /// when it was not asked.
    pub connected: Option<bool>,
    /// The agent's epoch (of its latest session seen).
    pub epoch: Uuid,
    /// Milliseconds since the host was last heard of (its last heartbeat,
    /// or its latest announcement); `None` when that was before the
    /// view's look-back (see [`Presence::lookback`]): gone longer than that.
    pub last_seen_ms: Option<u64>,
    /// When the agent's latest session started, ms since the epoch.
    pub started_at: Timestamp,
    /// Heartbeat interval, ms.
    pub interval_ms: u32,
    /// The agent's last event sequence number (from its last heartbeat).
    pub last_seq: u64,
    /// Versions.
    pub versions: Versions,
    /// Labels.
    pub labels: Vec<String>,
    /// Health (from the last heartbeat; `down` when none was seen).
    pub health: Health,
    /// Load (from the last heartbeat).
    pub load: Load,
    /// Commands the agent serves (from its announcement).
    pub capabilities: Vec<String>,
}

/// The hosts a broadcast expects, computed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Alive hosts the target reaches: a broadcast waits for them.
    pub alive: Vec<String>,
    /// Stale and gone hosts the target reaches: reported missing unless
    /// they answer while the broadcast waits for the alive ones.
    pub not_alive: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    host_id: String,
    epoch: Uuid,
    started_at: Timestamp,
    interval_ms: u32,
    labels: Vec<String>,
    versions: Option<Versions>,
    capabilities: Vec<String>,
    /// When last heard of: the latest heartbeat's or announcement's time.
    last: Option<Timestamp>,
    beat: Option<Heartbeat>,
    offline: bool,
    /// Whether its command queue had a consumer when last asked, since its
    /// last heartbeat.
    connected: Option<bool>,
}

impl Entry {
    fn new(host_id: &str) -> Self {
        Self {
            host_id: host_id.to_owned(),
            epoch: Uuid::nil(),
            started_at: 0,
            interval_ms: 5000,
            labels: Vec::new(),
            versions: None,
            capabilities: Vec::new(),
            last: None,
            beat: None,
            offline: false,
            connected: None,
        }
    }

    /// Whether the broker should be asked about this host now: silent for
    /// three intervals, not gone for good.
    fn needs_probe(&self, now: Timestamp) -> bool {
        let interval = u64::from(self.interval_ms.max(1));
        let silent = self
            .last
            .is_none_or(|t| now.saturating_sub(t) >= 3 * interval);
        silent && !self.offline && self.connected != Some(false)
    }
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<String, Entry>,
    /// Hosts forgotten, and when: what they published before is ignored.
    forgotten: HashMap<String, Timestamp>,
}

impl State {
    fn forgotten_since(&self, host: &str, time: Timestamp) -> bool {
        self.forgotten.get(host).is_some_and(|t| time <= *t)
    }

    fn announce(&mut self, a: Announcement) {
        if a.action == RosterAction::Forget {
            // Only what the host publishes after this brings it back.
            if self
                .hosts
                .get(&a.host_id)
                .is_none_or(|e| e.last.unwrap_or(0) <= a.time)
            {
                self.hosts.remove(&a.host_id);
            }
            let t = self.forgotten.entry(a.host_id).or_default();
            *t = (*t).max(a.time);
            return;
        }
        if self.forgotten_since(&a.host_id, a.time) {
            return;
        }
        let e = self
            .hosts
            .entry(a.host_id.clone())
            .or_insert_with(|| Entry::new(&a.host_id));
        if e.last.is_some_and(|t| t > a.time) && a.action == RosterAction::Online {
            return;
        }
        if let Some(epoch) = a.epoch {
            if epoch != e.epoch {
                e.beat = None;
            }
            e.epoch = epoch;
        }
        e.started_at = a.started_at;
        if a.interval_ms > 0 {
            e.interval_ms = a.interval_ms;
        }
        e.labels = a.labels;
        if a.versions.is_some() {
            e.versions = a.versions;
        }
        if !a.capabilities.is_empty() {
            e.capabilities = a.capabilities;
        }
        e.offline = a.action == RosterAction::Offline;
        e.connected = None;
        e.last = Some(e.last.unwrap_or(0).max(a.time));
    }

    fn beat(&mut self, hb: Heartbeat) {
        if self.forgotten_since(&hb.host_id, hb.time) {
            return;
        }
        let e = self
            .hosts
            .entry(hb.host_id.clone())
            .or_insert_with(|| Entry::new(&hb.host_id));
        if e.last.is_some_and(|t| t > hb.time) {
            return;
        }
        if hb.epoch != e.epoch {
            e.offline = false;
            e.epoch = hb.epoch;
            e.started_at = hb.started_at;
        } else if e.offline {
            // A late beat of an epoch that said goodbye.
            return;
        }
        e.interval_ms = hb.interval_ms;
        e.labels.clone_from(&hb.labels);
        e.versions = Some(hb.versions.clone());
        e.last = Some(hb.time);
        e.beat = Some(hb);
        e.connected = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    state: Mutex<State>,
    lookback: Duration,
    ready: AtomicBool,
    ready_changed: Notify,
}

/// The fleet view. Cheap to clone; a background task with its own broker
/// connection keeps it up to date (reconnecting on its own).
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

/// How far back a new view reads heartbeats, at least: three default
/// intervals and a margin (every alive host beat within it). Hosts with
/// longer intervals lengthen it.
const MIN_LOOKBACK: Duration = Duration::from_secs(17);

/// How far back a new view reads heartbeats first: one default interval
/// and a margin for beats that were late.
const FIRST_LOOKBACK: Duration = Duration::from_secs(8);
const FIRST_MARGIN_MS: u64 = 3000;

/// How often a live view asks the broker about hosts that fell silent.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How long [`Presence::start`] waits for the broker's history.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries of each stream in flight; acked in quarters.
const PREFETCH: u16 = 1000;

/// A stream offset `lookback` ago (an AMQP timestamp, seconds).
fn since(lookback: Duration) -> AMQPValue {
    AMQPValue::Timestamp(now_ms().saturating_sub(lookback.as_millis() as u64) / 1000)
}

impl Presence {
    /// Starts a view and reads the broker's history; returns once the view
    /// is complete (every host the broker remembers is in it), or after
    /// ten seconds with what it has (then [`Presence::is_ready`] is false).
    pub(crate) async fn start(client: Client) -> Result<Self, ClientError> {
        // Every alive host beat within the last interval: read that much
        // first (the heartbeat stream is the bulk of what a view reads).
        let mut reader = Reader::open(&client, FIRST_LOOKBACK).await?;
        let (roster, beats) = reader.read_history().await?;
        let longest = roster
            .iter()
            .map(|a| u64::from(a.interval_ms))
            .chain(beats.iter().map(|b| u64::from(b.interval_ms)))
            .max()
            .unwrap_or(0);
        let lookback = MIN_LOOKBACK.max(Duration::from_millis(longest.saturating_mul(3) + 2000));
        let mut state = State::default();
        for a in roster {
            state.announce(a);
        }
        for hb in beats {
            state.beat(hb);
        }
        let first = FIRST_LOOKBACK.max(Duration::from_millis(longest + FIRST_MARGIN_MS));
        if first > FIRST_LOOKBACK {
            // Some host beats slowly: read one of its intervals.
            for hb in reader.read_beats_again(first).await? {
                state.beat(hb);
            }
        }
        // A host not heard from in that interval is gone unless its agent
        // is still connected; only then does its last beat matter (alive
        // with a beat missed, or stale), so only then is the heartbeat
        // stream read three intervals back.
        let first_ms = first.as_millis() as u64;
        let unheard: Vec<String> = state
            .hosts
            .values()
            .filter(|e| {
                !e.offline
                    && e.last
                        .is_none_or(|t| now_ms().saturating_sub(t) >= first_ms)
            })
            .map(|e| e.host_id.clone())
            .collect();
        let answers = probe(reader.conn(), unheard).await;
        if answers.iter().any(|(_, connected)| *connected) {
            for hb in reader.read_beats_again(lookback).await? {
                state.beat(hb);
            }
        }
        // Every host silent for three intervals was among those asked.
        for (host, connected) in answers {
            if let Some(e) = state.hosts.get_mut(&host) {
                e.connected = Some(connected);
            }
        }
        let p = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                lookback,
                ready: AtomicBool::new(reader.caught_up),
                ready_changed: Notify::new(),
            }),
        };
        let weak = Arc::downgrade(&p.inner);
        tokio::spawn(async move {
            let mut reader = reader;
            let mut ask = tokio::time::interval(PROBE_EVERY);
            ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let delivered = tokio::select! {
                    d = reader.next() => d,
                    _ = ask.tick() => {
                        let silent: Vec<String> = {
                            let state = lock(&inner.state);
                            let now = now_ms();
                            state
                                .hosts
                                .values()
                                .filter(|e| e.needs_probe(now))
                                .map(|e| e.host_id.clone())
                                .collect()
                        };
                        let answers = probe(reader.conn(), silent).await;
                        let mut state = lock(&inner.state);
                        for (host, connected) in answers {
                            if let Some(e) = state.hosts.get_mut(&host) {
                                e.connected = Some(connected);
                            }
                        }
                        continue;
                    }
                };
                match delivered {
                    Some(Item::Roster(a)) => lock(&inner.state).announce(a),
                    Some(Item::Beat(hb)) => lock(&inner.state).beat(hb),
                    Some(Item::Synced) => {
                        inner.ready.store(true, Ordering::SeqCst);
                        inner.ready_changed.notify_waiters();
                    }
                    None => {
                        drop(inner);
                        tracing::info!("presence connection lost; reconnecting");
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            if weak.strong_count() == 0 {
                                return;
                            }
                            match reader.reopen(&client).await {
                                Ok(()) => break,
                                Err(e) => {
                                    tracing::debug!(error = %e, "presence: cannot reconnect yet")
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(p)
    }

    /// Whether the view has read everything the broker had when it started.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Waits until [`Presence::is_ready`], at most `max`.
    pub async fn wait_ready(&self, max: Duration) {
        let wait = async {
            while !self.is_ready() {
                let changed = self.inner.ready_changed.notified();
                if self.is_ready() {
                    break;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(max, wait).await;
    }

    /// How far back this view read heartbeats: hosts silent for longer show
    /// `last_seen_ms: None`.
    pub fn lookback(&self) -> Duration {
        self.inner.lookback
    }

    /// Every host known, sorted by id.
    pub fn hosts(&self) -> Vec<HostView> {
        let now = now_ms();
        let lookback = self.inner.lookback.as_millis() as u64;
        let state = lock(&self.inner.state);
        state
            .hosts
            .values()
            .map(|e| view(e, now, lookback))
            .collect()
    }

    /// The hosts `target` reaches, by liveness, computed once.
    pub fn expected(&self, target: &Target) -> Expected {
        let mut out = Expected::default();
        for h in self.hosts() {
            let reached = match target {
                Target::All => true,
                Target::Group(l) => h.labels.iter().any(|x| x == l),
                Target::Host(id) => &h.host_id == id,
            };
            if !reached {
                continue;
            }
            if h.liveness == Liveness::Alive {
                out.alive.push(h.host_id);
            } else {
                out.not_alive.push(h.host_id);
            }
        }
        out
    }

    /// One host, if known.
    pub fn host(&self, host_id: &str) -> Option<HostView> {
        let now = now_ms();
        let lookback = self.inner.lookback.as_millis() as u64;
        lock(&self.inner.state)
            .hosts
            .get(host_id)
            .map(|e| view(e, now, lookback))
    }
}

fn view(e: &Entry, now: Timestamp, lookback_ms: u64) -> HostView {
    let age = e.last.map(|t| now.saturating_sub(t));
    let interval = u64::from(e.interval_ms.max(1));
    let liveness = match (age, e.connected) {
        _ if e.offline => Liveness::Gone,
        (Some(a), _) if a < 3 * interval => Liveness::Alive,
        (_, Some(true)) => Liveness::Stale,
        (_, Some(false)) => Liveness::Gone,
        (Some(a), None) if a < 10 * interval => Liveness::Stale,
        _ => Liveness::Gone,
    };
    let (health, load, last_seq) = match &e.beat {
        Some(hb) => (hb.health.clone(), hb.load.clone(), hb.last_seq),
        None => (
            Health {
                status: hostbus_protocol::types::HealthStatus::Down,
                hypervisor_connected: false,
                message: "no heartbeat seen".into(),
            },
            Load {
                in_flight: 0,
                commands_total: 0,
                tasks_running: 0,
                vms_active: 0,
                load_avg_milli: 0,
                memory_free_kib: 0,
            },
            0,
        ),
    };
    HostView {
        host_id: e.host_id.clone(),
        liveness,
        connected: e.connected,
        epoch: e.epoch,
        last_seen_ms: age.filter(|a| *a <= lookback_ms),
        started_at: e.started_at,
        interval_ms: e.interval_ms,
        last_seq,
        versions: e.versions.clone().unwrap_or(Versions {
            agent: String::new(),
            protocol: String::new(),
            libvirt: String::new(),
            hypervisor: String::new(),
        }),
        labels: e.labels.clone(),
        health,
        load,
        capabilities: e.capabilities.clone(),
    }
}

/// What the reader hands on.
enum Item {
    Roster(Announcement),
    Beat(Heartbeat),
    /// This reader's sync marker came back on the beats stream after a
    /// reconnection: it is current again.
    Synced,
}

/// The stream consumers of a view.
struct Reader {
    _conn: Connection,
    ch: Channel,
    roster: Consumer,
    beats: Option<Consumer>,
    marker: String,
    /// Offsets to resume from after a reconnection.
    next_roster: Option<u64>,
    next_beat: Option<u64>,
    caught_up: bool,
    unacked: HashMap<u8, u64>,
}

fn offset_of(d: &lapin::message::Delivery) -> Option<u64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongUInt(o) => Some(u64::from(*o)),
        _ => None,
    }
}

fn content_type(d: &lapin::message::Delivery) -> ContentType {
    ContentType::parse(d.properties.content_type().as_ref().map(|c| c.as_str())).unwrap_or_default()
}

async fn consume(ch: &Channel, queue: &str, offset: AMQPValue) -> Result<Consumer, ClientError> {
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .map_err(|e| stream_error(queue, e))
}

fn stream_error(object: &str, e: lapin::Error) -> ClientError {
    let not_found = matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404);
    if not_found {
        ClientError::new(
            ErrorKind::NotFound,
            format!(
                "{object} does not exist on this broker: no agent of this version has connected yet (agents declare it), or an administrator must run `hostctl admin setup`"
            ),
        )
    } else {
        e.into()
    }
}

impl Reader {
    /// Publishes a sync marker and starts both consumers: the roster from
    /// its start, heartbeats `lookback` back.
    async fn open(client: &Client, lookback: Duration) -> Result<Self, ClientError> {
        let conn = client.open_connection("presence").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let marker = Uuid::new_v4().simple().to_string();
        // The marker first: everything the streams hold before it is what
        // the broker had when this view started.
        publish_marker(&ch, &marker).await?;
        let roster = consume(
            &ch,
            names::ROSTER_STREAM,
            AMQPValue::LongString(LongString::from("first".as_bytes())),
        )
        .await?;
        let beats = consume(&ch, names::BEAT_STREAM, since(lookback)).await?;
        Ok(Self {
            _conn: conn,
            ch,
            roster,
            beats: Some(beats),
            marker,
            next_roster: None,
            next_beat: None,
            caught_up: false,
            unacked: HashMap::new(),
        })
    }

    /// Reads both streams at once up to the marker.
    async fn read_history(&mut self) -> Result<(Vec<Announcement>, Vec<Heartbeat>), ClientError> {
        let (mut roster, mut beats) = (Vec::new(), Vec::new());
        let (mut roster_done, mut beats_done) = (false, false);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while !(roster_done && beats_done) {
            let Some(beat_consumer) = self.beats.as_mut() else {
                break;
            };
            let next = async {
                tokio::select! {
                    d = self.roster.next(), if !roster_done => (0u8, d),
                    d = beat_consumer.next(), if !beats_done => (1u8, d),
                }
            };
            let Ok((which, Some(d))) = tokio::time::timeout_at(deadline, next).await else {
                tracing::warn!("presence: the broker's history did not arrive in time");
                return Ok((roster, beats));
            };
            let d = d?;
            self.settle(which, &d).await;
            let next = offset_of(&d).map(|o| o + 1);
            let marker = self.is_marker(&d);
            let ct = content_type(&d);
            if which == 0 {
                self.next_roster = next;
                roster_done |= marker;
                if !marker {
                    if let Ok(a) = decode::<Announcement>(ct, &d.data, 1 << 20) {
                        roster.push(a);
                    }
                }
            } else {
                self.next_beat = next;
                beats_done |= marker;
                if !marker {
                    if let Ok(hb) = decode::<Heartbeat>(ct, &d.data, 1 << 20) {
                        beats.push(hb);
                    }
                }
            }
        }
        self.caught_up = roster_done && beats_done;
        Ok((roster, beats))
    }

    /// Reads heartbeats `lookback` back up to the marker again (for hosts
    /// with intervals longer than the first look-back covers).
    async fn read_beats_again(
        &mut self,
        lookback: Duration,
    ) -> Result<Vec<Heartbeat>, ClientError> {
        let mut consumer = consume(&self.ch, names::BEAT_STREAM, since(lookback)).await?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let Ok(Some(d)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
                return Ok(out);
            };
            let d = d?;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            if self.is_marker(&d) {
                let _ = self
                    .ch
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await;
                return Ok(out);
            }
            if let Ok(hb) = decode::<Heartbeat>(content_type(&d), &d.data, 1 << 20) {
                out.push(hb);
            }
        }
    }

    fn conn(&self) -> &Connection {
        &self._conn
    }

    fn is_marker(&self, d: &lapin::message::Delivery) -> bool {
        d.routing_key.as_str().strip_prefix("_sync.") == Some(self.marker.as_str())
    }

    /// Acks stream deliveries in batches (streams need acks only to keep
    /// credit flowing).
    async fn settle(&mut self, which: u8, d: &lapin::message::Delivery) {
        let n = self.unacked.entry(which).or_default();
        *n += 1;
        if *n >= u64::from(PREFETCH / 4) {
            *n = 0;
            let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
        }
    }

    /// The next announcement or heartbeat; `None` when the connection is gone.
    async fn next(&mut self) -> Option<Item> {
        loop {
            let beats = self.beats.as_mut()?;
            let (which, d) = tokio::select! {
                d = self.roster.next() => (0u8, d),
                d = beats.next() => (1u8, d),
            };
            let d = d?.ok()?;
            self.settle(which, &d).await;
            let next = offset_of(&d).map(|o| o + 1);
            if which == 0 {
                self.next_roster = next;
            } else {
                self.next_beat = next;
            }
            if self.is_marker(&d) {
                if which == 1 {
                    return Some(Item::Synced);
                }
                continue;
            }
            if d.routing_key.as_str().starts_with("_sync.") {
                continue;
            }
            let ct = content_type(&d);
            if which == 0 {
                if let Ok(a) = decode::<Announcement>(ct, &d.data, 1 << 20) {
                    return Some(Item::Roster(a));
                }
            } else if let Ok(hb) = decode::<Heartbeat>(ct, &d.data, 1 << 20) {
                return Some(Item::Beat(hb));
            }
        }
    }

    /// Opens a new connection and resumes both streams where they stopped.
    async fn reopen(&mut self, client: &Client) -> Result<(), ClientError> {
        let conn = client.open_connection("presence").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let at = |o: Option<u64>| match o {
            Some(o) => AMQPValue::LongLongInt(i64::try_from(o).unwrap_or(i64::MAX)),
            None => AMQPValue::LongString(LongString::from("next".as_bytes())),
        };
        let marker = Uuid::new_v4().simple().to_string();
        publish_marker(&ch, &marker).await?;
        self.roster = consume(&ch, names::ROSTER_STREAM, at(self.next_roster)).await?;
        self.beats = Some(consume(&ch, names::BEAT_STREAM, at(self.next_beat)).await?);
        self.marker = marker;
        self.ch = ch;
        self._conn = conn;
        self.unacked.clear();
        Ok(())
    }
}

/// Asks the broker, for each host, whether its command queue has a
/// consumer (its agent is connected): a passive `queue.declare` of
/// `hostbus.agent.<host>`, about a millisecond each. A queue that does not
/// exist counts as no consumer; a host the broker could not be asked about
/// is left out.
pub(crate) async fn probe(conn: &Connection, hosts: Vec<String>) -> Vec<(String, bool)> {
    let mut out = Vec::with_capacity(hosts.len());
    let mut ch: Option<Channel> = None;
    for host in hosts {
        if ch.as_ref().is_none_or(|c| !c.status().connected()) {
            // A failed passive declare closes its channel: open another.
            ch = conn.create_channel().await.ok();
        }
        let Some(c) = ch.as_ref() else { break };
        let declared = c
            .queue_declare(
                names::agent_queue(&host).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..lapin::options::QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => out.push((host, q.consumer_count() > 0)),
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404) =>
            {
                out.push((host, false));
            }
            Err(_) => {}
        }
    }
    if let Some(c) = ch {
        let _ = c.close(200, "probed".into()).await;
    }
    out
}

async fn publish_marker(ch: &Channel, marker: &str) -> Result<(), ClientError> {
    let publish = async {
        ch.basic_publish(
            PRESENCE_EXCHANGE.into(),
            names::sync_key(marker).as_str().into(),
            BasicPublishOptions::default(),
            b"",
            lapin::BasicProperties::default().with_type("sync".into()),
        )
        .await?
        .await
    };
    let confirm = publish
        .await
        .map_err(|e| stream_error(PRESENCE_EXCHANGE, e))?;
    if confirm.is_nack() {
        return Err(ClientError::new(
            ErrorKind::Connection,
            "the broker refused the presence sync marker",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostbus_protocol::types::HealthStatus;

    fn beat(host: &str, epoch: Uuid, time: u64) -> Heartbeat {
        Heartbeat {
            host_id: host.into(),
            epoch,
            last_seq: 1,
            time,
            started_at: 1,
            interval_ms: 5000,
            versions: Versions {
                agent: "0.1.0".into(),
                protocol: "1.1".into(),
                libvirt: String::new(),
                hypervisor: String::new(),
            },
            capabilities: vec![],
            labels: vec!["gpu".into()],
            health: Health {
                status: HealthStatus::Ok,
                hypervisor_connected: true,
                message: String::new(),
            },
            load: Load {
                in_flight: 0,
                commands_total: 0,
                tasks_running: 0,
                vms_active: 0,
                load_avg_milli: 0,
                memory_free_kib: 0,
            },
            facts: BTreeMap::new(),
        }
    }

    fn announcement(host: &str, action: RosterAction, epoch: Uuid, time: u64) -> Announcement {
        Announcement {
            host_id: host.into(),
            action,
            epoch: Some(epoch),
            time,
            started_at: time,
            interval_ms: 5000,
            labels: vec!["gpu".into()],
            versions: None,
            capabilities: vec![],
            by: None,
        }
    }

    #[test]
    fn liveness_follows_the_last_beat_the_broker_and_goodbyes() {
        let now = 1_000_000;
        let (e1, e2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut s = State::default();
        s.announce(announcement(
            "alive",
            RosterAction::Online,
            e1,
            now - 100_000,
        ));
        s.beat(beat("alive", e1, now - 4_000));
        s.beat(beat("late", e2, now - 20_000));
        s.beat(beat("hung", e2, now - 40_000));
        s.beat(beat("dead", e2, now - 20_000));
        s.announce(announcement("old", RosterAction::Online, e1, now - 500_000));
        s.announce(announcement("left", RosterAction::Online, e2, now - 9_000));
        s.announce(announcement("left", RosterAction::Offline, e2, now - 8_000));
        let silent: Vec<String> = s
            .hosts
            .values()
            .filter(|e| e.needs_probe(now))
            .map(|e| e.host_id.clone())
            .collect();
        assert_eq!(
            silent,
            ["dead", "hung", "late", "old"],
            "who is asked about"
        );
        // What the broker says.
        s.hosts.get_mut("hung").expect("hung").connected = Some(true);
        s.hosts.get_mut("dead").expect("dead").connected = Some(false);
        let v: BTreeMap<String, HostView> = s
            .hosts
            .values()
            .map(|e| (e.host_id.clone(), view(e, now, 17_000)))
            .collect();
        assert_eq!(v["alive"].liveness, Liveness::Alive);
        assert_eq!(v["alive"].last_seen_ms, Some(4_000));
        assert_eq!(v["late"].liveness, Liveness::Stale, "not asked yet: by age");
        assert_eq!(v["hung"].liveness, Liveness::Stale, "connected, silent");
        assert_eq!(v["dead"].liveness, Liveness::Gone, "not connected");
        assert_eq!(v["old"].liveness, Liveness::Gone);
        assert_eq!(v["old"].last_seen_ms, None, "older than the look-back");
        assert_eq!(v["left"].liveness, Liveness::Gone);
        // A beat makes a host alive again, whatever the broker said.
        s.beat(beat("dead", e2, now));
        assert_eq!(
            view(&s.hosts["dead"], now, 17_000).liveness,
            Liveness::Alive
        );
    }

    #[test]
    fn a_forgotten_host_leaves_until_it_announces_itself_again() {
        let e = Uuid::new_v4();
        let mut s = State::default();
        s.announce(announcement("h", RosterAction::Online, e, 100));
        let mut f = announcement("h", RosterAction::Forget, e, 200);
        f.epoch = None;
        s.announce(f);
        assert!(s.hosts.is_empty());
        // Its old heartbeats, read after the roster, do not bring it back.
        s.beat(beat("h", e, 150));
        assert!(s.hosts.is_empty());
        s.announce(announcement("h", RosterAction::Online, Uuid::new_v4(), 300));
        assert_eq!(s.hosts.len(), 1);
    }

    #[test]
    fn a_new_epoch_replaces_a_goodbye() {
        let mut s = State::default();
        let (e1, e2) = (Uuid::new_v4(), Uuid::new_v4());
        s.announce(announcement("h", RosterAction::Offline, e1, 100));
        s.beat(beat("h", e1, 90));
        assert!(s.hosts["h"].offline, "a late beat of the old epoch");
        s.beat(beat("h", e2, 200));
        assert!(!s.hosts["h"].offline);
        assert_eq!(s.hosts["h"].epoch, e2);
    }
}
