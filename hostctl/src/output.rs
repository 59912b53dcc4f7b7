//! What hostctl prints and how it fails: tables or JSON, the progress bar,
//! a closed stdout, and the exit code of each error and of an interruption.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use hostbus_client::protocol::types::{TaskRecord, TaskStatus};
use hostbus_client::{Client, ClientError, ErrorKind};
use serde::Serialize;

use crate::cli::Output;

/// An error with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// Exit 1: an error that is neither the user's nor the remote side's.
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// Exit 4: refused, the object does not support what was asked.
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: message.into(),
        }
    }

    /// Exit 2: bad flags or arguments.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM with the failure
/// hostctl then exits with: 130 or 143, what a shell reports for a program
/// those signals ended. The handlers are installed when this returns, so
/// from then on a signal ends the command and hostctl closes its
/// connections before it exits, instead of dying at once.
pub(crate) fn interrupted() -> Res<impl Future<Output = Failure>> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen =
        |kind| signal(kind).map_err(|e| Failure::other(format!("cannot listen for signals: {e}")));
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    Ok(async move {
        let (code, name) = tokio::select! {
            _ = interrupt.recv() => (130, "interrupted (SIGINT)"),
            _ = terminate.recv() => (143, "terminated (SIGTERM)"),
        };
        Failure {
            code,
            message: name.to_owned(),
        }
    })
}

/// Set once stdout is found to be a closed pipe (`hostctl ... | head`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether stdout is a closed pipe: `outln!` prints nothing more, a
/// command that would print for ever stops, and hostctl exits 0 once its
/// connections are closed.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Notes that stdout is a closed pipe (see [`stdout_closed`]).
pub(crate) fn stdout_was_closed() {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e.kind() {
            ErrorKind::NotFound | ErrorKind::NoRoute => 3,
            ErrorKind::InvalidArgument
            | ErrorKind::BadState
            | ErrorKind::AlreadyExists
            | ErrorKind::Unsupported
            | ErrorKind::Cancelled
            | ErrorKind::Expired => 4,
            ErrorKind::Timeout
            | ErrorKind::Connection
            | ErrorKind::Unavailable
            | ErrorKind::Busy => 5,
            ErrorKind::PermissionDenied => 6,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Self::other(e.to_string())
    }
}

/// A command's result: the exit code on success (0), a [`Failure`]
/// otherwise (7 for a partial broadcast or evacuation).
pub(crate) type Res<T> = Result<T, Failure>;

/// What every command runs with: the connection and the output format.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) output: Output,
}

impl Ctx {
    /// Prints `value` as JSON, or calls `human` to print it as text.
    pub(crate) fn show<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> Res<()> {
        match self.output {
            Output::Json => print_json(value),
            Output::Table => {
                human(value);
                Ok(())
            }
        }
    }

    /// A list of records: a JSON array, or a table of the record type's
    /// [`Listed::COLUMNS`].
    pub(crate) fn list<T: Listed>(&self, items: &[T]) -> Res<()> {
        self.list_with(items, T::COLUMNS)
    }

    /// A list: a JSON array, or a table with a row per item and a cell per
    /// column.
    pub(crate) fn list_with<T: Serialize>(
        &self,
        items: &[T],
        columns: &[Column<'_, T>],
    ) -> Res<()> {
        let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        self.show(&items, |items| {
            let row = |item: &T| columns.iter().map(|(_, cell)| cell(item)).collect();
            table(&headers, items.iter().map(row).collect())
        })
    }

    /// `{"deleted": name}`, or `<what> <name> deleted`.
    pub(crate) fn deleted(&self, what: &str, name: &str) -> Res<()> {
        self.show(&serde_json::json!({ "deleted": name }), |_| {
            outln!("{what} {name} deleted")
        })
    }
}

/// Pretty JSON on stdout (records without a table of their own print so in
/// both output modes).
pub(crate) fn print_json<T: Serialize>(v: &T) -> Res<()> {
    let s = serde_json::to_string_pretty(v)?;
    outln!("{s}");
    Ok(())
}

/// A table column: its header, and how an item fills its cell (written
/// side by side so a header cannot drift from its cell).
pub(crate) type Column<'a, T> = (&'a str, &'a dyn Fn(&T) -> String);

/// A record type's table: the columns its `list` verb prints, declared
/// beside the verbs of its class.
pub(crate) trait Listed: Serialize + Sized + 'static {
    /// Header and cell of each column, left to right.
    const COLUMNS: &'static [Column<'static, Self>];
}

/// A one-row table from (header, cell) pairs.
pub(crate) fn record(cells: Vec<(&str, String)>) {
    let (headers, row): (Vec<&str>, Vec<String>) = cells.into_iter().unzip();
    table(&headers, vec![row]);
}

/// A table with a header line, columns as wide as their widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

/// KiB as whole MiB.
pub(crate) fn mib(kib: u64) -> String {
    format!("{}", kib / 1024)
}

/// Bytes as GiB with one decimal.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

/// Draws a progress bar on stderr when it is a terminal, and prints lines
/// above it (on stderr, terminal or not).
pub(crate) struct Progress {
    tty: bool,
    quiet: bool,
    label: String,
}

impl Progress {
    pub(crate) fn new(label: &str) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet: false,
            label: label.to_owned(),
        }
    }

    /// Draws and prints nothing (`--output json`: a script reads the result).
    pub(crate) fn hidden() -> Self {
        Self {
            tty: false,
            quiet: true,
            label: String::new(),
        }
    }

    /// A task's progress and status.
    pub(crate) fn update(&self, t: &TaskRecord) {
        let tail = format!("{:>3}% {}", t.progress, t.status);
        self.draw(usize::from(t.progress), 100, &tail);
    }

    /// The bar at `done` of `total`, followed by `tail`.
    pub(crate) fn draw(&self, done: usize, total: usize, tail: &str) {
        if !self.tty {
            return;
        }
        let filled = done.min(total) * 30 / total.max(1);
        eprint!(
            "\r{} [{}{}] {tail}\x1b[K",
            self.label,
            "#".repeat(filled),
            ".".repeat(30 - filled),
        );
        let _ = std::io::stderr().flush();
    }

    /// A line of its own above the bar (which the next `draw` redraws).
    pub(crate) fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{text}");
    }

    pub(crate) fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// A finished task as a result: its error when it failed.
pub(crate) fn task_outcome(t: &TaskRecord) -> Res<()> {
    match (t.status, &t.error) {
        (TaskStatus::Success, _) => Ok(()),
        (_, Some(e)) => Err(ClientError::from(e.clone()).into()),
        (s, None) => Err(Failure::other(format!("task ended {s}"))),
    }
}
