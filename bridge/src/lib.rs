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

mod conn;
mod errors;
mod events;
mod ffi;
mod host;
mod locks;
mod network;
mod observe;
mod storage;
mod tasks;
mod vm;
mod xml;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{CurrentOperation, Inventory, ObjectClass, ObjectRef, TaskRecord};
use hostbus_protocol::{AnyRequest, AnyResponse, Error, EventAction};
use uuid::Uuid;
use virt::connect::Connect;

pub use conn::HealthReport;
pub use locks::{LockEvent, LockHook};
pub use observe::ObjectEvent;
pub use vm::{allowed_operations, allowed_states, new_volume_name};

/// The inventory of a simulated host for libvirt's test driver (a node
/// file: `test:///<path>`), number `index` of a fleet: three VMs (one
/// running), two pools with volumes, two networks, like the shipped
/// `testdata/node-h1.xml`, with uuids and MAC addresses of its own. Each
/// connection to such a file keeps its own private state, so one process
/// can simulate many hosts (`hostbus-agent --simulate`).
pub fn simulated_node_xml(index: u32) -> String {
    const TEMPLATE: &str = include_str!("../testdata/node-h1.xml");
    TEMPLATE
        .replace(
            "11111111-0000-4000",
            &format!("{:08x}-0000-4000", 0x5000_0000u32.wrapping_add(index)),
        )
        .replace(
            "52:54:00:10:",
            &format!("52:54:{:02x}:{:02x}:", (index >> 8) & 0xff, index & 0xff),
        )
}

use crate::conn::Conn;
use crate::errors::{is_connection_error, map_error, Subject};
use crate::events::RawEvent;
use crate::locks::LockTable;
use crate::observe::Observer;
use crate::tasks::{Progress, TaskTable};

/// How the bridge is set up.
#[derive(Clone)]
pub struct Config {
    /// libvirt URI, e.g. `qemu:///system`, `test:///default`, `test:///path/node.xml`.
    pub uri: String,
    /// The host id on the bus (reported in host records and pongs).
    pub host_id: String,
    /// How long finished tasks stay queryable.
    pub task_ttl: Duration,
    /// How often reconciliation compares libvirt's state with the last seen.
    pub reconcile_interval: Duration,
    /// A pause after each step of a multi-step operation (defining a VM with
    /// new volumes, removing storage). Zero in production; demos and tests on
    /// the instant test driver set it to watch progress and cancel tasks.
    pub step_pause: Duration,
    /// Observer of object lock transitions (tests, tracing).
    pub lock_hook: Option<LockHook>,
    /// Register libvirt lifecycle callbacks (default). Without them, changes
    /// made outside the bridge are seen by reconciliation only.
    pub libvirt_events: bool,
    /// The hypervisor domain type of new VMs.
    pub domain_type: DomainType,
    /// Where the serial console of each new VM is logged, as
    /// `<dir>/<vm name>-serial0.log` (written by libvirt's virtlogd).
    /// `None`: consoles are reachable through their pty only.
    pub console_log_dir: Option<String>,
}

/// Which hypervisor domain type new VMs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainType {
    /// `kvm` when the host's capabilities list it for the guest
    /// architecture, else the first type listed (`qemu`: TCG, or the test
    /// driver's `test`).
    #[default]
    Auto,
    /// Hardware virtualization; refused when the host does not list it.
    Kvm,
    /// QEMU's software emulator (TCG): slower, and works where KVM is
    /// absent or unusable (nested KVM that cannot run the guest).
    Qemu,
}

impl DomainType {
    /// The configuration name: `auto`, `kvm` or `qemu`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Auto => "auto",
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for DomainType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DomainType::Auto),
            "kvm" => Ok(DomainType::Kvm),
            "qemu" | "tcg" => Ok(DomainType::Qemu),
            other => Err(format!("`{other}` is not auto, kvm or qemu")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            uri: "test:///default".into(),
            host_id: "localhost".into(),
            task_ttl: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(30),
            step_pause: Duration::ZERO,
            lock_hook: None,
            libvirt_events: true,
            domain_type: DomainType::Auto,
            console_log_dir: Some("/var/log/libvirt/qemu".into()),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("uri", &self.uri)
            .field("host_id", &self.host_id)
            .field("task_ttl", &self.task_ttl)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("step_pause", &self.step_pause)
            .field("libvirt_events", &self.libvirt_events)
            .field("domain_type", &self.domain_type)
            .field("console_log_dir", &self.console_log_dir)
            .finish_non_exhaustive()
    }
}

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

