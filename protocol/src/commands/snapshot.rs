//! Request and response types of the snapshot commands.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::*;
use crate::validate::*;

wire_struct! {
    /// Request of `snapshot.create`.
    SnapshotCreateRequest {
        /// The VM.
        vm: Uuid,
        /// Snapshot name, unique per VM.
        name: String,
        /// Free text.
        #[serde(default)]
        description: String,
    }
}
impl Validate for SnapshotCreateRequest {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        check_text("description", &self.description)
    }
}

wire_struct! {
    /// Response of `snapshot.list`.
    SnapshotListResponse {
        /// Snapshots, oldest first.
        snapshots: Vec<SnapshotRecord>,
    }
}

wire_struct! {
    /// A snapshot of a VM.
    SnapshotRef {
        /// The VM.
        vm: Uuid,
        /// Snapshot name.
        name: String,
    }
}
impl Validate for SnapshotRef {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)
    }
}
