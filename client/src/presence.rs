//! The fleet view: every host the broker remembers, alive, stale or gone,
//! complete as soon as it is started, however young the process.
//!
//! Agents publish on the presence exchange: a roster announcement when a
//! session starts (`<host>.online`) and at a clean stop (`<host>.offline`),
//! and a heartbeat every interval (`<host>.heartbeat`). The broker keeps
//! both in streams: announcements for days (`hostbus.presence.roster`),
//! heartbeats for minutes (`hostbus.presence.beats`). A new view reads the
//! roster from its beginning and the heartbeats from a little over ten
//! intervals back, so it knows at once every host that ever announced itself
//! (until forgotten or past the roster's retention) and the last beat of
//! every host seen recently. To know when it has read everything the broker
//! had, it first publishes a sync marker (`_sync.<id>`, bound to both
//! streams) and reads until the marker comes back. It then keeps following
//! both streams.

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
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
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
    /// Heartbeats are late (three to ten intervals).
    Stale,
    /// The agent said goodbye, or has been silent for ten intervals or more.
    Gone,
}

/// What presence knows of one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostView {
    /// Host id.
    pub host_id: String,
    /// Alive, stale or gone.
    pub liveness: Liveness,
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
        }
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

/// How far back a new view reads heartbeats, at least: ten default
/// intervals and a margin. Hosts with longer intervals lengthen it.
const MIN_LOOKBACK: Duration = Duration::from_secs(60);

/// How long [`Presence::start`] waits for the broker's history.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Presence {
    /// Starts a view and reads the broker's history; returns once the view
    /// is complete (every host the broker remembers is in it), or after
    /// ten seconds with what it has (then [`Presence::is_ready`] is false).
    pub(crate) async fn start(client: Client) -> Result<Self, ClientError> {
        let mut reader = Reader::open(&client).await?;
        let roster = reader.read_roster().await?;
        let mut state = State::default();
        let longest = roster
            .iter()
            .map(|a| u64::from(a.interval_ms))
            .max()
            .unwrap_or(0);
        for a in roster {
            state.announce(a);
        }
        let lookback = MIN_LOOKBACK.max(Duration::from_millis(longest.saturating_mul(11)));
        let beats = reader.read_beats(lookback).await?;
        for hb in beats {
            state.beat(hb);
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
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let delivered = reader.next().await;
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
    let liveness = match age {
        _ if e.offline => Liveness::Gone,
        Some(a) if a < 3 * interval => Liveness::Alive,
        Some(a) if a < 10 * interval => Liveness::Stale,
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
    async fn open(client: &Client) -> Result<Self, ClientError> {
        let conn = client.open_connection("presence").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(2000, BasicQosOptions::default()).await?;
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
        Ok(Self {
            _conn: conn,
            ch,
            roster,
            beats: None,
            marker,
            next_roster: None,
            next_beat: None,
            caught_up: false,
            unacked: HashMap::new(),
        })
    }

    /// Reads the roster up to the marker.
    async fn read_roster(&mut self) -> Result<Vec<Announcement>, ClientError> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while let Ok(Some(d)) = tokio::time::timeout_at(deadline, self.roster.next()).await {
            let d = d?;
            self.settle(0, &d).await;
            self.next_roster = offset_of(&d).map(|o| o + 1);
            if self.is_marker(&d) {
                return Ok(out);
            }
            if let Ok(a) = decode::<Announcement>(content_type(&d), &d.data, 1 << 20) {
                out.push(a);
            }
        }
        tracing::warn!("presence: the roster's history did not arrive in time");
        Ok(out)
    }

    /// Starts the heartbeat consumer `lookback` back and reads up to the marker.
    async fn read_beats(&mut self, lookback: Duration) -> Result<Vec<Heartbeat>, ClientError> {
        let since = now_ms().saturating_sub(lookback.as_millis() as u64) / 1000;
        self.beats =
            Some(consume(&self.ch, names::BEAT_STREAM, AMQPValue::Timestamp(since)).await?);
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while let Some(beats) = self.beats.as_mut() {
            let Ok(Some(d)) = tokio::time::timeout_at(deadline, beats.next()).await else {
                tracing::warn!("presence: the heartbeats' history did not arrive in time");
                return Ok(out);
            };
            let d = d?;
            self.settle(1, &d).await;
            self.next_beat = offset_of(&d).map(|o| o + 1);
            if self.is_marker(&d) {
                self.caught_up = true;
                return Ok(out);
            }
            if let Ok(hb) = decode::<Heartbeat>(content_type(&d), &d.data, 1 << 20) {
                out.push(hb);
            }
        }
        Ok(out)
    }

    fn is_marker(&self, d: &lapin::message::Delivery) -> bool {
        d.routing_key.as_str().strip_prefix("_sync.") == Some(self.marker.as_str())
    }

    /// Acks stream deliveries in batches (streams need acks only to keep
    /// credit flowing).
    async fn settle(&mut self, which: u8, d: &lapin::message::Delivery) {
        let n = self.unacked.entry(which).or_default();
        *n += 1;
        if *n >= 500 {
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
        ch.basic_qos(2000, BasicQosOptions::default()).await?;
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
    fn liveness_follows_the_last_beat_and_goodbyes() {
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
        s.beat(beat("stale", e2, now - 20_000));
        s.announce(announcement(
            "dead",
            RosterAction::Online,
            e1,
            now - 500_000,
        ));
        s.announce(announcement("left", RosterAction::Online, e2, now - 9_000));
        s.announce(announcement("left", RosterAction::Offline, e2, now - 8_000));
        let v: BTreeMap<String, HostView> = s
            .hosts
            .values()
            .map(|e| (e.host_id.clone(), view(e, now, 60_000)))
            .collect();
        assert_eq!(v["alive"].liveness, Liveness::Alive);
        assert_eq!(v["alive"].last_seen_ms, Some(4_000));
        assert_eq!(v["stale"].liveness, Liveness::Stale);
        assert_eq!(v["dead"].liveness, Liveness::Gone);
        assert_eq!(v["dead"].last_seen_ms, None, "older than the look-back");
        assert_eq!(v["left"].liveness, Liveness::Gone);
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
