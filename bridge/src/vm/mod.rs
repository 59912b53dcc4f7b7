//! VMs: records and the XenAPI-style power state machine. The operations
//! live in the submodules, by concern: power (lifecycle verbs), define
//! (define/undefine and disk resolution), devices (memory, vCPUs, disks,
//! NICs), stats, snapshots, and recover (re-runs of interrupted commands).

mod clone;
mod define;
mod devices;
mod migrate;
mod power;
mod snapshots;
mod stats;

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{DiskFormat, ObjectClass, PowerState, VmOperation, VmRecord};
use hostbus_protocol::{Error, ErrorCode, EventAction};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::storage_vol::StorageVol;

pub(crate) use clone::require_not_template;

use crate::errors::Subject;
use crate::inner::{read_all, Inner};
use crate::xml::{self};

/// What an operation on one VM answers: its record afterwards.
pub(crate) type VmResult = Result<VmRecord, Error>;

/// The power states in which `op` is allowed (XenAPI's lifecycle:
/// halted ⇄ running ⇄ paused, running/paused → suspended → running).
pub fn allowed_states(op: VmOperation) -> &'static [PowerState] {
    use PowerState::*;
    use VmOperation as Op;
    match op {
        Op::Start => &[Halted],
        Op::Shutdown => &[Running],
        Op::Destroy => &[Running, Paused, Suspended, Crashed],
        Op::Reboot => &[Running],
        Op::Reset => &[Running, Paused, Crashed],
        Op::Pause => &[Running],
        Op::Resume => &[Paused, Suspended],
        Op::Suspend => &[Running, Paused],
        Op::Undefine => &[Halted],
        Op::SetMemory | Op::SetVcpus => &[Halted, Running, Paused],
        Op::AttachDisk | Op::DetachDisk | Op::AttachNic | Op::DetachNic => {
            &[Halted, Running, Paused]
        }
        Op::SnapshotCreate => &[Halted, Running, Paused],
        Op::SnapshotRevert => &[Halted, Running, Paused, Crashed],
        Op::SnapshotDelete => &[Halted, Running, Paused, Suspended, Crashed],
        Op::Clone | Op::SetTemplate => &[Halted],
        Op::Migrate => &[Halted, Running, Paused],
        Op::Unknown => &[],
    }
}

/// The operations a VM in `state` allows.
pub fn allowed_operations(state: PowerState) -> Vec<VmOperation> {
    VmOperation::ALL
        .iter()
        .copied()
        .filter(|op| allowed_states(*op).contains(&state))
        .collect()
}

/// `VM_BAD_POWER_STATE` unless `vm` is in a state that allows `op`.
pub(crate) fn require(vm: &VmRecord, op: VmOperation) -> Result<(), Error> {
    let allowed = allowed_states(op);
    if allowed.contains(&vm.power_state) {
        return Ok(());
    }
    let list: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
    Err(Error::new(
        ErrorCode::VmBadPowerState,
        [
            ("vm", vm.uuid.to_string()),
            ("operation", op.as_str().to_owned()),
            ("current", vm.power_state.as_str().to_owned()),
            ("allowed", list.join(",")),
        ],
        format!(
            "vm {} is {}; {} needs it {}",
            vm.name,
            vm.power_state,
            op,
            list.join(" or ")
        ),
    ))
}

/// A MAC address in QEMU's locally administered range.
/// The MAC a NIC attached by command `id` gets when its spec names none:
/// the same for every run of the command, so a re-run after a crash finds
/// the NIC the first run attached instead of adding a second one.
pub(crate) fn mac_of(id: Uuid) -> String {
    let b = id.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[13], b[14], b[15])
}

