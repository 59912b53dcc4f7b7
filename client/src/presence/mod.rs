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
//!
//! A client that goes through a local agent's socket has no broker to ask:
//! its view is the one host that agent serves, from the heartbeat the
//! agent answers with, read again every heartbeat interval
//! ([`Presence::local`]).

mod reader;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::names::Target;
use hostbus_protocol::now_ms;
use hostbus_protocol::types::{Placement, Timestamp};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use crate::connection::{lock, probe, Connector, Tie};
use crate::error::ClientError;
use crate::socket::Socket;
use reader::{Item, Reader};
use state::State;

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
    /// or its latest announcement): the real age, for every host heard of
    /// since the point from which the view has read every heartbeat;
    /// `None` for a host silent since before then, longer than
    /// [`Presence::lookback`].
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
    /// Whether it takes new VMs (from its last heartbeat; `host.disable`):
    /// placement skips a disabled host.
    pub placement: Placement,
    /// How other hosts' libvirt reaches its libvirt for migrations (from
    /// its announcement); `None`: it takes no migrations.
    pub migration_uri: Option<String>,
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
struct Inner {
    state: Mutex<State>,
    ready: AtomicBool,
    ready_changed: Notify,
    /// Dropped with the last clone of the view: tells the background task
    /// to close its connection and end.
    _stop: oneshot::Sender<()>,
}

/// The fleet view. Cheap to clone; a background task with its own broker
/// connection keeps it up to date (reconnecting on its own).
///
/// The connection is the client's: [`Client::close`](crate::Client::close)
/// closes it (the view then keeps what it had), and so does dropping the
/// last clone of the view once the client is dropped too, without waiting
/// (see [`Client`](crate::Client) for what that guarantees).
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

impl Presence {
    /// Starts a view and reads the broker's history; returns once the view
    /// is complete (every host the broker remembers is in it), or after
    /// ten seconds with what it has (then [`Presence::is_ready`] is false).
    /// Its task ends, closing its connection, when the view is dropped or
    /// the client of `tie` closes.
    pub(crate) async fn start(connector: Connector, tie: Tie) -> Result<Self, ClientError> {
        // Every alive host beat within the last interval: read that much
        // first (the heartbeat stream is the bulk of what a view reads).
        let mut reader = Reader::open(&connector, FIRST_LOOKBACK).await?;
        let state = match read_fleet(&mut reader).await {
            Ok(read) => read,
            Err(e) => {
                let _ = reader.close().await;
                return Err(e);
            }
        };
        let (stop, stopped) = oneshot::channel();
        let p = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                ready: AtomicBool::new(reader.caught_up),
                ready_changed: Notify::new(),
                _stop: stop,
            }),
        };
        let weak = Arc::downgrade(&p.inner);
        tokio::spawn(async move {
            let (mut reader, mut tie) = (reader, tie);
            tie.until_stopped(follow(&mut reader, &weak, &connector), stopped)
                .await;
            let closed = reader.close().await;
            tie.end(&closed);
        });
        Ok(p)
    }

    /// The view of the one host an agent's socket serves: complete at once,
    /// then kept up to date by reading the agent's heartbeat every interval
    /// (a host whose agent stops answering ages to stale, then gone) until
    /// the view is dropped or the client of `tie` closes.
    pub(crate) async fn local(socket: Arc<Socket>, tie: Tie) -> Result<Self, ClientError> {
        let hb = socket.heartbeat().await?;
        let every = Duration::from_millis(u64::from(hb.interval_ms.max(1000)));
        let mut state = State::default();
        state.beat(hb);
        let (stop, stopped) = oneshot::channel();
        let p = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                ready: AtomicBool::new(true),
                ready_changed: Notify::new(),
                _stop: stop,
            }),
        };
        let weak = Arc::downgrade(&p.inner);
        tokio::spawn(async move {
            let mut tie = tie;
            tie.until_stopped(poll(&socket, &weak, every), stopped)
                .await;
            tie.end(&Ok(()));
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

    /// How far back from now this view has every heartbeat: a host silent
    /// for longer shows `last_seen_ms: None`. A new view reads about one
    /// interval back (three when a silent host's agent is still connected,
    /// docs/protocol.md §10.4); it grows while the view follows the fleet.
    pub fn lookback(&self) -> Duration {
        Duration::from_millis(lock(&self.inner.state).lookback(now_ms()))
    }

    /// Every host known, sorted by id.
    pub fn hosts(&self) -> Vec<HostView> {
        lock(&self.inner.state).views(now_ms()).collect()
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
        lock(&self.inner.state).host(host_id, now_ms())
    }
}

/// Reads the broker's history of the fleet from `reader` (opened
/// [`FIRST_LOOKBACK`] back): the state it makes.
async fn read_fleet(reader: &mut Reader) -> Result<State, ClientError> {
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
    state.read_from(reader.beats_from);
    Ok(state)
}

/// Keeps the view behind `weak` up to date from `reader`, asking the
/// broker about hosts that fall silent and reconnecting when the
/// connection is lost, until the view is gone. No reference to the view is
/// held while waiting, so that dropping its last clone stops this.
async fn follow(reader: &mut Reader, weak: &Weak<Inner>, connector: &Connector) {
    let mut ask = tokio::time::interval(PROBE_EVERY);
    ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let delivered = tokio::select! {
            d = reader.next() => d,
            _ = ask.tick() => {
                let Some(inner) = weak.upgrade() else { return };
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
                drop(inner);
                let answers = probe(reader.conn(), silent).await;
                let Some(inner) = weak.upgrade() else { return };
                let mut state = lock(&inner.state);
                for (host, connected) in answers {
                    if let Some(e) = state.hosts.get_mut(&host) {
                        e.connected = Some(connected);
                    }
                }
                continue;
            }
        };
        let Some(inner) = weak.upgrade() else { return };
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
                    match reader.reopen(connector).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "presence: cannot reconnect yet")
                        }
                    }
                }
            }
        }
    }
}

/// Reads the agent's heartbeat on `socket` every interval into the view
/// behind `weak`, until the view is gone.
async fn poll(socket: &Socket, weak: &Weak<Inner>, mut every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if weak.strong_count() == 0 {
            return;
        }
        match socket.heartbeat().await {
            Ok(hb) => {
                every = Duration::from_millis(u64::from(hb.interval_ms.max(1000)));
                let Some(inner) = weak.upgrade() else { return };
                lock(&inner.state).beat(hb);
            }
            Err(e) => {
                tracing::debug!(error = %e, "presence: no heartbeat from the agent socket")
            }
        }
    }
}
