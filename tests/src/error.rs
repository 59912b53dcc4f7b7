//! The harness's error type.

use std::error::Error as StdError;
use std::fmt;

/// What kind of thing went wrong in the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file, directory or process could not be created or used.
    Io,
    /// An AMQP operation failed.
    Amqp,
    /// A RabbitMQ node or an agent did not start.
    Startup,
    /// Something did not happen in time.
    Timeout,
    /// An external command (`rabbitmqctl`, `cargo build`) failed.
    Command,
    /// The operation needs a private node, but the harness uses an external
    /// broker (`HOSTBUS_TEST_AMQP_URL` is set).
    NeedsPrivateNode,
}

/// An error of the harness: a kind, a message that says what the harness was
/// doing (often with the tail of a log), and the underlying cause.
///
/// `Debug` prints the message and the chain of causes as plain text, so a
/// test that calls `.expect(..)` on a harness result shows a readable log
/// tail instead of an escaped string.
pub struct HarnessError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl HarnessError {
    /// A new error without an underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A new error caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, message, source)
    }

    pub(crate) fn amqp(message: impl Into<String>, source: lapin::Error) -> Self {
        Self::with_source(ErrorKind::Amqp, message, source)
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the operation needed a private RabbitMQ node (restart, stop,
    /// `rabbitmqctl`) while the harness runs against an external broker.
    pub fn needs_private_node(&self) -> bool {
        self.kind == ErrorKind::NeedsPrivateNode
    }

    /// Whether something did not happen in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} error: {}", self.kind, self.message)?;
        let mut cause = self.source();
        while let Some(c) = cause {
            write!(f, "\ncaused by: {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl StdError for HarnessError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The harness's result type.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