pub(crate) fn random_mac() -> String {
    let b = Uuid::new_v4();
    let b = b.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// The name of the volume `vm.define` creates for a `new_volume` disk with
/// the spec's `format` (absent: qcow2).
pub(crate) fn new_volume_name(vm: &str, target: &str, format: Option<DiskFormat>) -> String {
    let ext = if format.unwrap_or(DiskFormat::Qcow2) == DiskFormat::Qcow2 {
        "qcow2"
    } else {
        "img"
    };
    format!("{vm}-{target}.{ext}")
}

impl Inner {
    pub(crate) fn power_state(&self, dom: &Domain) -> Result<PowerState, Error> {
        let id = dom.get_uuid_string_lossy();
        let (state, _) = self.lv(&Subject::vm(&id, "get"), dom.state())?;
        Ok(match state {
            Enum::Known(DomainState::Running | DomainState::Blocked | DomainState::Shutdown) => {
                PowerState::Running
            }
            Enum::Known(DomainState::Paused | DomainState::PMSuspended) => PowerState::Paused,
            Enum::Known(DomainState::Crashed) => PowerState::Crashed,
            Enum::Known(DomainState::Shutoff | DomainState::NoState) => {
                if dom.has_managed_save(0).unwrap_or(false) {
                    PowerState::Suspended
                } else {
                    PowerState::Halted
                }
            }
            Enum::Unknown(_) => PowerState::Unknown,
        })
    }

    /// Reads a VM's record from libvirt, without observing it.
    pub(crate) fn vm_raw(&self, dom: &Domain) -> Result<RawVm, Error> {
        let ticket = self.observer().ticket();
        let id = dom.get_uuid_string_lossy();
        let subject = Subject::vm(&id, "get");
        let mut facts = xml::parse_domain(&self.lv(&subject, dom.xml_desc(0))?)?;
        // A volume disk names its pool and volume; its path comes from the pool.
        for d in &mut facts.disks {
            if let (None, Some(v)) = (&d.source_path, &d.volume) {
                d.source_path = self.volume_path(&v.pool, &v.volume);
            }
        }
        let power_state = self.power_state(dom)?;
        let current_snapshot = dom.current_snapshot(0).ok().and_then(|s| s.name().ok());
        let rec = VmRecord {
            uuid: facts.uuid,
            name: facts.name,
            description: facts.description,
            power_state,
            memory_kib: facts.memory_kib,
            max_memory_kib: facts.max_memory_kib,
            vcpus: facts.vcpus,
            max_vcpus: facts.max_vcpus,
            disks: facts.disks,
            nics: facts.nics,
            autostart: dom.autostart().unwrap_or(false),
            persistent: dom.is_persistent().unwrap_or(true),
            has_saved_state: power_state == PowerState::Suspended,
            current_snapshot,
            generation: 0,
            // A template is never started (`vm.start` refuses it).
            allowed_operations: allowed_operations(power_state)
                .into_iter()
                .filter(|op| !(facts.template && *op == VmOperation::Start))
                .collect(),
            current_operations: self.current_ops(facts.uuid),
            boot: facts.boot,
            cpu_mode: facts.cpu_mode,
            domain_type: facts.domain_type,
            console: facts.console,
            template: facts.template,
        };
        Ok(RawVm {
            record: rec,
            nic_devs: facts.nic_devs,
            ticket,
        })
    }

    /// Observes a VM record as read: stamps its generation, emits an event
    /// if it changed (a read overtaken by a newer one gives the newer record).
    pub(crate) fn observe_vm(&self, raw: RawVm, hint: Option<EventAction>) -> VmRecord {
        let id = raw.record.uuid.to_string();
        self.observed_read(&id, raw.record, hint, raw.ticket)
    }

    pub(crate) fn vm_record(&self, dom: &Domain) -> Result<VmRecord, Error> {
        Ok(self.observe_vm(self.vm_raw(dom)?, None))
    }

    pub(crate) fn lookup_vm(&self, conn: &Connect, uuid: Uuid) -> Result<Domain, Error> {
        self.lv(
            &Subject::vm(uuid, "lookup"),
            conn.lookup_domain_by_uuid_string(&uuid.to_string()),
        )
    }

    /// Called after a libvirt event or when a VM may be gone.
    pub(crate) fn refresh_vm_by_uuid(
        &self,
        uuid: &str,
        hint: Option<EventAction>,
    ) -> Result<(), Error> {
        let conn = self.conn()?;
        match conn.lookup_domain_by_uuid_string(uuid) {
            Ok(dom) => {
                let raw = self.vm_raw(&dom)?;
                self.observe_vm(raw, hint);
            }
            Err(_) => {
                self.vm_gone(uuid);
            }
        }
        Ok(())
    }

    pub(crate) fn vm_gone(&self, uuid: &str) {
        for snap in self.observer().existing(ObjectClass::Snapshot) {
            if snap.starts_with(uuid) {
                self.gone(ObjectClass::Snapshot, &snap);
            }
        }
        self.gone(ObjectClass::Vm, uuid);
    }

    pub(crate) fn all_vms(&self, conn: &Connect) -> Result<Vec<VmRecord>, Error> {
        let doms = self.lv(&Subject::Host, conn.list_all_domains(0));
        // A VM that vanished between listing and reading is simply gone.
        let mut out = read_all(doms, ErrorCode::VmNotFound, |d| self.vm_record(&d))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) fn vm_list(&self, r: VmListRequest) -> Result<VmListResponse, Error> {
        let conn = self.conn()?;
        let mut vms = self.all_vms(&conn)?;
        if let Some(ps) = r.power_state {
            vms.retain(|v| v.power_state == ps);
        }
        Ok(VmListResponse { vms })
    }

    pub(crate) fn vm_get(&self, uuid: Uuid) -> Result<VmRecord, Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, uuid)?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_get_by_name(&self, name: &str) -> Result<VmRecord, Error> {
        let conn = self.conn()?;
        let dom = self.lv(
            &Subject::vm(name, "lookup"),
            conn.lookup_domain_by_name(name),
        )?;
        self.vm_record(&dom)
    }
}

/// Small conveniences over virt's getters.
pub(crate) trait DomainExt {
    fn get_uuid_string_lossy(&self) -> String;
}

impl DomainExt for Domain {
    fn get_uuid_string_lossy(&self) -> String {
        self.uuid_string().unwrap_or_default()
    }
}

pub(crate) trait VolExt {
    fn get_pool_name_lossy(&self) -> Result<String, virt::error::Error>;
}

impl VolExt for StorageVol {
    fn get_pool_name_lossy(&self) -> Result<String, virt::error::Error> {
        self.lookup_storage_pool()?.name()
    }
}

/// A VM's record as read from libvirt, not yet observed.
pub(crate) struct RawVm {
    /// The record (generation 0).
    pub(crate) record: VmRecord,
    /// The libvirt interface device of each NIC, in order.
    pub(crate) nic_devs: Vec<Option<String>>,
    /// When the read started ([`Observer::ticket`](crate::observe::Observer::ticket)).
    pub(crate) ticket: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_states_and_running_vms_can_pause() {
        for op in VmOperation::ALL {
            assert!(!allowed_states(*op).is_empty(), "{op}");
        }
        assert!(allowed_operations(PowerState::Running).contains(&VmOperation::Pause));
        assert!(!allowed_operations(PowerState::Halted).contains(&VmOperation::Pause));
    }
}
