//! `vm.migrate` on the source host and its two host-to-host halves on the
//! destination, `vm.migrate_prepare` and `vm.migrate_abort`.
//!
//! The source checks what it can alone (the VM's state, its disks), asks
//! the destination over the bus, through the agent's [`Peers`], to check
//! the rest and make copied storage's volumes, then has its libvirt
//! migrate the VM peer to peer to the URI the destination answered with
//! (`VIR_MIGRATE_PEER2PEER`: the source's libvirtd drives the move, so it
//! goes on, or is cleaned up by libvirt, whatever happens to the agent).
//! A watcher thread reports libvirt's job statistics as the task's
//! progress and aborts the job on `task.cancel`. Whatever fails after the
//! prepare is undone on the destination (`vm.migrate_abort`). libvirt
//! keeps the guest on one host: paused on the destination until the
//! switch-over, resumed on the source if the move fails.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    DiskDevice, MigrationDisk, MigrationNote, MigrationRecord, ObjectClass, PowerState,
    VmOperation, VmRecord, VolumeSpec,
};
use hostbus_protocol::{Error, ErrorCode};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

use crate::config::Peers;
use crate::errors::{already_exists, Subject};
use crate::ffi;
use crate::inner::Inner;
use crate::locks::lock;
use crate::tasks::Progress;

/// How often the watcher reads the job's statistics.
const WATCH: Duration = Duration::from_millis(200);
/// Generations a VM's source may still publish after the prepare: only
/// its `undefined` (the observer holds back the move's own states), and
/// one spare; the destination's continue above them.
const SOURCE_TAIL: u64 = 2;
/// How long a recovery waits for a migration libvirt still runs.
const JOB_WAIT: Duration = Duration::from_secs(600);

fn migrate_error(reason: impl Into<String>) -> Error {
    let reason = reason.into();
    Error::new(
        ErrorCode::OperationNotSupported,
        [
            ("operation", "vm.migrate".to_owned()),
            ("reason", reason.clone()),
        ],
        format!("vm.migrate is not possible: {reason}"),
    )
}

/// The destination's refusal, as the source's task reports it: the same
/// code and parameters, the message naming the host.
fn refused_by(host: &str, e: Error) -> Error {
    let message = format!("destination {host} refused the migration: {}", e.message);
    Error { message, ..e }
}

/// Statistics of a finished migration.
#[derive(Default)]
struct Moved {
    elapsed_ms: u64,
    data_bytes: Option<u64>,
    downtime_ms: Option<u64>,
}

impl Inner {
    fn peers(&self) -> Result<std::sync::Arc<dyn Peers>, Error> {
        self.config()
            .peers
            .clone()
            .ok_or_else(|| migrate_error("this agent has no link to other hosts"))
    }

