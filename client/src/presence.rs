//! A live view of hosts from their heartbeats and online/offline
//! announcements: alive, stale or gone; epoch; versions; labels; load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::names::{Target, EVENT_EXCHANGE, PRESENCE_EXCHANGE};
use hostbus_protocol::types::ObjectClass;
use hostbus_protocol::{decode, ContentType, Event, EventAction, Heartbeat};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

use crate::client::Client;
use crate::error::ClientError;

/// How alive a host looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// A heartbeat arrived within three intervals.
    Alive,
    /// Heartbeats are late (three to ten intervals).
    Stale,
    /// The agent said goodbye, or has been silent for ten intervals.
    Gone,
}

/// What presence knows of one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostView {
    /// Host id.
    pub host_id: String,
    /// Alive, stale or gone.
    pub liveness: Liveness,
    /// The agent's epoch.
    pub epoch: Uuid,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms: u64,
    /// Heartbeat interval, ms.
    pub interval_ms: u32,
    /// The agent's last event sequence number.
    pub last_seq: u64,
    /// Versions.
    pub versions: Versions,
    /// Labels.
    pub labels: Vec<String>,
    /// Health.
    pub health: Health,
    /// Load.
    pub load: Load,
}

struct Entry {
    hb: Heartbeat,
    seen: Instant,
    offline: bool,
}

struct Inner {
    hosts: Mutex<BTreeMap<String, Entry>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The presence view. Cheap to clone; kept up to date by a background task
/// with its own broker connection (reconnecting on its own).
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

impl Presence {
    pub(crate) async fn start(client: Client) -> Result<Self, ClientError> {
        let p = Self {
            inner: Arc::new(Inner {
                hosts: Mutex::default(),
                started: Instant::now(),
            }),
        };
        let listener = listen(&client).await?;
        let weak = Arc::downgrade(&p.inner);
        tokio::spawn(async move {
            let mut listener = listener;
            loop {
                while let Some(Ok(d)) = listener.consumer.next().await {
                    let Some(inner) = weak.upgrade() else { return };
                    let ct = ContentType::parse(
                        d.properties.content_type().as_ref().map(|c| c.as_str()),
                    )
                    .unwrap_or_default();
                    if d.exchange.as_str() == PRESENCE_EXCHANGE {
                        if let Ok(hb) = decode::<Heartbeat>(ct, &d.data, 1 << 20) {
                            let mut hosts = lock(&inner.hosts);
                            hosts.insert(
                                hb.host_id.clone(),
                                Entry {
                                    hb,
                                    seen: Instant::now(),
                                    offline: false,
                                },
                            );
                        }
                    } else if let Ok(ev) = decode::<Event>(ct, &d.data, 64 << 20) {
                        if ev.class == ObjectClass::Agent && ev.action == EventAction::Offline {
                            if let Some(e) = lock(&inner.hosts).get_mut(&ev.host_id) {
                                if e.hb.epoch == ev.epoch {
                                    e.offline = true;
                                }
                            }
                        }
                    }
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tracing::info!("presence connection lost; reconnecting");
                listener = loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if weak.strong_count() == 0 {
                        return;
                    }
                    if let Ok(c) = listen(&client).await {
                        break c;
                    }
                };
            }
        });
        Ok(p)
    }

    /// Every host seen, sorted by id.
    pub fn hosts(&self) -> Vec<HostView> {
        let hosts = lock(&self.inner.hosts);
        hosts
            .values()
            .map(|e| {
                let interval = Duration::from_millis(u64::from(e.hb.interval_ms.max(1)));
                let age = e.seen.elapsed();
                let liveness = if e.offline || age >= interval * 10 {
                    Liveness::Gone
                } else if age >= interval * 3 {
                    Liveness::Stale
                } else {
                    Liveness::Alive
                };
                HostView {
                    host_id: e.hb.host_id.clone(),
                    liveness,
                    epoch: e.hb.epoch,
                    last_seen_ms: age.as_millis() as u64,
                    interval_ms: e.hb.interval_ms,
                    last_seq: e.hb.last_seq,
                    versions: e.hb.versions.clone(),
                    labels: e.hb.labels.clone(),
                    health: e.hb.health.clone(),
                    load: e.hb.load.clone(),
                }
            })
            .collect()
    }

    /// Alive hosts that `target` reaches.
    pub fn expected(&self, target: &Target) -> Vec<String> {
        self.hosts()
            .into_iter()
            .filter(|h| h.liveness == Liveness::Alive)
            .filter(|h| match target {
                Target::All => true,
                Target::Group(l) => h.labels.iter().any(|x| x == l),
                Target::Host(id) => &h.host_id == id,
            })
            .map(|h| h.host_id)
            .collect()
    }

    /// Whether the view has listened long enough to have heard every live
    /// host at least once: one and a half of the longest interval heard (5 s
    /// before any heartbeat arrived), at least one second.
    pub fn is_warm(&self) -> bool {
        let longest = lock(&self.inner.hosts)
            .values()
            .map(|e| e.hb.interval_ms)
            .max()
            // Until a heartbeat tells the interval, assume the agents' default.
            .unwrap_or(5000);
        self.inner.started.elapsed()
            >= Duration::from_millis(u64::from(longest) * 3 / 2).max(Duration::from_secs(1))
    }

    /// Waits until [`Presence::is_warm`], at most `max`.
    pub async fn wait_warm(&self, max: Duration) {
        let deadline = Instant::now() + max;
        while !self.is_warm() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A consumer with the connection and channel it lives on.
pub(crate) struct Listener {
    pub(crate) consumer: lapin::Consumer,
    _channel: lapin::Channel,
    _conn: lapin::Connection,
}

async fn listen(client: &Client) -> Result<Listener, ClientError> {
    let conn = client.open_connection("presence").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.queue_bind(
        q.name().clone(),
        PRESENCE_EXCHANGE.into(),
        "*.heartbeat".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        q.name().clone(),
        EVENT_EXCHANGE.into(),
        "*.agent.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(Listener {
        consumer,
        _channel: ch,
        _conn: conn,
    })
}
