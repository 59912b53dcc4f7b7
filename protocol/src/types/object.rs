//! References to objects: classes, object and volume references.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::wire_enum;
use crate::validate::*;

/// A reference to a volume in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VolumeRef {
    /// Pool name.
    pub pool: String,
    /// Volume name inside the pool.
    pub volume: String,
}

impl Validate for VolumeRef {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("volume", &self.volume)
    }
}

/// What a task is doing it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ObjectRef {
    /// Object class: `vm`, `pool`, `volume`, `network`, `snapshot`, `host`.
    pub class: ObjectClass,
    /// Its id: a uuid for VMs, a name for pools and networks, `pool/volume`, `vm-uuid/snapshot`.
    pub id: String,
}

wire_enum! {
    /// Classes of objects, as used in events, tasks and routing keys.
    ObjectClass {
        /// The host itself.
        Host = "host",
        /// A VM.
        Vm = "vm",
        /// A VM snapshot.
        Snapshot = "snapshot",
        /// A storage pool.
        Pool = "pool",
        /// A storage volume.
        Volume = "volume",
        /// A virtual network.
        Network = "network",
        /// A task.
        Task = "task",
        /// The agent (online/offline announcements).
        Agent = "agent",
    }
}
