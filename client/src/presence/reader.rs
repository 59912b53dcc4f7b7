//! The stream consumers of a fleet view: the roster from its start and
//! heartbeats some way back, read up to a sync marker, then followed.

use std::collections::HashMap;
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_protocol::names::{self, PRESENCE_EXCHANGE};
use hostbus_protocol::types::Timestamp;
use hostbus_protocol::{decode, now_ms, Announcement, Heartbeat};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection, Consumer};
use uuid::Uuid;

use crate::connection::{close, Connector};
use crate::error::{ClientError, ErrorKind};
use crate::stream::{self, consume, content_type, offset_of};

/// How long [`Reader::read_history`] waits for the broker's history.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries of each stream in flight; acked in quarters.
const PREFETCH: u16 = 1000;

/// The largest announcement or heartbeat read.
const MAX_MESSAGE: usize = 1 << 20;

/// A stream offset `lookback` ago, and that time (ms since the epoch,
/// rounded down to the second as the broker takes it).
fn since(lookback: Duration) -> (Timestamp, AMQPValue) {
    let from = now_ms().saturating_sub(lookback.as_millis() as u64) / 1000 * 1000;
    (from, stream::at_time(from))
}

/// What the reader hands on.
pub(super) enum Item {
    Roster(Announcement),
    Beat(Heartbeat),
    /// This reader's sync marker came back: the stream is read up to
    /// where it was when the reader (re)started (after a reconnection, on
    /// the beats stream: the view is current again).
    Synced,
}

/// The two streams a view reads.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Roster,
    Beats,
}

/// The stream consumers of a view.
pub(super) struct Reader {
    conn: Connection,
    ch: Channel,
    roster: Consumer,
    beats: Option<Consumer>,
    marker: String,
    /// Where the heartbeats read start (ms since the epoch): every beat
    /// published since is read.
    pub(super) beats_from: Timestamp,
    /// Offsets to resume from after a reconnection.
    next_roster: Option<u64>,
    next_beat: Option<u64>,
    pub(super) caught_up: bool,
    unacked: HashMap<Source, u64>,
}

/// A connection and channel for the streams, with a fresh sync marker
/// published on it first (everything the streams hold before the marker
/// is what the broker had when this reader (re)started), and the streams'
/// consumers, which `consumers` starts on the channel. When anything
/// fails, the connection is closed.
async fn connect(
    connector: &Connector,
    consumers: impl AsyncFnOnce(&Channel) -> Result<(Consumer, Consumer), ClientError>,
) -> Result<(Connection, Channel, String, Consumer, Consumer), ClientError> {
    let (conn, (ch, marker, roster, beats)) = connector
        .open("presence", async |conn| {
            let ch = conn.create_channel().await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let marker = Uuid::new_v4().simple().to_string();
            publish_marker(&ch, &marker).await?;
            let (roster, beats) = consumers(&ch).await?;
            Ok((ch, marker, roster, beats))
        })
        .await?;
    Ok((conn, ch, marker, roster, beats))
}

impl Reader {
    /// Publishes a sync marker and starts both consumers: the roster from
    /// its start, heartbeats `lookback` back.
    pub(super) async fn open(
        connector: &Connector,
        lookback: Duration,
    ) -> Result<Self, ClientError> {
        let mut beats_from = 0;
        let (conn, ch, marker, roster, beats) = connect(connector, async |ch| {
            let roster = consume(ch, names::ROSTER_STREAM, stream::named("first")).await?;
            let (from, offset) = since(lookback);
            beats_from = from;
            let beats = consume(ch, names::BEAT_STREAM, offset).await?;
            Ok((roster, beats))
        })
        .await?;
        Ok(Self {
            conn,
            ch,
            roster,
            beats: Some(beats),
            marker,
            beats_from,
            next_roster: None,
            next_beat: None,
            caught_up: false,
            unacked: HashMap::new(),
        })
    }

    /// Reads both streams at once up to the marker.
    pub(super) async fn read_history(
        &mut self,
    ) -> Result<(Vec<Announcement>, Vec<Heartbeat>), ClientError> {
        let (mut roster, mut beats) = (Vec::new(), Vec::new());
        let (mut roster_done, mut beats_done) = (false, false);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while !(roster_done && beats_done) {
            let Some(beat_consumer) = self.beats.as_mut() else {
                break;
            };
            let next = async {
                tokio::select! {
                    d = self.roster.next(), if !roster_done => (Source::Roster, d),
                    d = beat_consumer.next(), if !beats_done => (Source::Beats, d),
                }
            };
            let Ok((from, Some(d))) = tokio::time::timeout_at(deadline, next).await else {
                tracing::warn!("presence: the broker's history did not arrive in time");
                return Ok((roster, beats));
            };
            match self.take(from, &d?).await {
                Some(Item::Synced) if from == Source::Roster => roster_done = true,
                Some(Item::Synced) => beats_done = true,
                Some(Item::Roster(a)) => roster.push(a),
                Some(Item::Beat(hb)) => beats.push(hb),
                None => {}
            }
        }
        self.caught_up = roster_done && beats_done;
        Ok((roster, beats))
    }

