//! What a fleet view knows of each host, and how announcements, heartbeats
//! and the broker's answers change it. Pure data: no broker, no clock.

use std::collections::{BTreeMap, HashMap};

use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::types::{HealthStatus, Placement, Timestamp};
use hostbus_protocol::{Announcement, Heartbeat, RosterAction};
use uuid::Uuid;

use super::{HostView, Liveness};

/// One host as the view knows it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) host_id: String,
    pub(super) epoch: Uuid,
    started_at: Timestamp,
    interval_ms: u32,
    labels: Vec<String>,
    versions: Option<Versions>,
    capabilities: Vec<String>,
    migration_uri: Option<String>,
    /// When last heard of: the latest heartbeat's or announcement's time.
    pub(super) last: Option<Timestamp>,
    beat: Option<Heartbeat>,
    pub(super) offline: bool,
    /// Whether its command queue had a consumer when last asked, since its
    /// last heartbeat.
    pub(super) connected: Option<bool>,
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
            migration_uri: None,
            last: None,
            beat: None,
            offline: false,
            connected: None,
        }
    }

    /// Whether the broker should be asked about this host now: silent for
    /// three intervals, not gone for good.
    pub(super) fn needs_probe(&self, now: Timestamp) -> bool {
        let interval = u64::from(self.interval_ms.max(1));
        let silent = self
            .last
            .is_none_or(|t| now.saturating_sub(t) >= 3 * interval);
        silent && !self.offline && self.connected != Some(false)
    }
}

/// Every host known, and the forgotten ones.
#[derive(Default)]
pub(super) struct State {
    pub(super) hosts: BTreeMap<String, Entry>,
    /// Hosts forgotten, and when: what they published before is ignored.
    forgotten: HashMap<String, Timestamp>,
    /// Since when the view has every heartbeat (ms since the epoch): it
    /// reads the heartbeat stream without a gap from there on (or polls an
    /// agent's socket every interval). A host heard of since then has its
    /// real last-seen age; one not heard of has been silent for longer.
    heard_since: Option<Timestamp>,
}

impl State {
    /// Notes that every heartbeat from `time` on is read.
    pub(super) fn read_from(&mut self, time: Timestamp) {
        self.heard_since = Some(self.heard_since.map_or(time, |t| t.min(time)));
    }

    /// How far back from `now` the view has every heartbeat: a host
    /// silent for longer shows no last-seen age.
    pub(super) fn lookback(&self, now: Timestamp) -> u64 {
        self.heard_since.map_or(0, |t| now.saturating_sub(t))
    }

