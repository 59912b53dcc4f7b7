//! Lifecycle events, presence heartbeats and roster announcements, published
//! by agents.
//!
//! Every event carries the full record of the object after the change, the
//! object's generation, and the agent's epoch and sequence number, so a
//! subscriber detects a gap (a sequence number skipped within one epoch, or a
//! new epoch) and resyncs from `host.snapshot` instead of trusting deltas.
//! The broker keeps events, heartbeats and announcements in streams
//! ([`crate::names::EVENT_STREAM`], [`crate::names::BEAT_STREAM`],
//! [`crate::names::ROSTER_STREAM`]), so a reader that was away, or a process
//! that just started, reads them back from an offset or a time.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::names::{event_key, presence_key, roster_key};
use crate::types::{
    HealthStatus, Inventory, MigrationNote, ObjectClass, Placement, Record, Timestamp,
};

wire_enum! {
    /// What happened to an object.
    EventAction {
        /// A persistent definition appeared (VM, pool, network).
        Defined = "defined",
        /// A definition was removed.
        Undefined = "undefined",
        /// Started (VM, pool, network).
        Started = "started",
        /// Stopped (shut down, destroyed, or stopped).
        Stopped = "stopped",
        /// A VM was paused.
        Paused = "paused",
        /// A VM was resumed from pause or restored from suspend.
        Resumed = "resumed",
        /// A VM was suspended to disk.
        Suspended = "suspended",
        /// A VM crashed.
        Crashed = "crashed",
        /// A VM rebooted or was reset.
        Rebooted = "rebooted",
        /// A property changed (memory, vCPUs, devices, autostart, ...).
        Changed = "changed",
        /// An object was created (volume, snapshot, task).
        Created = "created",
        /// An object was deleted (volume, snapshot).
        Deleted = "deleted",
        /// A task made progress.
        Progress = "progress",
        /// A task finished (success, failure or cancelled).
        Finished = "finished",
        /// The agent came online (carries the full inventory).
        Online = "online",
        /// The agent is going offline cleanly.
        Offline = "offline",
        /// The agent's hypervisor connection changed health.
        Health = "health",
    }
}

wire_struct! {
    /// An event as published on the event exchange.
    Event {
        /// The host it happened on.
        host_id: String,
        /// The publishing agent's epoch: a fresh id at every agent start.
        epoch: Uuid,
        /// Sequence number within the epoch: 1, 2, 3, ... without gaps.
        seq: u64,
        /// When the agent published it.
        time: Timestamp,
        /// Class of the object.
        class: ObjectClass,
        /// What happened.
        action: EventAction,
        /// The object's id (see [`crate::types::ObjectRef`]).
        object_id: String,
        /// The object's generation after the change.
        generation: u64,
        /// The full record after the change ([`Record::None`] once deleted).
        record: Record,
        /// The host's full inventory, on `agent.online` only.
        #[serde(default)]
        inventory: Option<Inventory>,
        /// On a migrated VM's `undefined` event on the host it left and
        /// its first event on the host it reached: the move.
        #[serde(default)]
        migration: Option<MigrationNote>,
    }
}

impl Event {
    /// The routing key on the event exchange: `<host>.<class>.<action>`.
    pub fn routing_key(&self) -> String {
        event_key(&self.host_id, self.class.as_str(), self.action.as_str())
    }
}

wire_struct! {
    /// Versions an agent reports.
    Versions {
        /// hostbus agent version.
        agent: String,
        /// Protocol version spoken, `major.minor`.
        protocol: String,
        /// libvirt library version.
        libvirt: String,
        /// Hypervisor driver and version, e.g. `QEMU 8.2.0`.
        hypervisor: String,
    }
}

wire_struct! {
    /// Agent health.
    Health {
        /// Summary.
        status: HealthStatus,
        /// Whether the hypervisor connection is up.
        hypervisor_connected: bool,
        /// What is wrong, when not `ok`.
        #[serde(default)]
        message: String,
    }
}