    /// Reads heartbeats `lookback` back up to the marker again (for hosts
    /// with intervals longer than the first look-back covers).
    pub(super) async fn read_beats_again(
        &mut self,
        lookback: Duration,
    ) -> Result<Vec<Heartbeat>, ClientError> {
        let (from, offset) = since(lookback);
        let mut consumer = consume(&self.ch, names::BEAT_STREAM, offset).await?;
        self.beats_from = self.beats_from.min(from);
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
            if let Some(hb) = beat(&d) {
                out.push(hb);
            }
        }
    }

    /// The connection the streams are read on.
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection (see [`close`]).
    pub(super) async fn close(self) -> Result<(), ClientError> {
        close(&self.conn, "fleet view closed").await
    }

    fn is_marker(&self, d: &lapin::message::Delivery) -> bool {
        d.routing_key.as_str().strip_prefix("_sync.") == Some(self.marker.as_str())
    }

    /// Acks stream deliveries in batches (streams need acks only to keep
    /// credit flowing).
    async fn settle(&mut self, from: Source, d: &lapin::message::Delivery) {
        let n = self.unacked.entry(from).or_default();
        *n += 1;
        if *n >= u64::from(PREFETCH / 4) {
            *n = 0;
            let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
        }
    }

    /// Takes one delivery in: settles it, notes where to resume after it,
    /// and decodes what it carries (`None`: another reader's marker, or
    /// nothing this peer can decode).
    async fn take(&mut self, from: Source, d: &lapin::message::Delivery) -> Option<Item> {
        self.settle(from, d).await;
        let next = offset_of(d).map(|o| o + 1);
        match from {
            Source::Roster => self.next_roster = next,
            Source::Beats => self.next_beat = next,
        }
        if self.is_marker(d) {
            return Some(Item::Synced);
        }
        if d.routing_key.as_str().starts_with("_sync.") {
            return None;
        }
        match from {
            Source::Roster => decode::<Announcement>(content_type(d), &d.data, MAX_MESSAGE)
                .ok()
                .filter(|a| stream::published_as(d, PRESENCE_EXCHANGE, &a.routing_key()))
                .map(Item::Roster),
            Source::Beats => beat(d).map(Item::Beat),
        }
    }

    /// The next announcement or heartbeat; `None` when the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Item> {
        loop {
            let beats = self.beats.as_mut()?;
            let (from, d) = tokio::select! {
                d = self.roster.next() => (Source::Roster, d),
                d = beats.next() => (Source::Beats, d),
            };
            match self.take(from, &d?.ok()?).await {
                Some(Item::Synced) if from == Source::Roster => {}
                Some(item) => return Some(item),
                None => {}
            }
        }
    }

    /// Opens a new connection and resumes both streams where they stopped.
    pub(super) async fn reopen(&mut self, connector: &Connector) -> Result<(), ClientError> {
        let at = |o: Option<u64>| o.map_or_else(|| stream::named("next"), stream::at);
        let (next_roster, next_beat) = (self.next_roster, self.next_beat);
        let (conn, ch, marker, roster, beats) = connect(connector, async |ch| {
            let roster = consume(ch, names::ROSTER_STREAM, at(next_roster)).await?;
            let beats = consume(ch, names::BEAT_STREAM, at(next_beat)).await?;
            Ok((roster, beats))
        })
        .await?;
        self.roster = roster;
        self.beats = Some(beats);
        self.marker = marker;
        self.ch = ch;
        self.conn = conn;
        self.unacked.clear();
        Ok(())
    }
}

/// The heartbeat delivery `d` carries, if it is one and came through the
/// presence exchange under its host's key.
fn beat(d: &lapin::message::Delivery) -> Option<Heartbeat> {
    decode::<Heartbeat>(content_type(d), &d.data, MAX_MESSAGE)
        .ok()
        .filter(|hb| stream::published_as(d, PRESENCE_EXCHANGE, &hb.routing_key()))
}

/// Publishes this reader's sync marker on the presence exchange (bound to
/// both streams) and waits for the broker's confirm.
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
        .map_err(|e| stream::missing(PRESENCE_EXCHANGE, e))?;
    if confirm.is_nack() {
        return Err(ClientError::new(
            ErrorKind::Connection,
            "the broker refused the presence sync marker",
        ));
    }
    Ok(())
}