    /// What the view says of every host at `now`.
    pub(super) fn views(&self, now: Timestamp) -> impl Iterator<Item = HostView> + '_ {
        self.hosts.values().map(move |e| self.view(e, now))
    }

    /// What the view says of `host` at `now`, if it knows it.
    pub(super) fn host(&self, host: &str, now: Timestamp) -> Option<HostView> {
        self.hosts.get(host).map(|e| self.view(e, now))
    }

    fn view(&self, e: &Entry, now: Timestamp) -> HostView {
        view(e, now, self.heard_since.unwrap_or(Timestamp::MAX))
    }

    /// The entry of `host` for news from `time`; `None` when the host was
    /// forgotten since (what it published before is ignored).
    fn entry(&mut self, host: &str, time: Timestamp) -> Option<&mut Entry> {
        if self.forgotten.get(host).is_some_and(|t| time <= *t) {
            return None;
        }
        Some(
            self.hosts
                .entry(host.to_owned())
                .or_insert_with(|| Entry::new(host)),
        )
    }

    /// Takes in a roster announcement.
    pub(super) fn announce(&mut self, a: Announcement) {
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
        let Some(e) = self.entry(&a.host_id, a.time) else {
            return;
        };
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
        if a.action == RosterAction::Online {
            e.migration_uri = a.migration_uri;
        }
        e.offline = a.action == RosterAction::Offline;
        e.connected = None;
        e.last = Some(e.last.unwrap_or(0).max(a.time));
    }

    /// Takes in a heartbeat. Heartbeats are read in the order they were
    /// published, from a point on and without a gap: every beat after this
    /// one is read too.
    pub(super) fn beat(&mut self, hb: Heartbeat) {
        self.read_from(hb.time);
        let Some(e) = self.entry(&hb.host_id, hb.time) else {
            return;
        };
        if e.last.is_some_and(|t| t > hb.time) {
            // Older than the latest news. A beat of the current epoch
            // still says what announcements do not (health, load,
            // placement) when no later beat did: an agent beats as its
            // session starts, then announces itself, and a new view
            // applies the roster before the beats.
            let newer = e.beat.as_ref().is_some_and(|b| b.time >= hb.time);
            if hb.epoch == e.epoch && !e.offline && !newer {
                e.beat = Some(hb);
            }
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

/// The load of a host no heartbeat was seen of.
fn idle() -> Load {
    Load {
        in_flight: 0,
        commands_total: 0,
        tasks_running: 0,
        vms_active: 0,
        load_avg_milli: 0,
        memory_free_kib: 0,
    }
}

/// What the view says of `e` at `now`, having every heartbeat since
/// `heard_since`.
fn view(e: &Entry, now: Timestamp, heard_since: Timestamp) -> HostView {
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
    let (health, load, last_seq, placement) = match &e.beat {
        Some(hb) => (
            hb.health.clone(),
            hb.load.clone(),
            hb.last_seq,
            hb.placement.clone(),
        ),
        None => (
            Health {
                status: HealthStatus::Down,
                hypervisor_connected: false,
                message: "no heartbeat seen".into(),
            },
            idle(),
            0,
            Placement::default(),
        ),
    };
    HostView {
        host_id: e.host_id.clone(),
        liveness,
        connected: e.connected,
        epoch: e.epoch,
        last_seen_ms: e.last.filter(|t| *t >= heard_since).and(age),
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
        placement,
        migration_uri: e.migration_uri.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            load: idle(),
            facts: BTreeMap::new(),
            placement: Placement::default(),
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
            migration_uri: None,
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
        let v: BTreeMap<String, HostView> = s.views(now).map(|v| (v.host_id.clone(), v)).collect();
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
        assert_eq!(s.host("dead", now).expect("dead").liveness, Liveness::Alive);
    }

    #[test]
    fn the_last_seen_age_is_the_real_one_for_every_beat_the_view_has() {
        // A live view saw a host's last beat 40 s ago; its agent died.
        let now = 1_000_000;
        let e = Uuid::new_v4();
        let mut s = State::default();
        s.announce(announcement("dead", RosterAction::Online, e, now - 600_000));
        s.beat(beat("dead", e, now - 40_000));
        s.hosts.get_mut("dead").expect("dead").connected = Some(false);
        let v = s.host("dead", now).expect("dead");
        assert_eq!(v.liveness, Liveness::Gone);
        assert_eq!(v.last_seen_ms, Some(40_000), "the beat it has");
    }

    #[test]
    fn a_host_not_heard_of_since_the_heartbeats_read_shows_how_far_back_they_go() {
        // A fresh view read heartbeats 8 s back (then the broker said no
        // agent of these hosts is connected, so it read no further): one
        // host announced itself a minute ago and beat 12 s ago, unread.
        let now = 1_000_000;
        let e = Uuid::new_v4();
        let mut s = State::default();
        s.read_from(now - 8_000);
        s.announce(announcement("dead", RosterAction::Online, e, now - 60_000));
        s.announce(announcement("new", RosterAction::Online, e, now - 5_000));
        s.hosts.get_mut("dead").expect("dead").connected = Some(false);
        let v = s.host("dead", now).expect("dead");
        assert_eq!((v.liveness, v.last_seen_ms), (Liveness::Gone, None));
        assert_eq!(
            s.lookback(now),
            8_000,
            "silent for more than this, not 17 s"
        );
        // An announcement since then is news too: nothing came after it.
        assert_eq!(s.host("new", now).expect("new").last_seen_ms, Some(5_000));
        // A beat read from before that point (the stream starts at a chunk
        // boundary): every beat after it is read, so its age is the real one.
        s.beat(beat("dead", e, now - 12_000));
        assert_eq!(
            s.host("dead", now).expect("dead").last_seen_ms,
            Some(12_000)
        );
        assert_eq!(s.lookback(now), 12_000);
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
    fn placement_is_the_last_beats_and_the_migration_uri_the_last_online_announcements() {
        let e = Uuid::new_v4();
        let mut s = State::default();
        let mut online = announcement("h", RosterAction::Online, e, 100);
        online.migration_uri = Some("qemu+tls://h.example/system".into());
        s.announce(online);
        let mut hb = beat("h", e, 200);
        hb.placement = Placement {
            enabled: false,
            reason: "evacuating".into(),
        };
        s.beat(hb);
        let v = s.host("h", 300).expect("h");
        assert_eq!(
            v.migration_uri.as_deref(),
            Some("qemu+tls://h.example/system")
        );
        assert!(!v.placement.enabled);
        assert_eq!(v.placement.reason, "evacuating");
        s.beat(beat("h", e, 400));
        assert!(s.host("h", 500).expect("h").placement.enabled);
    }

    #[test]
    fn an_agents_first_beat_counts_though_its_announcement_came_after_it() {
        // An agent beats as its session starts, then announces itself; a
        // fresh view applies the roster first, then the beats it read.
        let e = Uuid::new_v4();
        let mut s = State::default();
        s.announce(announcement("h", RosterAction::Online, e, 100));
        s.beat(beat("h", e, 90));
        let v = s.host("h", 150).expect("h");
        assert_eq!(v.health.status, HealthStatus::Ok, "{:?}", v.health);
        assert_eq!(
            v.last_seen_ms,
            Some(50),
            "the announcement is the latest news"
        );
        // A beat of an older epoch stays ignored.
        s.beat(beat("h", Uuid::new_v4(), 95));
        assert_eq!(s.hosts["h"].epoch, e);
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
