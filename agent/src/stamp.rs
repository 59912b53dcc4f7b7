//! The session clock: this agent's host id, epoch and event sequence, and
//! the only code that stamps them on what the agent publishes (events,
//! `agent.online|offline` with their inventory, `host.snapshot`
//! inventories, heartbeats, roster announcements).

use std::sync::atomic::{AtomicU64, Ordering};

use hostbus_bridge::ObjectEvent;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::types::{Inventory, ObjectClass, Placement, Record, Timestamp};
use hostbus_protocol::{Announcement, Event, EventAction, Heartbeat, RosterAction};
use uuid::Uuid;

/// Host id, epoch and the sequence of this agent's events.
#[derive(Debug)]
pub(crate) struct Stamp {
    host_id: String,
    epoch: Uuid,
    /// The last sequence number given out (0: none yet).
    seq: AtomicU64,
}

/// What presence messages (heartbeats, roster announcements) say about
/// the agent besides their stamp.
#[derive(Debug, Clone)]
pub(crate) struct Presence {
    /// When it was said.
    pub time: Timestamp,
    /// When the agent started.
    pub started_at: Timestamp,
    /// The heartbeat interval.
    pub interval_ms: u32,
    /// The host's labels.
    pub labels: Vec<String>,
    /// Agent, protocol, libvirt and hypervisor versions.
    pub versions: Versions,
    /// Whether the host takes new VMs (`host.disable`).
    pub placement: Placement,
    /// How other hosts' libvirt reaches this one's for migrations.
    pub migration_uri: Option<String>,
}

impl Stamp {
    /// A fresh epoch for `host_id`, no event numbered yet.
    pub(crate) fn new(host_id: impl Into<String>) -> Self {
        Self {
            host_id: host_id.into(),
            epoch: Uuid::new_v4(),
            seq: AtomicU64::new(0),
        }
    }

    /// The host id.
    pub(crate) fn host_id(&self) -> &str {
        &self.host_id
    }

    /// This agent's epoch.
    pub(crate) fn epoch(&self) -> Uuid {
        self.epoch
    }

    /// The last sequence number given to an event.
    pub(crate) fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A bridge event as the protocol event it is published as, numbered next.
    pub(crate) fn event(&self, ev: ObjectEvent) -> Event {
        Event {
            host_id: self.host_id.clone(),
            epoch: self.epoch,
            seq: self.next_seq(),
            time: ev.time,
            class: ev.class,
            action: ev.action,
            object_id: ev.object_id,
            generation: ev.generation,
            record: ev.record,
            inventory: None,
            migration: ev.migration,
        }
    }

    /// `agent.online` (with the inventory, stamped with this event's
    /// number) or `agent.offline`, numbered next.
    pub(crate) fn announcement(
        &self,
        action: EventAction,
        time: Timestamp,
        inventory: Option<Inventory>,
    ) -> Event {
        let seq = self.next_seq();
        let inventory = inventory.map(|mut inv| {
            inv.epoch = Some(self.epoch);
            inv.seq = seq;
            inv
        });
        Event {
            host_id: self.host_id.clone(),
            epoch: self.epoch,
            seq,
            time,
            class: ObjectClass::Agent,
            action,
            object_id: self.host_id.clone(),
            generation: seq,
            record: inventory
                .as_ref()
                .map_or(Record::None, |i| Record::Host(i.host.clone())),
            inventory,
            migration: None,
        }
    }

    /// Stamps a `host.snapshot` inventory with the epoch and the last event
    /// number it reflects.
    pub(crate) fn inventory(&self, inv: &mut Inventory) {
        inv.epoch = Some(self.epoch);
        inv.seq = self.last_seq();
    }

    /// A heartbeat with the last event number.
    pub(crate) fn heartbeat(&self, p: Presence, health: Health, load: Load) -> Heartbeat {
        Heartbeat {
            host_id: self.host_id.clone(),
            epoch: self.epoch,
            last_seq: self.last_seq(),
            time: p.time,
            started_at: p.started_at,
            interval_ms: p.interval_ms,
            versions: p.versions,
            // In the roster announcement and host.capabilities, not every beat.
            capabilities: Vec::new(),
            labels: p.labels,
            health,
            load,
            facts: Default::default(),
            placement: p.placement,
        }
    }

    /// A roster announcement.
    pub(crate) fn roster(
        &self,
        p: Presence,
        action: RosterAction,
        capabilities: Vec<String>,
    ) -> Announcement {
        Announcement {
            host_id: self.host_id.clone(),
            action,
            epoch: Some(self.epoch),
            time: p.time,
            started_at: p.started_at,
            interval_ms: p.interval_ms,
            labels: p.labels,
            versions: Some(p.versions),
            capabilities,
            by: None,
            migration_uri: p.migration_uri,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_once_and_snapshots_reflect_the_last() {
        let s = Stamp::new("h1");
        let off = s.announcement(EventAction::Offline, 1, None);
        assert_eq!((off.seq, off.generation, off.epoch), (1, 1, s.epoch()));
        assert_eq!(s.last_seq(), 1);
        let ev = s.event(ObjectEvent {
            class: ObjectClass::Vm,
            action: EventAction::Started,
            object_id: "x".into(),
            generation: 7,
            record: Record::None,
            time: 2,
            migration: None,
        });
        assert_eq!((ev.seq, ev.generation, ev.host_id.as_str()), (2, 7, "h1"));
        assert_eq!(s.last_seq(), 2);
    }
}
