//! The bridge's shared state ([`Inner`]) and what runs on it: the dispatch
//! `match` of every command, current operations, the event worker and the
//! reconciliation loop. Every object-class module (`vm`, `host`, `storage`,
//! `network`) adds methods to `Inner`; none of them imports from lib.rs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{CurrentOperation, ObjectClass, Placement, TaskRecord, VmOperation};
use hostbus_protocol::{AnyRequest, AnyResponse, Error, ErrorCode, EventAction};
use uuid::Uuid;
use virt::connect::Connect;

use crate::config::Config;
use crate::conn::Conn;
use crate::errors::{is_connection_error, map_error, Subject};
use crate::events::RawEvent;
use crate::locks::{lock, LockTable, Turn};
use crate::observe::{Observed, Observer};
use crate::tasks::{Progress, TaskTable};

pub(crate) struct Inner {
    config: Config,
    conn: Conn,
    observer: Observer,
    locks: LockTable,
    tasks: TaskTable,
    /// Operations in progress per VM uuid.
    current_ops: Mutex<HashMap<Uuid, Vec<CurrentOperation>>>,
    /// Whether the host takes new VMs (`host.disable`), as last set.
    placement: Mutex<Placement>,
    /// Whether the first full scan (without events) has been made.
    baseline: AtomicBool,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
}

/// The parts of the state other modules use, each through the methods of
/// the module that owns it (`config`, `conn`, `observe`, `locks`, `tasks`);
/// current operations and the worker threads' stop flag only through
/// `Inner`'s own methods.
impl Inner {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn connection(&self) -> &Conn {
        &self.conn
    }

    pub(crate) fn observer(&self) -> &Observer {
        &self.observer
    }

    pub(crate) fn locks(&self) -> &LockTable {
        &self.locks
    }

    pub(crate) fn tasks(&self) -> &TaskTable {
        &self.tasks
    }

    /// Tells the event worker and the reconciliation loop to stop, and
    /// wakes them.
    pub(crate) fn stop_workers(&self) {
        let _guard = lock(&self.wake.0);
        self.stop.store(true, Ordering::SeqCst);
        self.wake.1.notify_all();
    }
}

impl Inner {
    /// The shared state over `config`, its connection reporting libvirt's
    /// callbacks to `events`.
    pub(crate) fn new(config: Config, events: Sender<RawEvent>) -> Self {
        Self {
            conn: Conn::new(&config.uri, events, config.libvirt_events),
            observer: Observer::default(),
            locks: LockTable::new(config.lock_hook.clone()),
            tasks: TaskTable::new(config.task_ttl),
            current_ops: Mutex::default(),
            placement: Mutex::new(crate::host::load_placement(config.state_file.as_deref())),
            baseline: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            config,
        }
    }
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

