//! The inventory of a host: every record with its generation.

use uuid::Uuid;

use super::host::*;
use super::network::*;
use super::storage::*;
use super::task::*;
use super::vm::*;
use super::Timestamp;

wire_struct! {
    /// Every record of a host with its generation: what `host.snapshot` returns
    /// and what `agent.online` carries, so a subscriber can resync.
    Inventory {
        /// When taken.
        taken_at: Timestamp,
        /// The serving agent's epoch (absent when not served by an agent).
        #[serde(default)]
        epoch: Option<Uuid>,
        /// The agent's last event sequence number when the inventory was taken:
        /// events of this epoch with a higher `seq` may be newer than it; for
        /// older ones, compare the object's generation.
        #[serde(default)]
        seq: u64,
        /// The host.
        host: HostRecord,
        /// Every VM.
        vms: Vec<VmRecord>,
        /// Every snapshot of every VM.
        snapshots: Vec<SnapshotRecord>,
        /// Every pool.
        pools: Vec<PoolRecord>,
        /// Every volume of every active pool.
        volumes: Vec<VolumeRecord>,
        /// Every network.
        networks: Vec<NetworkRecord>,
        /// Tasks not yet collected.
        tasks: Vec<TaskRecord>,
    }
}
