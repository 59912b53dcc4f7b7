//! The hostbus API bridge: the one place where a host is managed.
//!
//! It takes protocol requests ([`AnyRequest`]), runs them against libvirt and
//! returns protocol responses or protocol errors; it turns libvirt lifecycle
//! callbacks and periodic reconciliation into [`ObjectEvent`]s with per-object
//! generations. It is synchronous and knows nothing of AMQP: the agent calls
//! it from blocking threads.
//!
//! Threads (see ARCHITECTURE.md):
//! * the caller's thread runs each synchronous call;
//! * one thread per asynchronous task ([`Bridge::submit`]);
//! * `hostbus-libvirt-events`: libvirt's event loop, once per process;
//! * `hostbus-bridge-events`: turns libvirt callbacks into observations;
//! * `hostbus-reconcile`: health check, reconnection, reconciliation, task GC.
//!
//! No libvirt type, flag, error or XML crosses this crate's public API.

mod config;
mod conn;
mod errors;
mod events;
mod ffi;
mod host;
mod inner;
mod locks;
mod network;
mod observe;
mod recover;
mod storage;
mod tasks;
mod vm;
mod xml;

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hostbus_protocol::types::{Inventory, TaskRecord};
use hostbus_protocol::{AnyRequest, AnyResponse, Error, EventAction, Planned};
use uuid::Uuid;

pub use config::{Config, DomainType, Peers};
pub use conn::HealthReport;
pub use host::HostLoad;
pub use locks::{LockEvent, LockHook, Turn};
pub use observe::{Deliver, ObjectEvent};
pub use vm::{allowed_operations, allowed_states};

/// The inventory of a simulated host for libvirt's test driver (a node
/// file: `test:///<path>`), number `index` of a fleet: three VMs (one
/// running), two pools with volumes, two networks, like the shipped
/// `testdata/node-h1.xml`, with uuids and MAC addresses of its own. Each
/// connection to such a file keeps its own private state, so one process
/// can simulate many hosts (`hostbus-agent --simulate`).
pub fn simulated_node_xml(index: u32) -> String {
    const TEMPLATE: &str = include_str!("../testdata/node-h1.xml");
    // Every bridge test opens the shipped node file, and the XML golden
    // test rewrites it: it is well-formed.
    xml::simulated_node(TEMPLATE, index).expect("testdata/node-h1.xml is well-formed XML")
}

use crate::inner::Inner;
use crate::locks::lock;
use crate::tasks::Progress;

/// Who is calling: the command id names current operations and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The command id (AMQP `message_id`).
    pub command_id: Uuid,
    /// When the caller stops waiting, ms since the Unix epoch. A synchronous
    /// call checks it once it holds its object's lock and between the steps
    /// of multi-step operations, and fails with `EXPIRED`, with nothing done
    /// (steps already taken are rolled back), once it has passed. A task
    /// ([`Bridge::submit`]) is accepted or refused within it and then runs to
    /// its end.
    pub deadline: Option<u64>,
}

impl CallContext {
    /// A context with a fresh command id and no deadline.
    pub fn new() -> Self {
        Self {
            command_id: Uuid::new_v4(),
            deadline: None,
        }
    }
}

