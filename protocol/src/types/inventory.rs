//! The inventory of a host: every record with its generation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::host::*;
use super::network::*;
use super::storage::*;
use super::task::*;
use super::vm::*;
use super::Timestamp;

/// Every record of a host with its generation: what `host.snapshot` returns
/// and what `agent.online` carries, so a subscriber can resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Inventory {
    /// When taken.
    pub taken_at: Timestamp,
    /// The serving agent's epoch (absent when not served by an agent).
    #[serde(default)]
    pub epoch: Option<Uuid>,
    /// The agent's last event sequence number when the inventory was taken:
    /// events of this epoch with a higher `seq` may be newer than it; for
    /// older ones, compare the object's generation.
    #[serde(default)]
    pub seq: u64,
    /// The host.
    pub host: HostRecord,
    /// Every VM.
    pub vms: Vec<VmRecord>,
    /// Every snapshot of every VM.
    pub snapshots: Vec<SnapshotRecord>,
    /// Every pool.
    pub pools: Vec<PoolRecord>,
    /// Every volume of every active pool.
    pub volumes: Vec<VolumeRecord>,
    /// Every network.
    pub networks: Vec<NetworkRecord>,
    /// Tasks not yet collected.
    pub tasks: Vec<TaskRecord>,
}
