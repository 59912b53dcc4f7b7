//! Re-runs of interrupted commands. A changing command that was running
//! when its agent died is run again; before that, what a half-done run
//! left behind is cleaned up ([`Inner::clean_interrupted`]), and after it,
//! a failure that only says the first run already did the work is turned
//! into that work's answer ([`Inner::recover`]).

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{DiskSource, PowerState, VmRecord};
use hostbus_protocol::{AnyRequest, AnyResponse, Error, ErrorCode};
use uuid::Uuid;

use crate::inner::Inner;
use crate::tasks::Progress;
use crate::vm::new_volume_name;

/// A power operation whose effect stands once its VM is in one of these
/// states, and its response built from the VM's record.
type PowerOutcome = (Uuid, &'static [PowerState], fn(VmRecord) -> AnyResponse);

impl Inner {
    /// An interrupted `vm.define` may have left the volumes it created
    /// without the VM. If the VM does not exist, they are removed so the
    /// re-run starts clean; if it does, the re-run reconciles to it. Other
    /// commands leave nothing to clean.
    pub(crate) fn clean_interrupted(&self, request: &AnyRequest) {
        let AnyRequest::VmDefine(r) = request else {
            return;
        };
        let spec = &r.spec;
        if self.vm_get_by_name(&spec.name).is_ok() {
            return;
        }
        for d in &spec.disks {
            let DiskSource::NewVolume { pool, .. } = &d.source else {
                continue;
            };
            let name = new_volume_name(&spec.name, &d.target, d.format);
            let delete = AnyRequest::VolumeDelete(VolumeKey {
                pool: pool.clone(),
                name: name.clone(),
            });
            // Through `execute`, so the volume's lock is taken as for any delete.
            let progress = Progress::untracked(self.config.step_pause);
            let result = Planned::new(delete)
                .and_then(|delete| self.execute(delete, &progress, Uuid::new_v4(), None));
            match result {
                Ok(_) => {
                    tracing::info!(volume = %name, "removed a volume left by an interrupted vm.define")
                }
                Err(e) if e.code == ErrorCode::VolumeNotFound => {}
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "cannot remove a volume left by an interrupted vm.define")
                }
            }
        }
    }

    /// After a crash, a re-run may fail only because the first run already
    /// did the work (the VM is already running, the volume already
    /// exists). Then the answer is the object's current state; `None` when
    /// `err` is a real failure.
    pub(crate) fn recover(&self, request: &AnyRequest, err: &Error) -> Option<AnyResponse> {
        use AnyRequest as R;
        use PowerState::*;
        // A power operation whose target state already stands: answer with the VM.
        let power: Option<PowerOutcome> = match request {
            R::VmStart(r) => Some((r.uuid, &[Running, Paused], AnyResponse::VmStart)),
            R::VmResume(r) => Some((r.uuid, &[Running], AnyResponse::VmResume)),
            R::VmPause(r) => Some((r.uuid, &[Paused], AnyResponse::VmPause)),
            R::VmSuspend(r) => Some((r.uuid, &[Suspended], AnyResponse::VmSuspend)),
            R::VmShutdown(r) => Some((r.uuid, &[Halted], AnyResponse::VmShutdown)),
            R::VmDestroy(r) => Some((r.uuid, &[Halted], AnyResponse::VmDestroy)),
            _ => None,
        };
        if let Some((uuid, done, wrap)) = power {
            let current = err
                .param("current")
                .and_then(|c| PowerState::ALL.iter().find(|s| s.as_str() == c));
            if err.code != ErrorCode::VmBadPowerState || !current.is_some_and(|c| done.contains(c))
            {
                return None;
            }
            return self.vm_get(uuid).ok().map(wrap);
        }
        match (request, err.code) {
            (R::VmDefine(r), ErrorCode::AlreadyExists) => self
                .vm_get_by_name(&r.spec.name)
                .ok()
                .map(AnyResponse::VmDefine),
            (R::VolumeCreate(r), ErrorCode::AlreadyExists) => self
                .volume_get(&r.pool, &r.spec.name)
                .ok()
                .map(AnyResponse::VolumeCreate),
            (R::VmUndefine(_), ErrorCode::VmNotFound) => Some(AnyResponse::VmUndefine(Empty {})),
            (R::VolumeDelete(_), ErrorCode::VolumeNotFound) => {
                Some(AnyResponse::VolumeDelete(Empty {}))
            }
            (R::SnapshotDelete(_), ErrorCode::SnapshotNotFound) => {
                Some(AnyResponse::SnapshotDelete(Empty {}))
            }
            (R::PoolUndefine(_), ErrorCode::PoolNotFound) => {
                Some(AnyResponse::PoolUndefine(Empty {}))
            }
            (R::NetworkUndefine(_), ErrorCode::NetworkNotFound) => {
                Some(AnyResponse::NetworkUndefine(Empty {}))
            }
            _ => None,
        }
    }
}
