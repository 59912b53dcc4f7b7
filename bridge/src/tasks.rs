//! Tasks: long operations that run in the background, report progress, can
//! be cancelled between steps, and are collected after a TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostbus_protocol::types::{ObjectRef, Record, TaskRecord, TaskStatus};
use hostbus_protocol::{now_ms, Error, ErrorCode};
use uuid::Uuid;

use crate::locks::lock;

struct Entry {
    record: TaskRecord,
    cancel: Arc<AtomicBool>,
    finished: Option<Instant>,
}

/// The task registry.
pub(crate) struct TaskTable {
    tasks: Mutex<HashMap<Uuid, Entry>>,
    ttl: Duration,
}

/// Reports progress of one operation and tells it when it was cancelled.
/// Synchronous calls get a silent reporter that is never cancelled.
#[derive(Clone, Default)]
pub(crate) struct Progress {
    task: Option<(Uuid, Arc<AtomicBool>)>,
    pause: Duration,
    report: Option<Arc<dyn Fn(u8) + Send + Sync>>,
    /// The caller's deadline, ms since the epoch, and the command's name.
    deadline: Option<(u64, &'static str)>,
}

impl Progress {
    pub(crate) fn new(task: Uuid, cancel: Arc<AtomicBool>, pause: Duration) -> Self {
        Self {
            task: Some((task, cancel)),
            pause,
            report: None,
            deadline: None,
        }
    }

    /// A reporter for a synchronous call: never cancelled, reports nothing,
    /// but still pauses between steps when configured.
    pub(crate) fn untracked(pause: Duration) -> Self {
        Self {
            task: None,
            pause,
            report: None,
            deadline: None,
        }
    }

    /// Whether the operation runs as a task (not a synchronous call).
    pub(crate) fn is_task(&self) -> bool {
        self.task.is_some()
    }

    /// Adds the caller's deadline (ms since the epoch) of `command`: past
    /// it, [`check`](Self::check) fails with `EXPIRED`.
    pub(crate) fn with_deadline(mut self, command: &'static str, deadline: Option<u64>) -> Self {
        self.deadline = deadline.map(|d| (d, command));
        self
    }

    /// Adds the function told each new percentage.
    pub(crate) fn with_report(mut self, report: Arc<dyn Fn(u8) + Send + Sync>) -> Self {
        self.report = Some(report);
        self
    }

    /// Marks `done` of `total` steps finished, pauses if configured, and
    /// fails with `CANCELLED` when cancellation was requested.
    pub(crate) fn step(&self, done: usize, total: usize) -> Result<(), Error> {
        self.check()?;
        if let Some(report) = &self.report {
            let pct = percent(done as u64, total as u64);
            report(pct);
        }
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
        self.check()
    }

    /// Reports step `done` of `total` once the operation took effect, and
    /// pauses like [`step`](Self::step), but checks nothing: a cancel or a
    /// passed deadline can no longer undo what was done.
    pub(crate) fn took_effect(&self, done: usize, total: usize) {
        if let Some(report) = &self.report {
            report(percent(done as u64, total as u64));
        }
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
    }

    /// Reports a fraction without pausing (for waits with their own timing).
    pub(crate) fn fraction(&self, done: u64, total: u64) {
        if let Some(report) = &self.report {
            let pct = percent(done, total);
            report(pct);
        }
    }

    /// Fails with `CANCELLED` when cancellation was requested. For waits
    /// after the operation took effect, where a passed deadline changes
    /// nothing (see [`check`](Self::check)).
    pub(crate) fn check_cancelled(&self) -> Result<(), Error> {
        match &self.task {
            Some((id, c)) if c.load(Ordering::SeqCst) => Err(cancelled(*id)),
            _ => Ok(()),
        }
    }

    /// Fails with `CANCELLED` when cancellation was requested, and with
    /// `EXPIRED` when the caller's deadline has passed. Call it only before
    /// the operation takes effect: `EXPIRED` promises nothing was done.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.check_cancelled()?;
        if let Some((deadline, command)) = self.deadline {
            let now = now_ms();
            if now >= deadline {
                return Err(Error::expired(command, deadline, now));
            }
        }
        Ok(())
    }
}

/// `done` of `total` as a percentage, 0 when there is nothing to do.
fn percent(done: u64, total: u64) -> u8 {
    (done.min(total) * 100)
        .checked_div(total)
        .map_or(0, |p| p as u8)
}

pub(crate) fn cancelled(id: Uuid) -> Error {
    Error::new(
        ErrorCode::Cancelled,
        [("task", id.to_string())],
        format!("task {id} was cancelled"),
    )
}

