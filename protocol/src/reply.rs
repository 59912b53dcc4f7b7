//! The body of every reply, and its status header.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::types::TaskRecord;

/// Which variant a reply body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    /// A value.
    Ok,
    /// A task record (asynchronous call).
    Task,
    /// An error.
    Error,
}

impl ReplyStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Ok => "ok",
            ReplyStatus::Task => "task",
            ReplyStatus::Error => "error",
        }
    }
}

/// The body of every reply: `{"ok": <response>}`, `{"task": <task record>}`
/// or `{"error": <error>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The command succeeded with this value.
    Ok(T),
    /// The command runs asynchronously as this task.
    Task(Box<TaskRecord>),
    /// The command failed; nothing or only what the error says was done.
    Error(Error),
}

impl<T> Reply<T> {
    /// The status header value of this reply.
    pub fn status(&self) -> ReplyStatus {
        match self {
            Reply::Ok(_) => ReplyStatus::Ok,
            Reply::Task(_) => ReplyStatus::Task,
            Reply::Error(_) => ReplyStatus::Error,
        }
    }
}

impl<T> From<Result<T, Error>> for Reply<T> {
    fn from(r: Result<T, Error>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}
