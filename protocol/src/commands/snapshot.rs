//! Request and response types of the snapshot commands.

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
    validate(this) {
        check_name("name", &this.name)?;
        check_text("description", &this.description)
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
    validate(this) { check_name("name", &this.name) }
}
