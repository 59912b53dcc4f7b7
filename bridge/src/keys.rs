//! Which object a request works on: its lock key and, for task records,
//! its object reference. Moved verbatim from lib.rs, so that both the
//! public API (lib.rs) and execution (inner.rs) use it without an import
//! cycle.

use hostbus_protocol::types::{ObjectClass, ObjectRef};
use hostbus_protocol::AnyRequest;

/// The lock key of the object a request changes; `None` for reads.
pub(crate) fn lock_key(req: &AnyRequest) -> Option<String> {
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
pub(crate) fn object_of(req: &AnyRequest) -> Option<ObjectRef> {
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