impl TaskTable {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            tasks: Mutex::default(),
            ttl,
        }
    }

    /// Registers a pending task and returns its record and cancel flag.
    pub(crate) fn create(
        &self,
        id: Uuid,
        command: &str,
        object: Option<ObjectRef>,
        cancellable: bool,
    ) -> (TaskRecord, Arc<AtomicBool>) {
        let record = TaskRecord {
            id,
            command: command.to_owned(),
            object,
            status: TaskStatus::Pending,
            progress: 0,
            created_at: now_ms(),
            finished_at: None,
            cancellable,
            result: None,
            error: None,
            generation: 1,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.tasks).insert(
            id,
            Entry {
                record: record.clone(),
                cancel: cancel.clone(),
                finished: None,
            },
        );
        (record, cancel)
    }

    fn update(&self, id: Uuid, f: impl FnOnce(&mut Entry)) -> Option<TaskRecord> {
        let mut tasks = lock(&self.tasks);
        let e = tasks.get_mut(&id)?;
        if e.record.status.is_final() {
            return None;
        }
        f(e);
        e.record.generation += 1;
        Some(e.record.clone())
    }

    pub(crate) fn running(&self, id: Uuid) -> Option<TaskRecord> {
        self.update(id, |e| {
            if e.record.status == TaskStatus::Pending {
                e.record.status = TaskStatus::Running;
            }
        })
    }

    /// Sets progress (0–100); returns the record when it changed.
    pub(crate) fn progress(&self, id: Uuid, percent: u8) -> Option<TaskRecord> {
        let percent = percent.min(99);
        {
            let tasks = lock(&self.tasks);
            if tasks.get(&id).is_some_and(|e| e.record.progress >= percent) {
                return None;
            }
        }
        self.update(id, |e| e.record.progress = percent)
    }

    pub(crate) fn finish(&self, id: Uuid, result: Result<Record, Error>) -> Option<TaskRecord> {
        self.update(id, |e| {
            e.finished = Some(Instant::now());
            e.record.finished_at = Some(now_ms());
            e.record.cancellable = false;
            match result {
                Ok(r) => {
                    e.record.status = TaskStatus::Success;
                    e.record.progress = 100;
                    e.record.result = Some(r);
                }
                Err(err) if err.code == ErrorCode::Cancelled => {
                    e.record.status = TaskStatus::Cancelled;
                    e.record.error = Some(err);
                }
                Err(err) => {
                    e.record.status = TaskStatus::Failure;
                    e.record.error = Some(err);
                }
            }
        })
    }

    /// Requests cancellation. Finished or non-cancellable tasks refuse.
    pub(crate) fn cancel(&self, id: Uuid) -> Result<TaskRecord, Error> {
        let mut tasks = lock(&self.tasks);
        let e = tasks.get_mut(&id).ok_or_else(|| not_found(id))?;
        if e.record.status.is_final() || !e.record.cancellable {
            return Err(Error::new(
                ErrorCode::TaskNotCancellable,
                [
                    ("task", id.to_string()),
                    ("status", e.record.status.to_string()),
                ],
                format!("task {id} is {} and cannot be cancelled", e.record.status),
            ));
        }
        e.cancel.store(true, Ordering::SeqCst);
        if e.record.status != TaskStatus::Cancelling {
            e.record.status = TaskStatus::Cancelling;
            e.record.generation += 1;
        }
        Ok(e.record.clone())
    }

    pub(crate) fn get(&self, id: Uuid) -> Result<TaskRecord, Error> {
        lock(&self.tasks)
            .get(&id)
            .map(|e| e.record.clone())
            .ok_or_else(|| not_found(id))
    }

    pub(crate) fn list(&self, status: Option<TaskStatus>) -> Vec<TaskRecord> {
        let mut v: Vec<TaskRecord> = lock(&self.tasks)
            .values()
            .filter(|e| status.is_none_or(|s| e.record.status == s))
            .map(|e| e.record.clone())
            .collect();
        v.sort_by_key(|t| (t.created_at, t.id));
        v
    }

    pub(crate) fn running_count(&self) -> usize {
        lock(&self.tasks)
            .values()
            .filter(|e| !e.record.status.is_final())
            .count()
    }

    /// Forgets tasks that finished more than the TTL ago; returns how many.
    pub(crate) fn collect(&self) -> usize {
        let ttl = self.ttl;
        let mut tasks = lock(&self.tasks);
        let before = tasks.len();
        tasks.retain(|_, e| e.finished.is_none_or(|f| f.elapsed() < ttl));
        before - tasks.len()
    }
}

fn not_found(id: Uuid) -> Error {
    Error::new(
        ErrorCode::TaskNotFound,
        [("task", id.to_string())],
        format!("task {id} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_cancel_and_collection() {
        let t = TaskTable::new(Duration::ZERO);
        let id = Uuid::new_v4();
        let (rec, flag) = t.create(id, "vm.define", None, true);
        assert_eq!(rec.status, TaskStatus::Pending);
        assert_eq!(t.running(id).map(|r| r.status), Some(TaskStatus::Running));
        assert_eq!(t.progress(id, 40).map(|r| r.progress), Some(40));
        assert!(t.progress(id, 30).is_none(), "progress never goes back");
        assert_eq!(t.cancel(id).map(|r| r.status), Ok(TaskStatus::Cancelling));
        assert!(flag.load(Ordering::SeqCst));
        let done = t.finish(id, Err(cancelled(id))).expect("finished");
        assert_eq!(done.status, TaskStatus::Cancelled);
        assert_eq!(
            t.cancel(id).map_err(|e| e.code),
            Err(ErrorCode::TaskNotCancellable)
        );
        assert!(
            t.finish(id, Ok(Record::None)).is_none(),
            "a final status is final"
        );
        assert_eq!(t.collect(), 1);
        assert_eq!(t.get(id).map_err(|e| e.code), Err(ErrorCode::TaskNotFound));
    }
}
