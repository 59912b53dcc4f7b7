//! Generations and events. Every record the bridge hands out passes through
//! [`Observer::observe`]: if it differs from the last one seen for that
//! object, the object's generation grows and an event goes to every
//! subscriber. Operations, libvirt callbacks and reconciliation all observe
//! the same way, so an event is emitted once per change whoever saw it first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reboot reports of one object closer than this are one reboot.
const MOMENTARY_DEDUP: Duration = Duration::from_secs(2);

use hostbus_protocol::types::{
    MigrationNote, ObjectClass, PoolState, PowerState, Record, Timestamp,
};
use hostbus_protocol::{now_ms, EventAction};

use crate::locks::lock;

/// A change to one object, as the bridge reports it. The agent stamps it
/// with its host id, epoch and sequence number to make a protocol `Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// Class of the object.
    pub class: ObjectClass,
    /// What happened.
    pub action: EventAction,
    /// The object's id: uuid for VMs, name for pools and networks,
    /// `pool/volume` for volumes, `vm-uuid/name` for snapshots, task id for tasks.
    pub object_id: String,
    /// The object's generation after the change.
    pub generation: u64,
    /// The full record after the change, [`Record::None`] once gone.
    pub record: Record,
    /// When the bridge saw it.
    pub time: Timestamp,
    /// The migration that made it: on a migrated VM's `undefined` event
    /// on the host it left and on its first event on the host it reached.
    pub migration: Option<MigrationNote>,
}

/// A migration of a VM the observer expects to see: leaving this host
/// (its `undefined` event carries the note) or arriving (its first event
/// does, and its generation continues above `floor`).
struct Move {
    note: MigrationNote,
    incoming: bool,
    floor: u64,
}

struct Seen {
    generation: u64,
    /// When the last momentary event (a reboot) was emitted: the operation
    /// and libvirt's callback both report a reboot, which is one event.
    last_momentary: Option<Instant>,
    /// The last record seen, normalized; `None` once the object is gone.
    last: Option<Record>,
    /// The last record seen as it was read, with its generation.
    last_full: Option<Record>,
    /// When the read of the last record seen started (see [`Observer::ticket`]).
    ticket: u64,
}

/// A record the observer keeps generations of: its class and its place in
/// [`Record`].
pub(crate) trait Observed: Clone {
    /// The class of such records.
    const CLASS: ObjectClass;
    /// The record as a [`Record`].
    fn into_record(self) -> Record;
    /// The record back out of a [`Record`] of its class.
    fn from_record(r: Record) -> Option<Self>;
}