    /// `vm.migrate`, on the source.
    pub(crate) fn vm_migrate(
        &self,
        r: VmMigrateRequest,
        progress: &Progress,
        id: Uuid,
    ) -> Result<MigrationRecord, Error> {
        let me = self.config().host_id.clone();
        if r.destination == me {
            return Err(hostbus_protocol::ValidationError::new(
                "destination",
                "is this host: a VM migrates to another one",
            )
            .into());
        }
        let peers = self.peers()?;
        let (_conn, dom, rec) = self.prepare(r.uuid, VmOperation::Migrate)?;
        let live = !r.offline;
        let fits = match rec.power_state {
            PowerState::Running | PowerState::Paused => live,
            PowerState::Halted => !live,
            _ => false,
        };
        if !fits {
            let allowed = if live { "running, paused" } else { "halted" };
            return Err(Error::new(
                ErrorCode::VmBadPowerState,
                [
                    ("vm", rec.uuid.to_string()),
                    ("operation", "migrate".to_owned()),
                    ("current", rec.power_state.to_string()),
                    ("allowed", allowed.to_owned()),
                ],
                format!(
                    "vm {} is {}: a{} migration needs it {allowed}",
                    rec.name,
                    rec.power_state,
                    if live { " live" } else { "n offline" }
                ),
            ));
        }
        let (pools, disks) = self.migration_disks(&rec, r.copy_storage)?;
        let networks: BTreeSet<String> =
            rec.nics.iter().filter_map(|n| n.network.clone()).collect();
        let _op = self.begin_op(r.uuid, id, VmOperation::Migrate);
        let uuid = rec.uuid.to_string();
        let note = MigrationNote {
            source: me.clone(),
            destination: r.destination.clone(),
            task: id,
        };
        // From here the source publishes nothing of the VM but its
        // departure: the generation the destination continues above is
        // final.
        self.observer().expect_move(&uuid, note, false, 0);
        let generation = self.observer().generation(ObjectClass::Vm, &uuid);
        // A task's message is acked when the task starts: only this note
        // brings it back after a crash. A synchronous call's is redelivered
        // and recovered through the journal (`recover.rs`).
        let _in_flight = progress.is_task().then(|| self.note_in_flight(&r, id));
        if let Err(e) = progress.check() {
            self.observer().forget_move(&uuid);
            return Err(e);
        }
        let prepare = VmMigratePrepareRequest {
            uuid: rec.uuid,
            name: rec.name.clone(),
            source: me.clone(),
            task: id,
            live,
            memory_kib: rec.memory_kib,
            networks: networks.into_iter().collect(),
            pools: pools.into_iter().collect(),
            disks: disks.clone(),
            generation,
        };
        let prepared = match peers.prepare(&r.destination, prepare) {
            Ok(p) => p,
            Err(e) => {
                self.observer().forget_move(&uuid);
                return Err(refused_by(&r.destination, e));
            }
        };
        progress.fraction(5, 100);
        tracing::info!(vm = %rec.name, %uuid, destination = %r.destination, uri = %prepared.migration_uri, live, copy_storage = r.copy_storage, "migrating vm");
        let outcome = self.run_migration(&dom, &r, &prepared.migration_uri, progress);
        // Whatever libvirt said, where the VM is now decides: a job that
        // failed late (an abort after the switch-over) may have moved it.
        let _ = self.refresh_vm_by_uuid(&uuid, None);
        let here = self
            .conn()
            .is_ok_and(|c| c.lookup_domain_by_uuid_string(&uuid).is_ok());
        match outcome {
            Err(e) if here => {
                self.observer().forget_move(&uuid);
                let _ = self.refresh_vm_by_uuid(&uuid, None);
                let abort = VmMigrateAbortRequest {
                    uuid: rec.uuid,
                    name: rec.name.clone(),
                    created: prepared.created,
                };
                if let Err(ae) = peers.abort(&r.destination, abort) {
                    tracing::warn!(vm = %rec.name, destination = %r.destination, error = %ae, "cannot undo the destination's prepare");
                }
                tracing::warn!(vm = %rec.name, destination = %r.destination, error = %e, "migration failed; the vm stays here");
                Err(e)
            }
            outcome => {
                let moved = outcome.unwrap_or_default();
                let moved = Moved {
                    downtime_ms: moved
                        .downtime_ms
                        .or_else(|| completed_downtime(&prepared.migration_uri, rec.uuid)),
                    ..moved
                };
                // Copied storage's originals belong to no VM now: they go,
                // as the VM's own storage would with it.
                for d in &disks {
                    self.remove_left_volume(&d.pool, &d.name, "vm.migrate");
                }
                let vm = peers.vm_get(&r.destination, rec.uuid).unwrap_or(rec);
                tracing::info!(vm = %vm.name, destination = %r.destination, elapsed_ms = moved.elapsed_ms, downtime_ms = ?moved.downtime_ms, "migrated vm");
                progress.took_effect(100, 100);
                Ok(MigrationRecord {
                    vm,
                    source: me,
                    destination: r.destination.clone(),
                    host: r.destination,
                    live,
                    copy_storage: r.copy_storage,
                    elapsed_ms: moved.elapsed_ms,
                    downtime_ms: moved.downtime_ms,
                    data_bytes: moved.data_bytes,
                })
            }
        }
    }

