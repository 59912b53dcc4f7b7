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
    /// An unknown status filter is refused rather than matching nothing.
    fn validate(&self) -> Validation {
        match self.status {
            Some(TaskStatus::Unknown) => Err(ValidationError::new(
                "status",
                format!(
                    "unknown task status; one of {}",
                    TaskStatus::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}

wire_struct! {
    /// Response of `task.list`.
    TaskListResponse {
        /// Tasks, oldest first.
        tasks: Vec<TaskRecord>,
    }
}
