//! Request types several object classes share, and how a response
//! becomes a task's result.

use super::*;
use crate::types::*;
use crate::validate::check_name;

wire_struct! {
    /// No parameters (encodes as an empty map; any map is accepted).
    Empty {}
    validate(this) { Ok(()) }
}

wire_struct! {
    /// An object by name (VMs, pools, networks).
    ObjectName {
        /// The name.
        name: String,
    }
    validate(this) { check_name("name", &this.name) }
}

/// Turns a response into the record a task stores as its result.
pub trait IntoRecord {
    /// The record, or [`Record::None`] for responses that are not one object.
    fn into_record(self) -> Record;

    /// The inventory the response carries, if it is one: a server stamps
    /// it with its session (epoch, last event number) before replying, so
    /// a subscriber knows which events it already covers.
    fn inventory_mut(&mut self) -> Option<&mut Inventory> {
        None
    }
}

impl IntoRecord for Inventory {
    fn into_record(self) -> Record {
        Record::None
    }

    fn inventory_mut(&mut self) -> Option<&mut Inventory> {
        Some(self)
    }
}

macro_rules! into_record {
    ($($ty:ident => $variant:ident),* ; $($none:ident),*) => {
        $(impl IntoRecord for $ty {
            fn into_record(self) -> Record {
                Record::$variant(self.into())
            }
        })*
        $(impl IntoRecord for $none {
            fn into_record(self) -> Record {
                Record::None
            }
        })*
    };
}

into_record!(
    HostRecord => Host, VmRecord => Vm, SnapshotRecord => Snapshot, PoolRecord => Pool,
    VolumeRecord => Volume, NetworkRecord => Network, TaskRecord => Task,
    MigrationRecord => Migration;
    Empty, Pong, Capabilities, HostStats, VmListResponse, VmStats,
    SnapshotListResponse, PoolListResponse, VolumeListResponse, NetworkListResponse,
    TaskListResponse, VmMigratePrepareResponse
);