    /// The pools the VM's disks are in (they must exist on the
    /// destination) and, for copied storage, the volumes it must make.
    fn migration_disks(
        &self,
        rec: &VmRecord,
        copy: bool,
    ) -> Result<(BTreeSet<String>, Vec<MigrationDisk>), Error> {
        let mut pools = BTreeSet::new();
        let mut disks = Vec::new();
        for d in &rec.disks {
            let copied = copy && !d.read_only && d.device == DiskDevice::Disk;
            match &d.volume {
                Some(v) => {
                    pools.insert(v.pool.clone());
                    if copied {
                        let vol = self.volume_get(&v.pool, &v.volume)?;
                        disks.push(MigrationDisk {
                            pool: v.pool.clone(),
                            name: v.volume.clone(),
                            capacity_bytes: vol.capacity_bytes,
                            format: vol.format,
                        });
                    }
                }
                None if copied && d.source_path.is_some() => {
                    return Err(migrate_error(format!(
                        "disk {} is a path outside every storage pool: copied storage is made through pools",
                        d.target
                    )))
                }
                None => {}
            }
        }
        Ok((pools, disks))
    }

    /// Runs libvirt's migration of `dom` to `uri`, with a watcher that
    /// reports progress, sets the downtime limit and aborts on cancel.
    fn run_migration(
        &self,
        dom: &Domain,
        r: &VmMigrateRequest,
        uri: &str,
        progress: &Progress,
    ) -> Result<Moved, Error> {
        let mut flags = sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if r.offline {
            flags |= sys::VIR_MIGRATE_OFFLINE;
        } else {
            flags |= sys::VIR_MIGRATE_LIVE;
            // Shared storage is the caller's word: libvirt cannot tell a
            // file on a shared filesystem from a local one and refuses
            // without this flag unless the disk's cache mode is `none`.
            flags |= if r.copy_storage {
                sys::VIR_MIGRATE_NON_SHARED_DISK
            } else {
                sys::VIR_MIGRATE_UNSAFE
            };
        }
        let params = MigrateParameters {
            bandwidth: r.bandwidth_mib_s,
            ..MigrateParameters::default()
        };
        let subject = Subject::vm(r.uuid, "migrate");
        let started = Instant::now();
        let done = AtomicBool::new(false);
        let last = Mutex::new(None::<u64>);
        let result = std::thread::scope(|s| {
            if !r.offline {
                s.spawn(|| self.watch_migration(r, progress, &done, &last));
            }
            let result = dom.migrate_to_uri3(Some(uri), params, flags);
            done.store(true, Ordering::SeqCst);
            result
        });
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(()) => Ok(Moved {
                elapsed_ms,
                data_bytes: *lock(&last),
                downtime_ms: None,
            }),
            Err(e) => {
                progress.check_cancelled()?;
                self.lv(&subject, Err(e)).map(|()| Moved::default())
            }
        }
    }

    /// The watcher of a live migration, on its own thread until `done`.
    fn watch_migration(
        &self,
        r: &VmMigrateRequest,
        progress: &Progress,
        done: &AtomicBool,
        last: &Mutex<Option<u64>>,
    ) {
        let Ok(dom) = self.conn().and_then(|c| self.lookup_vm(&c, r.uuid)) else {
            return;
        };
        let mut aborted = false;
        let mut downtime_set = r.max_downtime_ms.is_none();
        while !done.load(Ordering::SeqCst) {
            if !aborted && progress.check_cancelled().is_err() {
                aborted = true;
                match ffi::abort_job(&dom) {
                    Ok(()) => tracing::info!(vm = %r.uuid, "migration cancelled: job aborted"),
                    Err(e) => {
                        tracing::warn!(vm = %r.uuid, error = %e.message(), "cannot abort the migration job")
                    }
                }
            }
            if !downtime_set {
                if let Some(ms) = r.max_downtime_ms {
                    downtime_set = dom.migrate_set_max_downtime(ms, 0).is_ok();
                }
            }
            // `job_info`, not `job_stats`: see `ffi::completed_downtime_ms`.
            if let Ok(stats) = dom.job_info() {
                let total = stats.data_total.unwrap_or(0);
                let processed = stats.data_processed.unwrap_or(0);
                // 5 % for the prepare, 90 for the data, 5 for the end.
                if let Some(done) = (90 * processed.min(total)).checked_div(total) {
                    *lock(last) = Some(processed);
                    progress.fraction(5 + done, 100);
                }
            }
            std::thread::sleep(WATCH);
        }
    }

    /// `vm.migrate_prepare`, on the destination.
    pub(crate) fn vm_migrate_prepare(
        &self,
        r: VmMigratePrepareRequest,
    ) -> Result<VmMigratePrepareResponse, Error> {
        let me = self.config().host_id.clone();
        let placement = self.placement();
        if !placement.enabled {
            return Err(Error::new(
                ErrorCode::HostDisabled,
                [("host", me.clone()), ("reason", placement.reason.clone())],
                format!(
                    "host {me} takes no new vms (host.disable: {})",
                    if placement.reason.is_empty() {
                        "no reason given"
                    } else {
                        &placement.reason
                    }
                ),
            ));
        }
        let Some(uri) = self.config().migration_uri.clone() else {
            return Err(migrate_error(format!(
                "host {me} takes no migrations: its agent has no migration_uri"
            )));
        };
        let conn = self.conn()?;
        if conn
            .lookup_domain_by_uuid_string(&r.uuid.to_string())
            .is_ok()
        {
            return Err(already_exists("vm", &r.uuid.to_string()));
        }
        if conn.lookup_domain_by_name(&r.name).is_ok() {
            return Err(already_exists("vm", &r.name));
        }
        if r.live {
            let free = self.host_stats()?.memory_free_kib;
            if free < r.memory_kib {
                return Err(Error::new(
                    ErrorCode::InsufficientResources,
                    [
                        ("resource", "memory".to_owned()),
                        (
                            "reason",
                            format!("needs {} KiB, {free} KiB free", r.memory_kib),
                        ),
                    ],
                    format!(
                        "host {me} cannot take vm {}: it needs {} KiB of memory, {free} KiB are free",
                        r.name, r.memory_kib
                    ),
                ));
            }
        }
        for n in &r.networks {
            let net = self.network_get(n)?;
            if !net.active {
                return Err(crate::errors::state_error(
                    ErrorCode::NetworkBadState,
                    "network",
                    n,
                    "vm.migrate",
                    "inactive",
                ));
            }
        }
        for p in &r.pools {
            self.running_pool(&conn, p, "vm.migrate")?;
        }
        for d in &r.disks {
            let pool = self.running_pool(&conn, &d.pool, "vm.migrate")?;
            if pool.lookup_storage_vol_by_name(&d.name).is_ok() {
                return Err(already_exists("volume", &format!("{}/{}", d.pool, d.name)));
            }
            self.check_creatable(&conn, "vm.migrate", d.format)?;
        }
        let mut created = Vec::new();
        for d in &r.disks {
            let spec = VolumeSpec {
                name: d.name.clone(),
                capacity_bytes: d.capacity_bytes,
                allocation_bytes: 0,
                format: d.format,
            };
            match self.create_volume_raw(&conn, &d.pool, &spec) {
                Ok(_) => {
                    let _ = self.volume_get(&d.pool, &d.name);
                    created.push(d.clone());
                }
                Err(e) => {
                    self.remove_made(&created);
                    return Err(e);
                }
            }
        }
        let note = MigrationNote {
            source: r.source.clone(),
            destination: me.clone(),
            task: r.task,
        };
        self.observer()
            .expect_move(&r.uuid.to_string(), note, true, r.generation + SOURCE_TAIL);
        tracing::info!(vm = %r.name, uuid = %r.uuid, source = %r.source, volumes = created.len(), "prepared to take a migrating vm");
        Ok(VmMigratePrepareResponse {
            host_id: me,
            migration_uri: uri,
            created,
        })
    }

    fn remove_made(&self, made: &[MigrationDisk]) {
        for d in made {
            self.remove_left_volume(&d.pool, &d.name, "vm.migrate_prepare");
        }
    }

    /// `vm.migrate_abort`, on the destination: the volumes a prepare made
    /// go, unless the VM arrived after all.
    pub(crate) fn vm_migrate_abort(&self, r: VmMigrateAbortRequest) -> Result<Empty, Error> {
        let uuid = r.uuid.to_string();
        self.observer().forget_move(&uuid);
        let conn = self.conn()?;
        if conn.lookup_domain_by_uuid_string(&uuid).is_ok() {
            tracing::warn!(vm = %r.name, %uuid, "a migration reported failed arrived here: its volumes stay");
            return Ok(Empty {});
        }
        self.remove_made(&r.created);
        tracing::info!(vm = %r.name, %uuid, volumes = r.created.len(), "undid a migration's prepare");
        Ok(Empty {})
    }

    /// Before an interrupted `vm.migrate` runs again: waits while libvirt
    /// still runs the migration (peer to peer, it outlives the agent),
    /// then, when the VM is still here, undoes the destination's prepare
    /// so the re-run can prepare again. A VM that left is the re-run's
    /// answer ([`Self::migrated_after_all`]).
    pub(crate) fn clean_interrupted_migration(&self, r: &VmMigrateRequest) {
        let Ok(conn) = self.conn() else { return };
        let started = Instant::now();
        let dom = loop {
            let Ok(dom) = self.lookup_vm(&conn, r.uuid) else {
                return;
            };
            let busy = dom
                .job_info()
                .is_ok_and(|j| j.r#type != sys::VIR_DOMAIN_JOB_NONE as i32);
            if !busy || started.elapsed() > JOB_WAIT {
                break dom;
            }
            std::thread::sleep(WATCH);
        };
        let Ok(rec) = self.vm_record(&dom) else {
            return;
        };
        let Ok(peers) = self.peers() else { return };
        let Ok((_, created)) = self.migration_disks(&rec, r.copy_storage) else {
            return;
        };
        let abort = VmMigrateAbortRequest {
            uuid: r.uuid,
            name: rec.name.clone(),
            created,
        };
        match peers.abort(&r.destination, abort) {
            Ok(()) => {
                tracing::info!(vm = %rec.name, destination = %r.destination, "an interrupted migration left the vm here; undid its prepare")
            }
            Err(e) => {
                tracing::warn!(vm = %rec.name, destination = %r.destination, error = %e, "cannot undo an interrupted migration's prepare")
            }
        }
    }

    /// The answer to a re-run of an interrupted `vm.migrate` that found
    /// the VM gone from this host: where it is, when the destination has it.
    pub(crate) fn migrated_after_all(&self, r: &VmMigrateRequest) -> Option<MigrationRecord> {
        let vm = self.peers().ok()?.vm_get(&r.destination, r.uuid).ok()?;
        tracing::info!(vm = %vm.name, destination = %r.destination, "an interrupted migration finished: the vm runs on its destination");
        Some(MigrationRecord {
            vm,
            source: self.config().host_id.clone(),
            destination: r.destination.clone(),
            host: r.destination.clone(),
            live: !r.offline,
            copy_storage: r.copy_storage,
            elapsed_ms: 0,
            downtime_ms: None,
            data_bytes: None,
        })
    }
}