/// A request's place in the line of the object it changes, taken with
/// [`Bridge::take_turn`]. Operations on one object run in the order their
/// turns were taken; dropping a turn unused leaves the line.
pub struct Turn(locks::Ticket);

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Turn").field(&self.0.key()).finish()
    }
}

impl Default for CallContext {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Inner {
    config: Config,
    conn: Conn,
    observer: Observer,
    locks: LockTable,
    tasks: TaskTable,
    /// Operations in progress per VM uuid.
    current_ops: Mutex<HashMap<Uuid, Vec<CurrentOperation>>>,
    /// Whether the first full scan (without events) has been made.
    baseline: AtomicBool,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
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
            .field("config", &self.inner.config)
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
        let inner = Arc::new(Inner {
            conn: Conn::new(&config.uri, tx, config.libvirt_events),
            observer: Observer::default(),
            locks: LockTable::new(config.lock_hook.clone()),
            tasks: TaskTable::new(config.task_ttl),
            current_ops: Mutex::default(),
            baseline: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            config,
        });
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
        Ok(Self {
            inner,
            threads: Mutex::new(vec![worker, reconciler]),
        })
    }

    /// Whether `request` is answered from memory, without libvirt and
    /// without any lock that libvirt work holds, so a caller on an async
    /// runtime may [`call`](Self::call) it in place instead of handing it to
    /// a blocking thread. Only `host.ping`: it proves the bus and the agent
    /// answer, and costs nothing to run.
    pub fn runs_inline(request: &AnyRequest) -> bool {
        matches!(request, AnyRequest::HostPing(_))
    }

    /// Takes `request`'s place in the line of the object it changes, now,
    /// without blocking; `None` for a request that changes nothing (reads
    /// take no lock). Pass the turn to [`call_in_turn`](Self::call_in_turn)
    /// or [`submit_in_turn`](Self::submit_in_turn): a caller that receives
    /// requests in order takes their turns in that order, and they then run
    /// in that order whatever threads run them.
    pub fn take_turn(&self, request: &AnyRequest) -> Option<Turn> {
        lock_key(request).map(|k| Turn(self.inner.locks.enqueue(&k)))
    }

    /// Runs one command synchronously, taking its turn now.
    pub fn call(&self, request: AnyRequest, ctx: &CallContext) -> Result<AnyResponse, Error> {
        self.call_in_turn(request, ctx, None)
    }

    /// Runs one command synchronously in `turn` (from
    /// [`take_turn`](Self::take_turn) for this request; a new one is taken
    /// when `None`).
    pub fn call_in_turn(
        &self,
        request: AnyRequest,
        ctx: &CallContext,
        turn: Option<Turn>,
    ) -> Result<AnyResponse, Error> {
        let progress = Progress::untracked(self.inner.config.step_pause)
            .with_deadline(request.name(), ctx.deadline);
        self.inner.execute(request, &progress, ctx.command_id, turn)
    }

    /// Starts one command as a task and returns the task at once, taking
    /// its turn now.
    pub fn submit(&self, request: AnyRequest, ctx: &CallContext) -> Result<TaskRecord, Error> {
        self.submit_in_turn(request, ctx, None)
    }

    /// Starts one command as a task in `turn` and returns the task at once.
    /// The task's id is the command id. Its progress and outcome arrive as
    /// task events and through `task.get`.
    pub fn submit_in_turn(
        &self,
        request: AnyRequest,
        ctx: &CallContext,
        turn: Option<Turn>,
    ) -> Result<TaskRecord, Error> {
        request.validate()?;
        let id = ctx.command_id;
        if let Ok(existing) = self.inner.tasks.get(id) {
            return Ok(existing);
        }
        let cancellable = matches!(
            request,
            AnyRequest::VmDefine(_) | AnyRequest::VmUndefine(_) | AnyRequest::VmShutdown(_)
        );
        let (record, cancel) =
            self.inner
                .tasks
                .create(id, request.name(), object_of(&request), cancellable);
        self.inner
            .observer
            .task_event(EventAction::Created, record.clone());
        let inner = self.inner.clone();
        let progress = {
            let inner2 = inner.clone();
            Progress::new(id, cancel, inner.config.step_pause).with_report(Arc::new(move |pct| {
                if let Some(t) = inner2.tasks.progress(id, pct) {
                    inner2.observer.task_event(EventAction::Progress, t);
                }
            }))
        };
        std::thread::Builder::new()
            .name("hostbus-task".into())
            .spawn(move || {
                if let Some(t) = inner.tasks.running(id) {
                    inner.observer.task_event(EventAction::Progress, t);
                }
                let result = inner
                    .execute(request, &progress, id, turn)
                    .map(AnyResponse::into_record);
                if let Some(t) = inner.tasks.finish(id, result) {
                    inner.observer.task_event(EventAction::Finished, t);
                }
            })
            .map_err(|e| Error::internal(format!("cannot start a task thread: {e}")))?;
        Ok(record)
    }

