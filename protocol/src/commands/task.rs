//! Request and response types of the task commands.

use uuid::Uuid;

use crate::types::*;

wire_struct! {
    /// A task by id.
    TaskId {
        /// Task id.
        id: Uuid,
    }
    validate(this) { Ok(()) }
}

wire_struct! {
    /// Request of `task.list`.
    TaskListRequest {
        /// Only tasks in this status.
        #[serde(default)]
        status: Option<TaskStatus>,
    }
    // A filter this agent does not know (or `unknown`, which nothing is ever
    // in) is refused rather than answered with an empty list.
    validate(this) { this.status.map_or(Ok(()), |v| v.known("status")) }
}

wire_struct! {
    /// Response of `task.list`.
    TaskListResponse {
        /// Tasks, oldest first.
        tasks: Vec<TaskRecord>,
    }
}