/// The downtime libvirt measured on the destination, when this process can
/// read it there (read-only); `None` otherwise.
fn completed_downtime(uri: &str, uuid: Uuid) -> Option<u64> {
    let conn = Connect::open_read_only(Some(uri)).ok()?;
    let downtime = conn
        .lookup_domain_by_uuid_string(&uuid.to_string())
        .ok()
        .and_then(|d| ffi::completed_downtime_ms(&d));
    drop(conn);
    downtime
}

/// The file that says migration `id` is in flight, beside the host's
/// state file; `None` without one.
fn in_flight_file(state: Option<&std::path::Path>, id: Uuid) -> Option<std::path::PathBuf> {
    let state = state?;
    let stem = state.file_stem()?.to_string_lossy().into_owned();
    Some(state.with_file_name(format!("{stem}.migration-{id}.json")))
}

/// Removes its file when the migration ends, whichever way; left behind
/// only by a process that died meanwhile.
struct InFlight(Option<std::path::PathBuf>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Inner {
    /// Notes migration `id` as in flight (its request, in a file beside the
    /// host's state file) until the guard drops.
    fn note_in_flight(&self, r: &VmMigrateRequest, id: Uuid) -> InFlight {
        let file = in_flight_file(self.config().state_file.as_deref(), id);
        if let Some(f) = &file {
            let written = hostbus_protocol::encode(hostbus_protocol::ContentType::Json, r)
                .map_err(|e| e.to_string())
                .and_then(|bytes| std::fs::write(f, bytes).map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::warn!(file = %f.display(), error = %e, "cannot note a migration in flight");
            }
        }
        InFlight(file)
    }

    /// The migrations a dead agent left in flight: each is a task again
    /// (its own id), which waits for libvirt's job to end and says where
    /// the VM is: here (the migration did not happen: `CANCELLED`, the
    /// destination's prepare undone) or on its destination (its record).
    pub(crate) fn resume_migrations(self: &std::sync::Arc<Self>) {
        let Some(state) = self.config().state_file.clone() else {
            return;
        };
        let Some(stem) = state.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            return;
        };
        let prefix = format!("{stem}.migration-");
        let Some(dir) = state.parent() else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let request = std::fs::read(e.path()).ok().and_then(|b| {
                hostbus_protocol::decode::<VmMigrateRequest>(
                    hostbus_protocol::ContentType::Json,
                    &b,
                    1 << 20,
                )
                .ok()
            });
            let guard = InFlight(Some(e.path()));
            let Some(r) = request else {
                tracing::warn!(file = %e.path().display(), "an unreadable note of a migration in flight: removed");
                continue;
            };
            let object = Some(hostbus_protocol::commands::Target::Vm(r.uuid).object());
            let (record, _) = self.tasks().create(id, "vm.migrate", object, false);
            self.observer()
                .task_event(hostbus_protocol::EventAction::Created, record);
            let inner = self.clone();
            let spawned = std::thread::Builder::new()
                .name("hostbus-task".into())
                .spawn(move || {
                    let _guard = guard;
                    if let Some(t) = inner.tasks().running(id) {
                        inner
                            .observer()
                            .task_event(hostbus_protocol::EventAction::Progress, t);
                    }
                    let result = inner.finish_interrupted_migration(&r, id);
                    if let Some(t) = inner.tasks().finish(id, result) {
                        inner
                            .observer()
                            .task_event(hostbus_protocol::EventAction::Finished, t);
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(task = %id, error = %err, "cannot resume a migration's task");
            }
        }
    }

    fn finish_interrupted_migration(
        &self,
        r: &VmMigrateRequest,
        id: Uuid,
    ) -> Result<hostbus_protocol::types::Record, Error> {
        self.clean_interrupted_migration(r);
        let me = self.config().host_id.clone();
        let here = self
            .conn()
            .is_ok_and(|c| c.lookup_domain_by_uuid_string(&r.uuid.to_string()).is_ok());
        if here {
            let _ = self.refresh_vm_by_uuid(&r.uuid.to_string(), None);
            tracing::warn!(vm = %r.uuid, task = %id, "a migration interrupted by the agent's restart did not happen: the vm stays here");
            return Err(Error::new(
                ErrorCode::Cancelled,
                [("task", id.to_string())],
                format!(
                    "the agent restarted during the migration of vm {} to {}; libvirt ended it with the vm on {me}",
                    r.uuid, r.destination
                ),
            ));
        }
        let _ = self.refresh_vm_by_uuid(&r.uuid.to_string(), None);
        match self.migrated_after_all(r) {
            Some(m) => Ok(hostbus_protocol::types::Record::Migration(Box::new(m))),
            None => Err(Error::new(
                ErrorCode::VmNotFound,
                [("vm", r.uuid.to_string())],
                format!(
                    "vm {} is neither here ({me}) nor on {} after an interrupted migration",
                    r.uuid, r.destination
                ),
            )),
        }
    }
}