    /// A new subscription to object events. Dropping the receiver ends it.
    pub fn subscribe(&self) -> Receiver<ObjectEvent> {
        self.inner.observer.subscribe()
    }

    /// Every record of the host with its generation.
    pub fn inventory(&self) -> Result<Inventory, Error> {
        self.inner.inventory()
    }

    /// Health of the hypervisor connection.
    pub fn health(&self) -> HealthReport {
        self.inner.conn.health()
    }

    /// Tasks not yet finished.
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.running_count()
    }

    /// Operations waiting for or holding the lock of the object a request works on.
    pub fn queue_depth(&self, request: &AnyRequest) -> usize {
        lock_key(request).map_or(0, |k| self.inner.locks.depth(&k))
    }

    /// Compares libvirt's state with the last seen now, emitting events for
    /// every difference, and collects tasks past their TTL (the background
    /// thread does this periodically).
    pub fn reconcile_now(&self) -> Result<(), Error> {
        self.inner.reconcile()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Stops the background threads and closes the connection. Running
    /// tasks finish on their own threads.
    pub fn shutdown(&self) {
        {
            let _guard = lock(&self.inner.wake.0);
            self.inner.stop.store(true, Ordering::SeqCst);
            self.inner.wake.1.notify_all();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.inner.conn.close();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The lock key of the object a request changes; `None` for reads.
fn lock_key(req: &AnyRequest) -> Option<String> {
    use AnyRequest as R;
    Some(match req {
        R::VmDefine(r) => format!("vm-name:{}", r.spec.name),
        R::VmUndefine(r) => format!("vm:{}", r.uuid),
        R::VmStart(r) => format!("vm:{}", r.uuid),
        R::VmShutdown(r) => format!("vm:{}", r.uuid),
        R::VmDestroy(r)
        | R::VmReboot(r)
        | R::VmReset(r)
        | R::VmPause(r)
        | R::VmResume(r)
        | R::VmSuspend(r) => {
            format!("vm:{}", r.uuid)
        }
        R::VmSetMemory(r) => format!("vm:{}", r.uuid),
        R::VmSetVcpus(r) => format!("vm:{}", r.uuid),
        R::VmAttachDisk(r) => format!("vm:{}", r.uuid),
        R::VmDetachDisk(r) => format!("vm:{}", r.uuid),
        R::VmAttachNic(r) => format!("vm:{}", r.uuid),
        R::VmDetachNic(r) => format!("vm:{}", r.uuid),
        R::SnapshotCreate(r) => format!("vm:{}", r.vm),
        R::SnapshotRevert(r) | R::SnapshotDelete(r) => format!("vm:{}", r.vm),
        R::PoolDefine(r) => format!("pool:{}", r.spec.name),
        R::PoolStart(r) | R::PoolStop(r) | R::PoolRefresh(r) | R::PoolUndefine(r) => {
            format!("pool:{}", r.name)
        }
        R::VolumeCreate(r) => format!("volume:{}/{}", r.pool, r.spec.name),
        R::VolumeDelete(r) => format!("volume:{}/{}", r.pool, r.name),
        R::VolumeResize(r) => format!("volume:{}/{}", r.pool, r.name),
        R::VolumeClone(r) => format!("volume:{}/{}", r.pool, r.new_name),
        R::NetworkDefine(r) => format!("network:{}", r.spec.name),
        R::NetworkStart(r) | R::NetworkStop(r) | R::NetworkUndefine(r) => {
            format!("network:{}", r.name)
        }
        _ => return None,
    })
}

/// The object a request works on, for task records.
fn object_of(req: &AnyRequest) -> Option<ObjectRef> {
    let key = lock_key(req)?;
    let (class, id) = key.split_once(':')?;
    let class = match class {
        "vm" | "vm-name" => ObjectClass::Vm,
        "pool" => ObjectClass::Pool,
        "volume" => ObjectClass::Volume,
        "network" => ObjectClass::Network,
        _ => return None,
    };
    Some(ObjectRef {
        class,
        id: id.to_owned(),
    })
}

impl Inner {
    /// A live connection, or `HOST_UNAVAILABLE`.
    pub(crate) fn conn(&self) -> Result<Connect, Error> {
        self.conn.get()
    }

    /// Maps a libvirt result, dropping the connection when it broke.
    pub(crate) fn lv<T>(
        &self,
        subject: &Subject,
        r: Result<T, virt::error::Error>,
    ) -> Result<T, Error> {
        r.map_err(|e| {
            if is_connection_error(&e) {
                self.conn.invalidate(e.message());
            }
            map_error(&e, subject)
        })
    }

    fn execute(
        &self,
        req: AnyRequest,
        progress: &Progress,
        id: Uuid,
        turn: Option<Turn>,
    ) -> Result<AnyResponse, Error> {
        use AnyRequest as R;
        use AnyResponse as A;
        req.validate()?;
        progress.check()?;
        let ticket = match (lock_key(&req), turn) {
            (Some(key), Some(Turn(t))) if t.key() == key => Some(t),
            (Some(key), _) => Some(self.locks.enqueue(&key)),
            (None, _) => None,
        };
        let _guard = ticket.map(locks::Ticket::wait);
        // Waiting in line may have taken past the deadline or a cancel.
        progress.check()?;
        let span = tracing::debug_span!("bridge", command = req.name(), command_id = %id);
        let _enter = span.enter();
        Ok(match req {
            R::HostPing(r) => A::HostPing(self.ping(r)),
            R::HostInfo(_) => A::HostInfo(self.host_info()?),
            R::HostCapabilities(_) => A::HostCapabilities(self.capabilities()?),
            R::HostStatsGet(_) => A::HostStatsGet(self.host_stats()?),
            R::HostSnapshot(_) => A::HostSnapshot(self.inventory()?),
            R::VmList(r) => A::VmList(self.vm_list(r)?),
            R::VmGet(r) => A::VmGet(self.vm_get(r.uuid)?),
            R::VmGetByName(r) => A::VmGetByName(self.vm_get_by_name(&r.name)?),
            R::VmDefine(r) => A::VmDefine(self.vm_define(r, progress)?),
            R::VmUndefine(r) => A::VmUndefine(self.vm_undefine(r, progress, id)?),
            R::VmStart(r) => A::VmStart(self.vm_start(r, id)?),
            R::VmShutdown(r) => A::VmShutdown(self.vm_shutdown(r, progress, id)?),
            R::VmDestroy(r) => A::VmDestroy(self.vm_destroy(r.uuid, id)?),
            R::VmReboot(r) => A::VmReboot(self.vm_reboot(r.uuid, id)?),
            R::VmReset(r) => A::VmReset(self.vm_reset(r.uuid, id)?),
            R::VmPause(r) => A::VmPause(self.vm_pause(r.uuid, id)?),
            R::VmResume(r) => A::VmResume(self.vm_resume(r.uuid, id)?),
            R::VmSuspend(r) => A::VmSuspend(self.vm_suspend(r.uuid, id)?),
            R::VmSetMemory(r) => A::VmSetMemory(self.vm_set_memory(r, id)?),
            R::VmSetVcpus(r) => A::VmSetVcpus(self.vm_set_vcpus(r, id)?),
            R::VmAttachDisk(r) => A::VmAttachDisk(self.vm_attach_disk(r, id)?),
            R::VmDetachDisk(r) => A::VmDetachDisk(self.vm_detach_disk(r, id)?),
            R::VmAttachNic(r) => A::VmAttachNic(self.vm_attach_nic(r, id)?),
            R::VmDetachNic(r) => A::VmDetachNic(self.vm_detach_nic(r, id)?),
            R::VmStatsGet(r) => A::VmStatsGet(self.vm_stats(r.uuid)?),
            R::SnapshotCreate(r) => A::SnapshotCreate(self.snapshot_create(r, id)?),
            R::SnapshotList(r) => A::SnapshotList(self.snapshot_list(r.uuid)?),
            R::SnapshotRevert(r) => A::SnapshotRevert(self.snapshot_revert(r, id)?),
            R::SnapshotDelete(r) => A::SnapshotDelete(self.snapshot_delete(r, id)?),
            R::PoolList(_) => A::PoolList(self.pool_list()?),
            R::PoolGet(r) => A::PoolGet(self.pool_get(&r.name)?),
            R::PoolDefine(r) => A::PoolDefine(self.pool_define(r)?),
            R::PoolStart(r) => A::PoolStart(self.pool_start(&r.name)?),
            R::PoolStop(r) => A::PoolStop(self.pool_stop(&r.name)?),
            R::PoolRefresh(r) => A::PoolRefresh(self.pool_refresh(&r.name)?),
            R::PoolUndefine(r) => A::PoolUndefine(self.pool_undefine(&r.name)?),
            R::VolumeList(r) => A::VolumeList(self.volume_list(&r.pool)?),
            R::VolumeGet(r) => A::VolumeGet(self.volume_get(&r.pool, &r.name)?),
            R::VolumeCreate(r) => A::VolumeCreate(self.volume_create(&r.pool, &r.spec)?),
            R::VolumeDelete(r) => A::VolumeDelete(self.volume_delete(&r.pool, &r.name)?),
            R::VolumeResize(r) => A::VolumeResize(self.volume_resize(r)?),
            R::VolumeClone(r) => A::VolumeClone(self.volume_clone(r)?),
            R::NetworkList(_) => A::NetworkList(self.network_list()?),
            R::NetworkGet(r) => A::NetworkGet(self.network_get(&r.name)?),
            R::NetworkDefine(r) => A::NetworkDefine(self.network_define(r)?),
            R::NetworkStart(r) => A::NetworkStart(self.network_start(&r.name)?),
            R::NetworkStop(r) => A::NetworkStop(self.network_stop(&r.name)?),
            R::NetworkUndefine(r) => A::NetworkUndefine(self.network_undefine(&r.name)?),
            R::TaskGet(r) => A::TaskGet(self.tasks.get(r.id)?),
            R::TaskList(r) => A::TaskList(TaskListResponse {
                tasks: self.tasks.list(r.status),
            }),
            R::TaskCancel(r) => A::TaskCancel(self.task_cancel(r.id)?),
        })
    }

    fn task_cancel(&self, id: Uuid) -> Result<TaskRecord, Error> {
        let t = self.tasks.cancel(id)?;
        self.observer.task_event(EventAction::Progress, t.clone());
        Ok(t)
    }

    /// Registers `op` as running on `vm` until the returned guard drops.
    pub(crate) fn begin_op(
        &self,
        vm: Uuid,
        id: Uuid,
        operation: hostbus_protocol::types::VmOperation,
    ) -> OpGuard<'_> {
        lock(&self.current_ops)
            .entry(vm)
            .or_default()
            .push(CurrentOperation { id, operation });
        OpGuard {
            inner: self,
            vm,
            id,
        }
    }

    pub(crate) fn current_ops(&self, vm: Uuid) -> Vec<CurrentOperation> {
        lock(&self.current_ops)
            .get(&vm)
            .cloned()
            .unwrap_or_default()
    }

    fn event_worker(&self, rx: Receiver<RawEvent>) {
        while !self.stop.load(Ordering::SeqCst) {
            let ev = match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let result = match &ev {
                RawEvent::Vm(uuid) => self.refresh_vm_by_uuid(uuid, None),
                RawEvent::VmRebooted(uuid) => {
                    self.refresh_vm_by_uuid(uuid, Some(EventAction::Rebooted))
                }
                RawEvent::Pool(name) => self.refresh_pool(name),
                RawEvent::Network(name) => self.refresh_network(name),
                RawEvent::ConnectionClosed => {
                    self.conn.invalidate("libvirt closed the connection");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(event = ?ev, error = %e, "cannot observe after a libvirt event");
            }
        }
    }

    fn reconcile_loop(&self) {
        loop {
            {
                // `stop` is set under this mutex, so the wake-up cannot be lost.
                let guard = lock(&self.wake.0);
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                let _ = self
                    .wake
                    .1
                    .wait_timeout(guard, self.config.reconcile_interval)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            self.conn.check();
            if let Err(e) = self.reconcile() {
                tracing::warn!(error = %e, "reconciliation failed");
            }
        }
    }

    /// Observes every object; the first successful pass sets the baseline
    /// without events, later passes emit an event per difference.
    fn reconcile(&self) -> Result<(), Error> {
        // Taking the inventory observes every object; it is then thrown away.
        self.inventory()?;
        self.baseline.store(true, Ordering::SeqCst);
        let collected = self.tasks.collect();
        if collected > 0 {
            tracing::debug!(collected, "collected finished tasks");
        }
        Ok(())
    }

    /// Whether observations emit events (after the baseline scan).
    pub(crate) fn emitting(&self) -> bool {
        self.baseline.load(Ordering::SeqCst)
    }
}

/// Removes a current operation when dropped.
pub(crate) struct OpGuard<'a> {
    inner: &'a Inner,
    vm: Uuid,
    id: Uuid,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        let mut ops = lock(&self.inner.current_ops);
        if let Some(v) = ops.get_mut(&self.vm) {
            v.retain(|o| o.id != self.id);
            if v.is_empty() {
                ops.remove(&self.vm);
            }
        }
    }
}