wire_struct! {
    /// Agent load.
    Load {
        /// Commands executing now.
        in_flight: u32,
        /// Commands handled since start.
        commands_total: u64,
        /// Tasks running.
        tasks_running: u32,
        /// VMs running or paused.
        vms_active: u32,
        /// Host one-minute load average × 1000.
        load_avg_milli: u32,
        /// Host free memory, KiB.
        memory_free_kib: u64,
    }
}

wire_struct! {
    /// A presence heartbeat, published on the presence exchange under
    /// `<host>.heartbeat` every `interval_ms`. A manager considers a host stale
    /// after missing about three intervals.
    Heartbeat {
        /// The host.
        host_id: String,
        /// The agent's epoch.
        epoch: Uuid,
        /// The agent's event sequence number at the time: a subscriber whose
        /// last seen event is older knows it missed events.
        last_seq: u64,
        /// When sent.
        time: Timestamp,
        /// When the agent started.
        started_at: Timestamp,
        /// Heartbeat interval, ms.
        interval_ms: u32,
        /// Versions.
        versions: Versions,
        /// Commands served. Empty from protocol 1.1 on: the list is in the
        /// host's [`Announcement`] and `host.capabilities`, not in every beat.
        #[serde(default)]
        capabilities: Vec<String>,
        /// Labels (command groups the host belongs to).
        labels: Vec<String>,
        /// Health.
        health: Health,
        /// Load.
        load: Load,
        /// Free-form facts (e.g. `kvm: true`).
        #[serde(default)]
        facts: BTreeMap<String, String>,
        /// Whether the host takes new VMs, and why not (`host.disable`).
        #[serde(default)]
        placement: Placement,
    }
}

impl Heartbeat {
    /// The routing key on the presence exchange.
    pub fn routing_key(&self) -> String {
        presence_key(&self.host_id)
    }
}

wire_enum! {
    /// What a roster [`Announcement`] says of a host.
    RosterAction {
        /// An agent session started (at every start and reconnection).
        Online = "online",
        /// The agent stopped cleanly.
        Offline = "offline",
        /// An operator removed the host from the fleet (`hostctl host forget`).
        Forget = "forget",
    }
}

wire_struct! {
    /// A host's entry in the fleet roster, published on the presence exchange
    /// under `<host>.online`, `<host>.offline` or `<host>.forget` and kept by the
    /// broker in [`crate::names::ROSTER_STREAM`] for days: a process that starts
    /// reads it to know every host of the fleet, the dead ones too, until they
    /// are forgotten or the retention passes.
    Announcement {
        /// The host.
        host_id: String,
        /// What happened.
        action: RosterAction,
        /// The agent's epoch (absent for `forget`).
        #[serde(default)]
        epoch: Option<Uuid>,
        /// When published.
        time: Timestamp,
        /// When the agent started (0 for `forget`).
        #[serde(default)]
        started_at: Timestamp,
        /// The agent's heartbeat interval, ms (0 for `forget`).
        #[serde(default)]
        interval_ms: u32,
        /// The host's labels.
        #[serde(default)]
        labels: Vec<String>,
        /// Versions (on `online`).
        #[serde(default)]
        versions: Option<Versions>,
        /// Commands served (on `online`).
        #[serde(default)]
        capabilities: Vec<String>,
        /// Who published a `forget` (the broker-verified login), if known.
        #[serde(default)]
        by: Option<String>,
        /// How other hosts' libvirt reaches this one's for migrations
        /// (on `online`; absent when the agent does not take migrations).
        #[serde(default)]
        migration_uri: Option<String>,
    }
}

impl Announcement {
    /// The routing key on the presence exchange: `<host>.<action>`.
    pub fn routing_key(&self) -> String {
        roster_key(&self.host_id, self.action.as_str())
    }
}
