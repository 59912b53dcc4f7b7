//! Re-runs of interrupted commands. A changing command that was running
//! when its agent died is run again with the same command id. What that
//! re-run does is a fact of each command, stated once in [`recovery`], a
//! match over every command with no catch-all arm: a new command does not
//! compile until someone says what its re-run does.
//!
//! * [`Recovery::Rerun`]: it runs again as if new; a first run leaves
//!   nothing half-made and a second one does what the first did (a set to
//!   a value, a reboot).
//! * [`Recovery::FromState`]: it runs again, and a failure that only says
//!   the first run already took effect (the VM is already running, the
//!   volume already exists, is already gone) is answered with the object's
//!   state.
//! * [`Recovery::CleanThen`]: what a half-done first run left is removed
//!   first ([`Inner::clean_interrupted`]), then as `FromState`.
//! * [`Recovery::CleanThenRerun`]: what a half-done first run left is
//!   removed, then it runs again as new.
//! * [`Recovery::NotJournaled`]: reads, which are never journaled and so
//!   never found interrupted.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{DiskSource, PowerState, VmRecord};
use hostbus_protocol::{AnyRequest, AnyResponse, Error, ErrorCode};
use uuid::Uuid;

use crate::inner::Inner;
use crate::tasks::Progress;
use crate::vm::new_volume_name;