    pub(crate) fn execute(
        &self,
        req: Planned,
        progress: &Progress,
        id: Uuid,
        turn: Option<Turn>,
    ) -> Result<AnyResponse, Error> {
        use AnyRequest as R;
        use AnyResponse as A;
        progress.check()?;
        let (req, _, keys) = req.into_parts();
        let turn = match turn {
            Some(t) if t.is_for(&keys) => t,
            _ => self.locks.enqueue_all(&keys),
        };
        let _guards = turn.wait();
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
            R::HostDisable(r) => A::HostDisable(self.set_placement(false, r.reason)?),
            R::HostEnable(_) => A::HostEnable(self.set_placement(true, String::new())?),
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
            R::VmClone(r) => A::VmClone(self.vm_clone(r, progress, id)?),
            R::VmSetTemplate(r) => A::VmSetTemplate(self.vm_set_template(r, id)?),
            R::VmMigrate(r) => A::VmMigrate(self.vm_migrate(r, progress, id)?),
            R::VmMigratePrepare(r) => A::VmMigratePrepare(self.vm_migrate_prepare(r)?),
            R::VmMigrateAbort(r) => A::VmMigrateAbort(self.vm_migrate_abort(r)?),
            R::VmStatsGet(r) => A::VmStatsGet(self.vm_stats(r.uuid)?),
            R::SnapshotCreate(r) => A::SnapshotCreate(self.snapshot_create(r, id, progress)?),
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
            R::VolumeCreate(r) => A::VolumeCreate(self.volume_create(&r.pool, &r.spec, progress)?),
            R::VolumeDelete(r) => A::VolumeDelete(self.volume_delete(&r.pool, &r.name)?),
            R::VolumeResize(r) => A::VolumeResize(self.volume_resize(r)?),
            R::VolumeClone(r) => A::VolumeClone(self.volume_clone(r, progress)?),
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

    /// The host's placement now.
    pub(crate) fn placement(&self) -> Placement {
        lock(&self.placement).clone()
    }

    /// Sets the placement, keeping it in the state file when there is one.
    pub(crate) fn store_placement(&self, placement: Placement) -> Result<(), Error> {
        crate::host::save_placement(self.config.state_file.as_deref(), &placement)?;
        *lock(&self.placement) = placement;
        Ok(())
    }

    /// `OPERATION_IN_PROGRESS` when `request` may not even wait in line
    /// because its object runs an operation that excludes it: a second
    /// migration of a migrating VM (it would find the VM gone).
    pub(crate) fn excluded(&self, request: &AnyRequest) -> Result<(), Error> {
        let AnyRequest::VmMigrate(r) = request else {
            return Ok(());
        };
        let ops = self.current_ops(r.uuid);
        let Some(op) = ops.iter().find(|o| o.operation == VmOperation::Migrate) else {
            return Ok(());
        };
        Err(Error::new(
            ErrorCode::OperationInProgress,
            [
                ("object", format!("vm:{}", r.uuid)),
                ("operation", "migrate".to_owned()),
                ("task", op.id.to_string()),
            ],
            format!(
                "vm {} is being migrated (task {}); wait for that task to end",
                r.uuid, op.id
            ),
        ))
    }

    pub(crate) fn current_ops(&self, vm: Uuid) -> Vec<CurrentOperation> {
        lock(&self.current_ops)
            .get(&vm)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn event_worker(&self, rx: Receiver<RawEvent>) {
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

    pub(crate) fn reconcile_loop(&self) {
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
    pub(crate) fn reconcile(&self) -> Result<(), Error> {
        // Taking the inventory observes every object; it is then thrown away.
        self.inventory()?;
        self.baseline.store(true, Ordering::SeqCst);
        let collected = self.tasks.collect();
        if collected > 0 {
            tracing::debug!(collected, "collected finished tasks");
        }
        Ok(())
    }

    /// Observes `rec`, the record of object `id`: stamps its generation and
    /// emits an event if it changed (or `hint` names a reboot).
    pub(crate) fn observed<T: Observed>(&self, id: &str, rec: T, hint: Option<EventAction>) -> T {
        let ticket = self.observer.ticket();
        self.observed_read(id, rec, hint, ticket)
    }

    /// [`observed`](Self::observed) of a record whose read started at
    /// `ticket` (taken with `self.observer.ticket()` before reading): a read
    /// overtaken by a newer one gives the newer record.
    pub(crate) fn observed_read<T: Observed>(
        &self,
        id: &str,
        rec: T,
        hint: Option<EventAction>,
        ticket: u64,
    ) -> T {
        let seen = self.observer.observe_read(
            T::CLASS,
            id,
            Some(rec.clone().into_record()),
            hint,
            self.emitting(),
            ticket,
        );
        seen.and_then(T::from_record).unwrap_or(rec)
    }

    /// Observes that object `id` of `class` is gone.
    pub(crate) fn gone(&self, class: ObjectClass, id: &str) {
        self.observer
            .observe(class, id, None, None, self.emitting());
    }

    /// Observes that the objects of `class` under `prefix` (`<parent>/`)
    /// that `present` does not name are gone.
    pub(crate) fn gone_under(
        &self,
        class: ObjectClass,
        prefix: &str,
        present: impl Fn(&str) -> bool,
    ) {
        for id in self.observer.existing(class) {
            if id.strip_prefix(prefix).is_some_and(|name| !present(name)) {
                self.gone(class, &id);
            }
        }
    }

    /// Whether observations emit events (after the baseline scan).
    pub(crate) fn emitting(&self) -> bool {
        self.baseline.load(Ordering::SeqCst)
    }
}

/// Reads the record of every listed object, skipping those that vanished
/// between listing and reading (`read` fails with `vanished`, their
/// not-found code); any other failure is the answer.
pub(crate) fn read_all<O, T>(
    listed: Result<Vec<O>, Error>,
    vanished: ErrorCode,
    mut read: impl FnMut(O) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let listed = listed?;
    let mut out = Vec::with_capacity(listed.len());
    for o in listed {
        match read(o) {
            Ok(r) => out.push(r),
            Err(e) if e.code == vanished => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A libvirt object's uuid, nil when libvirt cannot say.
pub(crate) fn uuid_of(uuid: Result<String, virt::error::Error>) -> Uuid {
    uuid.ok().and_then(|u| u.parse().ok()).unwrap_or_default()
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