macro_rules! observed {
    ($($ty:ident => $variant:ident),+ $(,)?) => {$(
        impl Observed for hostbus_protocol::types::$ty {
            const CLASS: ObjectClass = ObjectClass::$variant;
            fn into_record(self) -> Record {
                Record::$variant(self)
            }
            fn from_record(r: Record) -> Option<Self> {
                match r {
                    Record::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    )+};
}

observed! {
    HostRecord => Host,
    VmRecord => Vm,
    SnapshotRecord => Snapshot,
    PoolRecord => Pool,
    VolumeRecord => Volume,
    NetworkRecord => Network,
}

/// Per-object generations and the subscribers to changes.
#[derive(Default)]
pub(crate) struct Observer {
    seen: Mutex<HashMap<(ObjectClass, String), Seen>>,
    /// Orders reads: a ticket is taken before reading an object's state.
    clock: AtomicU64,
    subscribers: Mutex<Vec<Deliver>>,
    /// Migrations in flight, by VM uuid.
    moves: Mutex<HashMap<String, Move>>,
}

/// Where one subscription's events go. It is called on the thread that
/// observed the change (the event worker, a task, a caller), with the
/// subscribers' list locked, so it must not block; returning `false` ends
/// the subscription.
pub type Deliver = Box<dyn FnMut(ObjectEvent) -> bool + Send>;

/// The record with everything that is not state removed, for comparison.
fn normalized(r: &Record) -> Record {
    let mut r = r.clone();
    set_generation(&mut r, 0);
    if let Record::Vm(vm) = &mut r {
        vm.current_operations.clear();
        vm.allowed_operations.clear();
    }
    r
}

pub(crate) fn set_generation(r: &mut Record, g: u64) {
    match r {
        Record::Host(x) => x.generation = g,
        Record::Vm(x) => x.generation = g,
        Record::Snapshot(x) => x.generation = g,
        Record::Pool(x) => x.generation = g,
        Record::Volume(x) => x.generation = g,
        Record::Network(x) => x.generation = g,
        Record::Task(x) => x.generation = g,
        Record::Migration(x) => x.vm.generation = g,
        Record::None => {}
    }
}

/// The action that explains a change from `old` to `new`.
fn infer(class: ObjectClass, old: Option<&Record>, new: Option<&Record>) -> EventAction {
    match (old, new) {
        (None, Some(_)) => match class {
            ObjectClass::Volume | ObjectClass::Snapshot | ObjectClass::Task => EventAction::Created,
            _ => EventAction::Defined,
        },
        (Some(_), None) => match class {
            ObjectClass::Volume | ObjectClass::Snapshot => EventAction::Deleted,
            _ => EventAction::Undefined,
        },
        (Some(Record::Vm(a)), Some(Record::Vm(b))) => {
            use PowerState::*;
            match (a.power_state, b.power_state) {
                (x, y) if x == y => EventAction::Changed,
                (Halted | Crashed, Running | Paused) => EventAction::Started,
                (Running, Paused) => EventAction::Paused,
                (Paused | Suspended, Running) => EventAction::Resumed,
                (_, Suspended) => EventAction::Suspended,
                (_, Halted) => EventAction::Stopped,
                (_, Crashed) => EventAction::Crashed,
                _ => EventAction::Changed,
            }
        }
        (Some(Record::Pool(a)), Some(Record::Pool(b))) if a.state != b.state => {
            if b.state == PoolState::Running {
                EventAction::Started
            } else if b.state == PoolState::Inactive {
                EventAction::Stopped
            } else {
                EventAction::Changed
            }
        }
        (Some(Record::Network(a)), Some(Record::Network(b))) if a.active != b.active => {
            if b.active {
                EventAction::Started
            } else {
                EventAction::Stopped
            }
        }
        _ => EventAction::Changed,
    }
}

impl Observer {
    /// Expects VM `uuid` to leave this host (`incoming` false) or arrive
    /// (true) by the migration `note`; an arriving VM's generations
    /// continue above `floor`. The note goes on the event that shows it.
    pub(crate) fn expect_move(&self, uuid: &str, note: MigrationNote, incoming: bool, floor: u64) {
        lock(&self.moves).insert(
            uuid.to_owned(),
            Move {
                note,
                incoming,
                floor,
            },
        );
    }

    /// The generation of an object as last observed (0: never seen).
    pub(crate) fn generation(&self, class: ObjectClass, id: &str) -> u64 {
        lock(&self.seen)
            .get(&(class, id.to_owned()))
            .map_or(0, |s| s.generation)
    }

    /// Forgets an expected migration that did not happen.
    pub(crate) fn forget_move(&self, uuid: &str) {
        lock(&self.moves).remove(uuid);
    }

    pub(crate) fn subscribe(&self, deliver: Deliver) {
        lock(&self.subscribers).push(deliver);
    }

    fn publish(&self, ev: ObjectEvent) {
        let mut subs = lock(&self.subscribers);
        subs.retain_mut(|deliver| deliver(ev.clone()));
    }

    /// Records the current state of an object (`None`: it does not exist)
    /// and returns it stamped with its generation. When it differs from the
    /// last state seen, or `hint` names a momentary action (a reboot), the
    /// generation grows and, if `emit`, an event is published.
    pub(crate) fn observe(
        &self,
        class: ObjectClass,
        id: &str,
        record: Option<Record>,
        hint: Option<EventAction>,
        emit: bool,
    ) -> Option<Record> {
        let ticket = self.ticket();
        self.observe_read(class, id, record, hint, emit, ticket)
    }

    /// A ticket to take before reading an object's state from libvirt:
    /// tickets grow, so [`observe_read`](Self::observe_read) can tell a read
    /// that started before the last one observed.
    pub(crate) fn ticket(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// [`observe`](Self::observe) of a record whose read started at
    /// `ticket`. A read that started before the last observed one may have
    /// seen the object before a change that one saw (an event worker's read
    /// racing an operation): it is observed as the newer record instead, so
    /// it cannot undo a change and report it twice.
    pub(crate) fn observe_read(
        &self,
        class: ObjectClass,
        id: &str,
        mut record: Option<Record>,
        hint: Option<EventAction>,
        emit: bool,
        ticket: u64,
    ) -> Option<Record> {
        let mut seen = lock(&self.seen);
        let entry = seen.entry((class, id.to_owned())).or_insert(Seen {
            generation: 0,
            last_momentary: None,
            last: None,
            last_full: None,
            ticket: 0,
        });
        if ticket < entry.ticket {
            record.clone_from(&entry.last_full);
        } else {
            entry.ticket = ticket;
        }
        // A VM leaving by migration passes through states (paused at the
        // switch-over, stopped) that are the move's, not the VM's: its
        // source publishes none of them, only its `undefined` at the end
        // (or, when the move fails, the state it is left in once the move
        // is forgotten), so its last generation here is the one the
        // destination continues above.
        if class == ObjectClass::Vm
            && record.is_some()
            && lock(&self.moves).get(id).is_some_and(|m| !m.incoming)
        {
            return entry.last_full.clone();
        }
        let norm = record.as_ref().map(normalized);
        let changed = norm != entry.last || (entry.generation == 0 && record.is_some());
        let momentary = hint == Some(EventAction::Rebooted)
            && record.is_some()
            && entry
                .last_momentary
                .is_none_or(|t| t.elapsed() > MOMENTARY_DEDUP);
        if momentary {
            entry.last_momentary = Some(Instant::now());
        }
        let mut event = None;
        if changed || momentary {
            let action = match hint {
                Some(h) if momentary => h,
                _ => infer(class, entry.last.as_ref(), norm.as_ref()),
            };
            let mut migration = None;
            if class == ObjectClass::Vm {
                let mut moves = lock(&self.moves);
                let shows = moves.get(id).is_some_and(|m| {
                    if m.incoming {
                        record.is_some()
                    } else {
                        action == EventAction::Undefined
                    }
                });
                if let Some(m) = shows.then(|| moves.remove(id)).flatten() {
                    if m.incoming {
                        entry.generation = entry.generation.max(m.floor);
                    }
                    migration = Some(m.note);
                }
            }
            entry.generation += 1;
            entry.last = norm;
            if emit && (entry.generation > 1 || record.is_some()) {
                let mut rec = record.clone().unwrap_or(Record::None);
                set_generation(&mut rec, entry.generation);
                event = Some(ObjectEvent {
                    class,
                    action,
                    object_id: id.to_owned(),
                    generation: entry.generation,
                    record: rec,
                    time: now_ms(),
                    migration,
                });
            }
        }
        let generation = entry.generation;
        entry.last_full = record.clone().map(|mut r| {
            set_generation(&mut r, generation);
            r
        });
        drop(seen);
        if let Some(ev) = event {
            tracing::debug!(class = %ev.class, action = %ev.action, object = %ev.object_id, generation, "object event");
            self.publish(ev);
        }
        record.map(|mut r| {
            set_generation(&mut r, generation);
            r
        })
    }

    /// Publishes a task's record as an event (tasks carry their own generation).
    pub(crate) fn task_event(
        &self,
        action: EventAction,
        task: hostbus_protocol::types::TaskRecord,
    ) {
        self.publish(ObjectEvent {
            class: ObjectClass::Task,
            action,
            object_id: task.id.to_string(),
            generation: task.generation,
            record: Record::Task(Box::new(task)),
            time: now_ms(),
            migration: None,
        });
    }

    /// Ids of objects of `class` last seen existing.
    pub(crate) fn existing(&self, class: ObjectClass) -> Vec<String> {
        lock(&self.seen)
            .iter()
            .filter(|((c, _), s)| *c == class && s.last.is_some())
            .map(|((_, id), _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use hostbus_protocol::types::{ForwardMode, NetworkRecord};

    use super::*;

    fn network(active: bool) -> Record {
        Record::Network(NetworkRecord {
            uuid: uuid::Uuid::nil(),
            name: "n".into(),
            active,
            autostart: false,
            persistent: true,
            bridge: None,
            forward: ForwardMode::Nat,
            ip: None,
            generation: 0,
        })
    }

    /// A read that started before the last observed one (the event worker
    /// reading a VM while an operation changes it and observes first) must
    /// not undo the change: that reported a stop and a second start.
    #[test]
    fn a_read_overtaken_by_a_newer_one_changes_nothing() {
        let observer = Observer::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        observer.subscribe(Box::new(move |ev| {
            lock(&sink).push(ev.action);
            true
        }));
        let class = ObjectClass::Network;
        observer.observe(class, "n", Some(network(false)), None, true);
        let stale = observer.ticket();
        let fresh = observer.ticket();
        observer.observe_read(class, "n", Some(network(true)), None, true, fresh);
        let seen = observer.observe_read(class, "n", Some(network(false)), None, true, stale);
        assert_eq!(
            seen.as_ref()
                .map(|r| matches!(r, Record::Network(n) if n.active && n.generation == 2)),
            Some(true),
            "the stale read gives the newer record: {seen:?}"
        );
        assert_eq!(
            *lock(&events),
            [EventAction::Defined, EventAction::Started],
            "one start, no stop"
        );
    }
}