impl Default for CallContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The API bridge of one host. Cheap to share behind an `Arc`; every method
/// blocks on libvirt and must not run on an async runtime's worker threads.
pub struct Bridge {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.inner.config())
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Opens the bridge on `config.uri` and starts its threads. A libvirt
    /// that is not reachable yet is not an error: the bridge reports
    /// [`HealthReport`] `down` and keeps trying; commands get `HOST_UNAVAILABLE`.
    pub fn open(config: Config) -> Result<Self, std::io::Error> {
        events::ensure_event_loop();
        let (tx, rx) = channel();
        let inner = Arc::new(Inner::new(config, tx));
        if let Err(e) = inner.reconcile() {
            tracing::warn!(error = %e, "initial scan failed; will retry");
        }
        let worker = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("hostbus-bridge-events".into())
                .spawn(move || inner.event_worker(rx))?
        };
        let reconciler = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("hostbus-reconcile".into())
                .spawn(move || inner.reconcile_loop())?
        };
        inner.resume_migrations();
        Ok(Self {
            inner,
            threads: Mutex::new(vec![worker, reconciler]),
        })
    }

    /// Takes `request`'s place in the line of the object it changes, now,
    /// without blocking; `None` for a request that changes nothing (reads
    /// take no lock). Pass the turn to [`call_in_turn`](Self::call_in_turn)
    /// or [`submit_in_turn`](Self::submit_in_turn): a caller that receives
    /// requests in order takes their turns in that order, and they then run
    /// in that order whatever threads run them. The line is the plan's
    /// target (the catalogue says which object each command works on).
    pub fn take_turn(&self, request: &Planned) -> Option<Turn> {
        let keys = request.lock_keys();
        (!keys.is_empty()).then(|| self.inner.locks().enqueue_all(keys))
    }

    /// `OPERATION_IN_PROGRESS` when `request` is refused at once, without
    /// waiting in its object's line, because an operation running on that
    /// object excludes it (a second `vm.migrate` of a migrating VM). Call
    /// it when admitting a request, before [`take_turn`](Self::take_turn).
    pub fn excluded(&self, request: &Planned) -> Result<(), Error> {
        self.inner.excluded(request.request())
    }

    /// Whether the host takes new VMs, and why not (`host.disable`).
    pub fn placement(&self) -> hostbus_protocol::types::Placement {
        self.inner.placement()
    }

    /// Validates and runs one command synchronously, taking its turn now.
    pub fn call(&self, request: AnyRequest, ctx: &CallContext) -> Result<AnyResponse, Error> {
        self.call_in_turn(Planned::new(request)?, ctx, None)
    }

    /// Runs one validated command synchronously in `turn` (from
    /// [`take_turn`](Self::take_turn) for this request; a new one is taken
    /// when `None`).
    pub fn call_in_turn(
        &self,
        request: Planned,
        ctx: &CallContext,
        turn: Option<Turn>,
    ) -> Result<AnyResponse, Error> {
        let progress = Progress::untracked(self.inner.config().step_pause)
            .with_deadline(request.plan().command, ctx.deadline);
        self.inner.execute(request, &progress, ctx.command_id, turn)
    }

    /// Validates one command and starts it as a task, returning the task
    /// at once and taking its turn now.
    pub fn submit(&self, request: AnyRequest, ctx: &CallContext) -> Result<TaskRecord, Error> {
        self.submit_in_turn(Planned::new(request)?, ctx, None)
    }

    /// Starts one validated command as a task in `turn` and returns the
    /// task at once. The task's id is the command id; its object is the
    /// plan's target; it is cancellable when the catalogue says so. Its
    /// progress and outcome arrive as task events and through `task.get`.
    pub fn submit_in_turn(
        &self,
        request: Planned,
        ctx: &CallContext,
        turn: Option<Turn>,
    ) -> Result<TaskRecord, Error> {
        let id = ctx.command_id;
        if let Ok(existing) = self.inner.tasks().get(id) {
            return Ok(existing);
        }
        let plan = request.plan();
        let (record, cancel) =
            self.inner
                .tasks()
                .create(id, plan.command, plan.object(), plan.run.cancellable());
        self.inner
            .observer()
            .task_event(EventAction::Created, record.clone());
        let inner = self.inner.clone();
        let progress = {
            let inner2 = inner.clone();
            Progress::new(id, cancel, inner.config().step_pause).with_report(Arc::new(move |pct| {
                if let Some(t) = inner2.tasks().progress(id, pct) {
                    inner2.observer().task_event(EventAction::Progress, t);
                }
            }))
        };
        std::thread::Builder::new()
            .name("hostbus-task".into())
            .spawn(move || {
                if let Some(t) = inner.tasks().running(id) {
                    inner.observer().task_event(EventAction::Progress, t);
                }
                // A panic ends the task failed, not running for ever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    inner.execute(request, &progress, id, turn)
                }))
                .unwrap_or_else(|_| Err(Error::internal(format!("task {id} panicked"))))
                .map(AnyResponse::into_record);
                if let Some(t) = inner.tasks().finish(id, result) {
                    inner.observer().task_event(EventAction::Finished, t);
                }
            })
            .map_err(|e| Error::internal(format!("cannot start a task thread: {e}")))?;
        Ok(record)
    }

    /// A new subscription to object events, on a channel. Dropping the
    /// receiver ends it.
    pub fn subscribe(&self) -> Receiver<ObjectEvent> {
        let (tx, rx) = channel();
        self.subscribe_with(Box::new(move |ev| tx.send(ev).is_ok()));
        rx
    }

    /// A new subscription to object events, handed to `deliver` on the
    /// thread that saw each change, without a thread of the bridge's own in
    /// between: `deliver` must not block (push onto a channel the consumer
    /// awaits, say an async runtime's unbounded channel) and returns
    /// `false` to end the subscription.
    pub fn subscribe_with(&self, deliver: Deliver) {
        self.inner.observer().subscribe(deliver);
    }

    /// Cleans up what an interrupted run of `request` left behind, before
    /// it runs again (an interrupted `vm.define` may have left its new
    /// volumes without the VM). Blocks on libvirt.
    pub fn clean_interrupted(&self, request: &AnyRequest) {
        self.inner.clean_interrupted(request);
    }

    /// The answer to a re-run of an interrupted `request` that failed with
    /// `error` only because its first run already took effect (the VM
    /// already runs, the volume already exists): the object's current
    /// state. `None` when `error` is a real failure. Blocks on libvirt.
    pub fn recover(&self, request: &AnyRequest, error: &Error) -> Option<AnyResponse> {
        self.inner.recover(request, error)
    }

    /// What heartbeats report of the host's load: the load average and,
    /// when libvirt answers, active VMs and free memory. Blocks on libvirt.
    pub fn host_load(&self) -> HostLoad {
        self.inner.host_load()
    }

    /// Every record of the host with its generation.
    pub fn inventory(&self) -> Result<Inventory, Error> {
        self.inner.inventory()
    }

    /// Health of the hypervisor connection.
    pub fn health(&self) -> HealthReport {
        self.inner.connection().health()
    }

    /// Tasks not yet finished.
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks().running_count()
    }

    /// Operations waiting for or holding the lock of the busiest object a
    /// request works on, and that object's key.
    pub fn queue_depth<'r>(&self, request: &'r Planned) -> (usize, Option<&'r str>) {
        request
            .lock_keys()
            .iter()
            .map(|k| (self.inner.locks().depth(k), Some(k.as_str())))
            .max_by_key(|(depth, _)| *depth)
            .unwrap_or((0, None))
    }

    /// Compares libvirt's state with the last seen now, emitting events for
    /// every difference, and collects tasks past their TTL (the background
    /// thread does this periodically).
    pub fn reconcile_now(&self) -> Result<(), Error> {
        self.inner.reconcile()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// Stops the background threads and closes the connection. Running
    /// tasks finish on their own threads.
    pub fn shutdown(&self) {
        self.inner.stop_workers();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.inner.connection().close();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}