/// What a re-run of an interrupted command does.
#[derive(Debug)]
pub(crate) enum Recovery<'a> {
    /// A read: never journaled, never re-run as interrupted.
    NotJournaled,
    /// Runs again as if new.
    Rerun,
    /// Runs again; a failure that says the first run took effect is
    /// answered from the object's state.
    FromState(Done<'a>),
    /// Removes what a half-done first run left, then as `FromState`.
    CleanThen(Clean<'a>, Done<'a>),
    /// Removes what a half-done first run left, then runs again as new.
    CleanThenRerun(Clean<'a>),
}

/// How a re-run's failure shows that the first run took effect, and the
/// answer it then gets.
#[derive(Debug)]
pub(crate) enum Done<'a> {
    /// A power operation: its VM is in one of these states
    /// (`VM_BAD_POWER_STATE` naming one of them as current).
    Power(Uuid, &'static [PowerState], fn(VmRecord) -> AnyResponse),
    /// The object it creates exists (`ALREADY_EXISTS`); the answer is it.
    Created(Created<'a>),
    /// The object it removes is gone (this not-found code); the answer is
    /// empty.
    Removed(ErrorCode, fn(Empty) -> AnyResponse),
    /// A device it attaches is there (`INVALID_ARGUMENT` on this field:
    /// the target or MAC is already used); the answer is the VM.
    Attached(Uuid, &'static str, fn(VmRecord) -> AnyResponse),
    /// A device it detaches is gone (`DEVICE_NOT_FOUND`); the answer is the VM.
    Detached(Uuid, fn(VmRecord) -> AnyResponse),
    /// A pool or network it starts or stops is already in the state it
    /// leaves it in (`*_BAD_STATE`); the answer is its record.
    Switched(Switched<'a>),
    /// A migration whose VM is gone from here (`VM_NOT_FOUND`): the
    /// answer is where it runs, when the destination has it.
    Migrated(&'a VmMigrateRequest),
}

/// An object a create makes, by class.
#[derive(Debug)]
pub(crate) enum Created<'a> {
    Vm(&'a str, fn(VmRecord) -> AnyResponse),
    Volume(&'a str, &'a str, fn(VolumeRecordOf) -> AnyResponse),
    Snapshot(Uuid, &'a str),
    Pool(&'a str),
    Network(&'a str),
}

/// A pool or network switched on or off.
#[derive(Debug)]
pub(crate) enum Switched<'a> {
    Pool(&'a str, fn(PoolRecordOf) -> AnyResponse),
    Network(&'a str, fn(NetworkRecordOf) -> AnyResponse),
}

type VolumeRecordOf = hostbus_protocol::types::VolumeRecord;
type PoolRecordOf = hostbus_protocol::types::PoolRecord;
type NetworkRecordOf = hostbus_protocol::types::NetworkRecord;

/// What became of a volume an interrupted command left.
#[derive(Debug)]
pub(crate) enum LeftVolume {
    /// It was there and is removed.
    Removed,
    /// It was not there.
    Absent,
    /// It is there and could not be removed (in use, say): a warning.
    Kept(Error),
}

/// What a half-done first run may have left.
#[derive(Debug)]
pub(crate) enum Clean<'a> {
    /// `vm.define`: the volumes it creates for new disks, when the VM
    /// itself was not defined.
    DefinedVolumes(&'a VmDefineRequest),
    /// `vm.clone`: the volumes it creates for the clone's disks, when the
    /// clone itself was not defined.
    ClonedVolumes(&'a VmCloneRequest),
    /// `vm.migrate`: a prepare on the destination, when the VM is still here.
    Migration(&'a VmMigrateRequest),
    /// `vm.migrate_prepare`: the volumes it made, when the VM did not arrive.
    PreparedVolumes(&'a VmMigratePrepareRequest),
}

/// What a re-run of `request` does: one arm per command, no catch-all.
pub(crate) fn recovery(request: &AnyRequest) -> Recovery<'_> {
    use AnyRequest as R;
    use AnyResponse as A;
    use PowerState::*;
    use Recovery::*;
    match request {
        R::HostPing(_)
        | R::HostInfo(_)
        | R::HostCapabilities(_)
        | R::HostStatsGet(_)
        | R::HostSnapshot(_)
        | R::VmList(_)
        | R::VmGet(_)
        | R::VmGetByName(_)
        | R::VmStatsGet(_)
        | R::SnapshotList(_)
        | R::PoolList(_)
        | R::PoolGet(_)
        | R::VolumeList(_)
        | R::VolumeGet(_)
        | R::NetworkList(_)
        | R::NetworkGet(_)
        | R::TaskGet(_)
        | R::TaskList(_) => NotJournaled,
        R::VmDefine(r) => CleanThen(
            Clean::DefinedVolumes(r),
            Done::Created(Created::Vm(&r.spec.name, A::VmDefine)),
        ),
        // Finished, not only cleaned: the definition is the clone's last
        // step and is made at once, so a clone found defined is whole and
        // is the answer; volumes without it are removed and the re-run
        // makes the clone again (with the same uuid and MACs, derived from
        // the command id), which is what the caller asked for.
        R::VmClone(r) => CleanThen(
            Clean::ClonedVolumes(r),
            Done::Created(Created::Vm(&r.name, A::VmClone)),
        ),
        // Marking again what is marked sets the same element.
        R::VmSetTemplate(_) => Rerun,
        R::VmUndefine(_) => FromState(Done::Removed(ErrorCode::VmNotFound, A::VmUndefine)),
        R::VmStart(r) => FromState(Done::Power(r.uuid, &[Running, Paused], A::VmStart)),
        R::VmShutdown(r) => FromState(Done::Power(r.uuid, &[Halted], A::VmShutdown)),
        R::VmDestroy(r) => FromState(Done::Power(r.uuid, &[Halted], A::VmDestroy)),
        R::VmPause(r) => FromState(Done::Power(r.uuid, &[Paused], A::VmPause)),
        R::VmResume(r) => FromState(Done::Power(r.uuid, &[Running], A::VmResume)),
        R::VmSuspend(r) => FromState(Done::Power(r.uuid, &[Suspended], A::VmSuspend)),
        // A second reboot or reset of a running guest, a second set to the
        // same value: what the first did, again.
        R::VmReboot(_) | R::VmReset(_) | R::VmSetMemory(_) | R::VmSetVcpus(_) => Rerun,
        R::VmAttachDisk(r) => FromState(Done::Attached(r.uuid, "disk.target", A::VmAttachDisk)),
        R::VmDetachDisk(r) => FromState(Done::Detached(r.uuid, A::VmDetachDisk)),
        // A NIC without a MAC gets one derived from the command id, so the
        // re-run names the NIC the first run attached.
        R::VmAttachNic(r) => FromState(Done::Attached(r.uuid, "nic.mac", A::VmAttachNic)),
        R::VmDetachNic(r) => FromState(Done::Detached(r.uuid, A::VmDetachNic)),
        R::SnapshotCreate(r) => FromState(Done::Created(Created::Snapshot(r.vm, &r.name))),
        // Reverting again to the same snapshot leaves the VM as the first did.
        R::SnapshotRevert(_) => Rerun,
        R::SnapshotDelete(_) => FromState(Done::Removed(
            ErrorCode::SnapshotNotFound,
            A::SnapshotDelete,
        )),
        R::PoolDefine(r) => FromState(Done::Created(Created::Pool(&r.spec.name))),
        R::PoolStart(r) => FromState(Done::Switched(Switched::Pool(&r.name, A::PoolStart))),
        R::PoolStop(r) => FromState(Done::Switched(Switched::Pool(&r.name, A::PoolStop))),
        R::PoolRefresh(_) => Rerun,
        R::PoolUndefine(_) => FromState(Done::Removed(ErrorCode::PoolNotFound, A::PoolUndefine)),
        R::VolumeCreate(r) => FromState(Done::Created(Created::Volume(
            &r.pool,
            &r.spec.name,
            A::VolumeCreate,
        ))),
        R::VolumeDelete(_) => FromState(Done::Removed(ErrorCode::VolumeNotFound, A::VolumeDelete)),
        // Growing to a size the volume already has is allowed.
        R::VolumeResize(_) => Rerun,
        // libvirt makes the copy in one call, which goes on in libvirtd if
        // the agent dies: the clone found under the new name is that copy.
        R::VolumeClone(r) => FromState(Done::Created(Created::Volume(
            &r.pool,
            &r.new_name,
            A::VolumeClone,
        ))),
        R::NetworkDefine(r) => FromState(Done::Created(Created::Network(&r.spec.name))),
        R::NetworkStart(r) => {
            FromState(Done::Switched(Switched::Network(&r.name, A::NetworkStart)))
        }
        R::NetworkStop(r) => FromState(Done::Switched(Switched::Network(&r.name, A::NetworkStop))),
        R::NetworkUndefine(_) => FromState(Done::Removed(
            ErrorCode::NetworkNotFound,
            A::NetworkUndefine,
        )),
        // Tasks do not outlive their agent: the re-run finds none to cancel.
        R::TaskCancel(_) => Rerun,
        // Setting the placement again sets the same.
        R::HostDisable(_) | R::HostEnable(_) => Rerun,
        // libvirt runs the migration peer to peer: it goes on, or is
        // undone, without the agent. The clean-up waits for it to end;
        // a VM still here has its destination's prepare undone and the
        // re-run migrates it; a VM gone (`VM_NOT_FOUND`) is answered with
        // where it runs, from the destination.
        R::VmMigrate(r) => CleanThen(Clean::Migration(r), Done::Migrated(r)),
        // A prepare whose volumes are left has them removed (the VM did
        // not arrive) and runs again; an abort is as good twice.
        R::VmMigratePrepare(r) => CleanThenRerun(Clean::PreparedVolumes(r)),
        R::VmMigrateAbort(_) => Rerun,
    }
}

impl Inner {
    /// Removes what a half-done first run of `request` left, where its
    /// [`recovery`] says it may have left something.
    pub(crate) fn clean_interrupted(&self, request: &AnyRequest) {
        let clean = match recovery(request) {
            Recovery::CleanThen(clean, _) | Recovery::CleanThenRerun(clean) => clean,
            Recovery::NotJournaled | Recovery::Rerun | Recovery::FromState(_) => return,
        };
        match clean {
            Clean::DefinedVolumes(r) => self.clean_defined_volumes(r),
            Clean::ClonedVolumes(r) => self.clean_cloned_volumes(r),
            Clean::Migration(r) => self.clean_interrupted_migration(r),
            Clean::PreparedVolumes(r) => self.clean_prepared_volumes(r),
        }
    }

    /// An interrupted `vm.define` may have left the volumes it created
    /// without the VM. If the VM does not exist, they are removed so the
    /// re-run starts clean; if it does, the re-run reconciles to it.
    fn clean_defined_volumes(&self, r: &VmDefineRequest) {
        let spec = &r.spec;
        if self.vm_get_by_name(&spec.name).is_ok() {
            return;
        }
        for d in &spec.disks {
            let DiskSource::NewVolume { pool, .. } = &d.source else {
                continue;
            };
            let name = new_volume_name(&spec.name, &d.target, d.format);
            self.remove_left_volume(pool, &name, "vm.define");
        }
    }

    /// An interrupted `vm.migrate_prepare` may have made volumes for a VM
    /// that never arrived: they go, so the re-run can make them.
    fn clean_prepared_volumes(&self, r: &VmMigratePrepareRequest) {
        if self.vm_get(r.uuid).is_ok() {
            return;
        }
        for d in &r.disks {
            self.remove_left_volume(&d.pool, &d.name, "vm.migrate_prepare");
        }
    }

    /// Removes volume `pool/name`, left by an interrupted `command`; one
    /// already gone is no news, one that cannot go is logged as a warning.
    pub(crate) fn remove_left_volume(&self, pool: &str, name: &str, command: &str) -> LeftVolume {
        let delete = AnyRequest::VolumeDelete(VolumeKey {
            pool: pool.to_owned(),
            name: name.to_owned(),
        });
        // Through `execute`, so the volume's lock is taken as for any delete.
        let progress = Progress::untracked(self.config().step_pause);
        let result = Planned::new(delete)
            .and_then(|delete| self.execute(delete, &progress, Uuid::new_v4(), None));
        let left = match result {
            Ok(_) => LeftVolume::Removed,
            Err(e) if e.code == ErrorCode::VolumeNotFound => LeftVolume::Absent,
            Err(e) => LeftVolume::Kept(e),
        };
        match &left {
            LeftVolume::Removed => {
                tracing::info!(volume = %name, command, "removed a volume left by an interrupted command");
            }
            LeftVolume::Absent => {}
            LeftVolume::Kept(e) => {
                tracing::warn!(volume = %name, command, error = %e, "cannot remove a volume left by an interrupted command");
            }
        }
        left
    }

    /// After a crash, a re-run may fail only because the first run already
    /// did the work (the VM is already running, the volume already
    /// exists). Then the answer is the object's current state; `None` when
    /// `err` is a real failure or the command's re-run is not answered
    /// from state.
    pub(crate) fn recover(&self, request: &AnyRequest, err: &Error) -> Option<AnyResponse> {
        let done = match recovery(request) {
            Recovery::FromState(done) | Recovery::CleanThen(_, done) => done,
            Recovery::NotJournaled | Recovery::Rerun | Recovery::CleanThenRerun(_) => return None,
        };
        match done {
            Done::Power(uuid, states, wrap) => {
                let current = err
                    .param("current")
                    .and_then(|c| PowerState::ALL.iter().find(|s| s.as_str() == c));
                (err.code == ErrorCode::VmBadPowerState
                    && current.is_some_and(|c| states.contains(c)))
                .then(|| self.vm_get(uuid).ok().map(wrap))
                .flatten()
            }
            Done::Created(created) => {
                if err.code != ErrorCode::AlreadyExists {
                    return None;
                }
                match created {
                    Created::Vm(name, wrap) => self.vm_get_by_name(name).ok().map(wrap),
                    Created::Volume(pool, name, wrap) => self.volume_get(pool, name).ok().map(wrap),
                    Created::Snapshot(vm, name) => self
                        .snapshot_list(vm)
                        .ok()?
                        .snapshots
                        .into_iter()
                        .find(|s| s.name == name)
                        .map(AnyResponse::SnapshotCreate),
                    Created::Pool(name) => self.pool_get(name).ok().map(AnyResponse::PoolDefine),
                    Created::Network(name) => {
                        self.network_get(name).ok().map(AnyResponse::NetworkDefine)
                    }
                }
            }
            Done::Removed(code, wrap) => (err.code == code).then(|| wrap(Empty {})),
            Done::Attached(uuid, field, wrap) => (err.code == ErrorCode::InvalidArgument
                && err.param("field") == Some(field))
            .then(|| self.vm_get(uuid).ok().map(wrap))
            .flatten(),
            Done::Detached(uuid, wrap) => (err.code == ErrorCode::DeviceNotFound)
                .then(|| self.vm_get(uuid).ok().map(wrap))
                .flatten(),
            Done::Migrated(r) => (err.code == ErrorCode::VmNotFound)
                .then(|| self.migrated_after_all(r))
                .flatten()
                .map(AnyResponse::VmMigrate),
            Done::Switched(Switched::Pool(name, wrap)) => (err.code == ErrorCode::PoolBadState)
                .then(|| self.pool_get(name).ok().map(wrap))
                .flatten(),
            Done::Switched(Switched::Network(name, wrap)) => (err.code
                == ErrorCode::NetworkBadState)
                .then(|| self.network_get(name).ok().map(wrap))
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostbus_protocol::COMMANDS;

    /// Reads are the commands the journal never sees, and only they.
    #[test]
    fn reads_and_only_reads_are_not_journaled() {
        let mut unsampled = Vec::new();
        for info in COMMANDS {
            let Some(request) = hostbus_testkit::minimal_request(info.name) else {
                unsampled.push(info.name);
                continue;
            };
            let not_journaled = matches!(recovery(&request), Recovery::NotJournaled);
            assert_eq!(not_journaled, !info.run.changes(), "{}", info.name);
        }
        assert!(unsampled.is_empty(), "no minimal request of {unsampled:?}");
    }

    /// A left volume is removed; one already gone is told apart from one
    /// that cannot go (which is warned about).
    #[test]
    fn a_left_volume_is_removed_absent_or_kept_with_its_reason() {
        // It takes one volume's lock twice: under a watchdog, so a broken
        // lock table fails it instead of hanging the bridge's unit tests.
        crate::locks::finishes_within(
            "the left-volume test",
            30,
            a_left_volume_is_removed_absent_or_kept,
        );
    }

    fn a_left_volume_is_removed_absent_or_kept() {
        let b = crate::Bridge::open(crate::Config {
            uri: format!("test://{}/testdata/node-h1.xml", env!("CARGO_MANIFEST_DIR")),
            host_id: "h1".into(),
            ..crate::Config::default()
        })
        .expect("open");
        let left = |name: &str| b.inner.remove_left_volume("default", name, "vm.define");
        let create = AnyRequest::VolumeCreate(VolumeCreateRequest {
            pool: "default".into(),
            spec: hostbus_protocol::types::VolumeSpec {
                name: "left.qcow2".into(),
                capacity_bytes: 1 << 20,
                allocation_bytes: 0,
                format: hostbus_protocol::types::DiskFormat::Qcow2,
            },
        });
        b.call(create, &crate::CallContext::new())
            .expect("a volume left behind");
        assert!(matches!(left("left.qcow2"), LeftVolume::Removed));
        assert!(matches!(left("left.qcow2"), LeftVolume::Absent));
        // web01's disk: in use by its VM, so it stays, with the reason.
        match left("web01.qcow2") {
            LeftVolume::Kept(e) => assert_eq!(e.code, ErrorCode::VolumeInUse, "{e:?}"),
            other => panic!("a volume in use was {other:?}"),
        }
    }
}
