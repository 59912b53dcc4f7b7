//! Request and response types of the task commands.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::*;
use crate::validate::*;

wire_struct! {
    /// A task by id.
    TaskId {
        /// Task id.
        id: Uuid,
    }
}
impl Validate for TaskId {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Request of `task.list`.
    TaskListRequest {
        /// Only tasks in this status.
        #[serde(default)]
        status: Option<TaskStatus>,
    }
}
impl Validate for TaskListRequest {
    /// A filter this agent does not know (or `unknown`, which nothing is ever
    /// in) is refused rather than answered with an empty list.
    fn validate(&self) -> Validation {
        self.status.map_or(Ok(()), |v| v.known("status"))
    }
}

wire_struct! {
    /// Response of `task.list`.
    TaskListResponse {
        /// Tasks, oldest first.
        tasks: Vec<TaskRecord>,
    }
}
