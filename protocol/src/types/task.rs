//! Tasks: status and record, and [`Record`], any record tagged by class
//! (what a task returns; a record may be a task).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::host::*;
use super::migration::*;
use super::network::*;
use super::object::*;
use super::storage::*;
use super::vm::*;
use super::Timestamp;
use crate::error::Error;

wire_enum! {
    /// The lifecycle of a task, after XenAPI.
    TaskStatus {
        /// Accepted, not started yet.
        Pending = "pending",
        /// Running; `progress` moves.
        Running = "running",
        /// Finished; `result` holds the outcome.
        Success = "success",
        /// Finished with `error`.
        Failure = "failure",
        /// Cancellation requested, not yet effective.
        Cancelling = "cancelling",
        /// Cancelled before it finished.
        Cancelled = "cancelled",
    }
}

impl TaskStatus {
    /// Whether the task has finished (success, failure or cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failure | TaskStatus::Cancelled
        )
    }
}

wire_struct! {
    /// A long operation that runs in the background.
    TaskRecord {
        /// Task id.
        id: Uuid,
        /// The command that started it, e.g. `vm.start`.
        command: String,
        /// The object it works on.
        object: Option<ObjectRef>,
        /// Status.
        status: TaskStatus,
        /// Progress, 0 to 100.
        #[schemars(range(max = 100))]
        progress: u8,
        /// Created.
        created_at: Timestamp,
        /// Finished, if it has.
        finished_at: Option<Timestamp>,
        /// Whether `task.cancel` can interrupt it now.
        cancellable: bool,
        /// The command's result on success.
        result: Option<Record>,
        /// The command's error on failure or cancellation.
        error: Option<Error>,
        /// Generation of the record.
        generation: u64,
    }
}

/// Any record, tagged by class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The host record.
    Host(HostRecord),
    /// A VM record.
    Vm(VmRecord),
    /// A snapshot record.
    Snapshot(SnapshotRecord),
    /// A pool record.
    Pool(PoolRecord),
    /// A volume record.
    Volume(VolumeRecord),
    /// A network record.
    Network(NetworkRecord),
    /// A task record.
    Task(Box<TaskRecord>),
    /// A migration's result: the VM and where it runs.
    Migration(Box<MigrationRecord>),
    /// No record (a command whose result is empty, or an object that is gone).
    None,
}

impl Record {
    /// The class of the record.
    pub fn class(&self) -> Option<ObjectClass> {
        Some(match self {
            Record::Host(_) => ObjectClass::Host,
            Record::Vm(_) => ObjectClass::Vm,
            Record::Snapshot(_) => ObjectClass::Snapshot,
            Record::Pool(_) => ObjectClass::Pool,
            Record::Volume(_) => ObjectClass::Volume,
            Record::Network(_) => ObjectClass::Network,
            Record::Task(_) => ObjectClass::Task,
            Record::Migration(_) => ObjectClass::Vm,
            Record::None => return None,
        })
    }
}
