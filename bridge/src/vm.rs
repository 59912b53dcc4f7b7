//! VMs: records, the XenAPI-style power state machine, and every VM operation.

use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    BlockStats, CpuMode, DiskDevice, DiskFormat, DiskRecord, DiskSource, DiskSpec, NetStats,
    NicRecord, NicSpec, ObjectClass, PowerState, Record, VmOperation, VmRecord, VmStats, VolumeRef,
};
use hostbus_protocol::{now_ms, Error, ErrorCode, EventAction, ValidationError};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::storage_vol::StorageVol;
use virt::sys;

use crate::errors::{is_unsupported_flags, Subject};
use crate::tasks::Progress;
use crate::xml::{self, DiskSrc, DiskXml, DomainXml, NicXml};
use crate::{DomainType, Inner};

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

fn live_flags(state: PowerState, persistent: bool) -> u32 {
    let live = matches!(state, PowerState::Running | PowerState::Paused);
    let mut flags = 0;
    if live {
        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
    }
    if persistent || !live {
        flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
    }
    flags
}

/// Applies a change with live and config flags together, or one after the
/// other on drivers that refuse the combination (the test driver does).
/// Only that refusal is retried: any other failure (a guest that does not
/// release a vCPU in time, say) is the answer, so a change is never tried
/// twice nor applied to one half only.
fn with_flags(
    flags: u32,
    apply: impl Fn(u32) -> Result<(), virt::error::Error>,
) -> Result<(), virt::error::Error> {
    let both = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG;
    match apply(flags) {
        Err(e) if flags & both == both && is_unsupported_flags(&e) => {
            apply(sys::VIR_DOMAIN_AFFECT_LIVE)?;
            apply(sys::VIR_DOMAIN_AFFECT_CONFIG)
        }
        other => other,
    }
}

fn random_mac() -> String {
    let b = Uuid::new_v4();
    let b = b.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// The name of the volume `vm.define` creates for a `new_volume` disk with
/// the spec's `format` (absent: qcow2).
pub fn new_volume_name(vm: &str, target: &str, format: Option<DiskFormat>) -> String {
    let ext = if format.unwrap_or(DiskFormat::Qcow2) == DiskFormat::Qcow2 {
        "qcow2"
    } else {
        "img"
    };
    format!("{vm}-{target}.{ext}")
}

impl Inner {
    fn power_state(&self, dom: &Domain) -> Result<PowerState, Error> {
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
    fn vm_raw(&self, dom: &Domain) -> Result<(VmRecord, Vec<Option<String>>), Error> {
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
            allowed_operations: allowed_operations(power_state),
            current_operations: self.current_ops(facts.uuid),
            boot: facts.boot,
            cpu_mode: facts.cpu_mode,
            domain_type: facts.domain_type,
            console: facts.console,
        };
        Ok((rec, facts.nic_devs))
    }

    /// Observes a VM record: stamps its generation, emits an event if it changed.
    pub(crate) fn observe_vm(&self, rec: VmRecord, hint: Option<EventAction>) -> VmRecord {
        let id = rec.uuid.to_string();
        match self.observer.observe(
            ObjectClass::Vm,
            &id,
            Some(Record::Vm(rec.clone())),
            hint,
            self.emitting(),
        ) {
            Some(Record::Vm(r)) => r,
            _ => rec,
        }
    }

    pub(crate) fn vm_record(&self, dom: &Domain) -> Result<VmRecord, Error> {
        Ok(self.observe_vm(self.vm_raw(dom)?.0, None))
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
                let rec = self.vm_raw(&dom)?.0;
                self.observe_vm(rec, hint);
            }
            Err(_) => {
                self.vm_gone(uuid);
            }
        }
        Ok(())
    }

    fn vm_gone(&self, uuid: &str) {
        let emit = self.emitting();
        for snap in self.observer.existing(ObjectClass::Snapshot) {
            if snap.starts_with(uuid) {
                self.observer
                    .observe(ObjectClass::Snapshot, &snap, None, None, emit);
            }
        }
        self.observer
            .observe(ObjectClass::Vm, uuid, None, None, emit);
    }

    pub(crate) fn all_vms(&self, conn: &Connect) -> Result<Vec<VmRecord>, Error> {
        let doms = self.lv(&Subject::Host, conn.list_all_domains(0))?;
        let mut out = Vec::with_capacity(doms.len());
        for d in doms {
            match self.vm_record(&d) {
                Ok(r) => out.push(r),
                // A VM that vanished between listing and reading is simply gone.
                Err(e) if e.code == ErrorCode::VmNotFound => {}
                Err(e) => return Err(e),
            }
        }
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

    /// Looks a VM up, checks `op` is allowed in its state, marks `op` current.
    fn prepare(&self, uuid: Uuid, op: VmOperation) -> Result<(Connect, Domain, VmRecord), Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, uuid)?;
        let rec = self.vm_record(&dom)?;
        require(&rec, op)?;
        Ok((conn, dom, rec))
    }

    /// Runs one libvirt action of `op` on a VM and returns the new record.
    fn simple_op(
        &self,
        uuid: Uuid,
        id: Uuid,
        op: VmOperation,
        hint: Option<EventAction>,
        action: impl FnOnce(&Domain, &VmRecord) -> Result<(), virt::error::Error>,
    ) -> Result<VmRecord, Error> {
        let (_conn, dom, rec) = self.prepare(uuid, op)?;
        let _op = self.begin_op(uuid, id, op);
        self.lv(&Subject::vm(uuid, op.as_str()), action(&dom, &rec))?;
        let (raw, _) = self.vm_raw(&dom)?;
        Ok(self.observe_vm(raw, hint))
    }

    pub(crate) fn vm_start(&self, r: VmStartRequest, id: Uuid) -> Result<VmRecord, Error> {
        let flags = if r.paused {
            sys::VIR_DOMAIN_START_PAUSED
        } else {
            0
        };
        self.simple_op(r.uuid, id, VmOperation::Start, None, |d, _| {
            match d.create_with_flags(flags) {
                // Drivers without the paused-start flag (the test driver):
                // start, then pause at once.
                Err(e) if r.paused && e.message().contains("unsupported flags") => {
                    d.create()?;
                    d.suspend()
                }
                other => other.map(|_| ()),
            }
        })
    }

    pub(crate) fn vm_destroy(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        self.simple_op(uuid, id, VmOperation::Destroy, None, |d, rec| {
            if rec.power_state == PowerState::Suspended {
                d.managed_save_remove(0)
            } else {
                d.destroy()
            }
        })
    }

    /// Asks the guest to reboot. On a real hypervisor whether it does is the
    /// guest's affair (QEMU passes the request on through ACPI): the
    /// `rebooted` event comes from libvirt's reboot callback when the guest
    /// actually resets, never from the request. The test driver reboots
    /// within the call and has no such callback, so there the call itself
    /// reports it.
    pub(crate) fn vm_reboot(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        let synchronous = self
            .conn()?
            .driver_type()
            .is_ok_and(|t| t.eq_ignore_ascii_case("test"));
        let hint = synchronous.then_some(EventAction::Rebooted);
        self.simple_op(uuid, id, VmOperation::Reboot, hint, |d, _| d.reboot(0))
    }

    pub(crate) fn vm_reset(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        self.simple_op(
            uuid,
            id,
            VmOperation::Reset,
            Some(EventAction::Rebooted),
            |d, _| d.reset(),
        )
    }

    pub(crate) fn vm_pause(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        self.simple_op(uuid, id, VmOperation::Pause, None, |d, _| d.suspend())
    }

    pub(crate) fn vm_resume(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        self.simple_op(uuid, id, VmOperation::Resume, None, |d, rec| {
            if rec.power_state == PowerState::Suspended {
                d.create().map(|_| ())
            } else {
                d.resume()
            }
        })
    }

    pub(crate) fn vm_suspend(&self, uuid: Uuid, id: Uuid) -> Result<VmRecord, Error> {
        self.simple_op(uuid, id, VmOperation::Suspend, None, |d, _| {
            d.managed_save(0)
        })
    }

    pub(crate) fn vm_shutdown(
        &self,
        r: VmShutdownRequest,
        progress: &Progress,
        id: Uuid,
    ) -> Result<VmRecord, Error> {
        let (_conn, dom, _) = self.prepare(r.uuid, VmOperation::Shutdown)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::Shutdown);
        let subject = Subject::vm(r.uuid, "shutdown");
        self.lv(&subject, dom.shutdown())?;
        let timeout = Duration::from_secs(u64::from(r.timeout_s));
        let started = Instant::now();
        loop {
            let (raw, _) = self.vm_raw(&dom)?;
            if raw.power_state == PowerState::Halted || r.timeout_s == 0 {
                return Ok(self.observe_vm(raw, None));
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                if r.force {
                    tracing::info!(vm = %r.uuid, timeout_s = r.timeout_s, "clean shutdown timed out; forcing off");
                    self.lv(&subject, dom.destroy())?;
                    return self.vm_record(&dom);
                }
                return Err(Error::new(
                    ErrorCode::Timeout,
                    [
                        ("operation", "vm.shutdown".to_owned()),
                        ("timeout_s", r.timeout_s.to_string()),
                    ],
                    format!("vm {} did not shut down within {} s", raw.name, r.timeout_s),
                ));
            }
            progress.fraction(elapsed.as_millis() as u64, timeout.as_millis() as u64);
            // The guest was asked already: a passed deadline no longer applies.
            progress.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn vm_set_memory(&self, r: VmSetMemoryRequest, id: Uuid) -> Result<VmRecord, Error> {
        let (_conn, dom, rec) = self.prepare(r.uuid, VmOperation::SetMemory)?;
        if r.memory_kib > rec.max_memory_kib {
            return Err(ValidationError::new(
                "memory_kib",
                format_args!("exceeds the VM's max_memory_kib {}", rec.max_memory_kib),
            )
            .into());
        }
        let _op = self.begin_op(r.uuid, id, VmOperation::SetMemory);
        let flags = live_flags(rec.power_state, rec.persistent);
        self.lv(
            &Subject::vm(r.uuid, "set_memory"),
            with_flags(flags, |f| dom.set_memory_flags(r.memory_kib, f)),
        )?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_set_vcpus(&self, r: VmSetVcpusRequest, id: Uuid) -> Result<VmRecord, Error> {
        let (_conn, dom, rec) = self.prepare(r.uuid, VmOperation::SetVcpus)?;
        if r.vcpus > rec.max_vcpus {
            return Err(ValidationError::new(
                "vcpus",
                format_args!("exceeds the VM's max_vcpus {}", rec.max_vcpus),
            )
            .into());
        }
        let _op = self.begin_op(r.uuid, id, VmOperation::SetVcpus);
        let flags = live_flags(rec.power_state, rec.persistent);
        self.lv(
            &Subject::vm(r.uuid, "set_vcpus"),
            with_flags(flags, |f| dom.set_vcpus_flags(r.vcpus, f)),
        )?;
        self.vm_record(&dom)
    }

    /// Resolves a disk spec to its source and its actual format, creating a
    /// new volume when asked (returned, for rollback). The format of an
    /// existing volume is the volume's: a spec that says otherwise is
    /// refused, since QEMU would either fail to start or show the guest the
    /// image's raw bytes. `field` names the spec in errors.
    fn resolve_disk(
        &self,
        conn: &Connect,
        vm_name: &str,
        d: &DiskSpec,
        field: &str,
    ) -> Result<(DiskSrc, DiskFormat, Option<StorageVol>), Error> {
        let existing = |pool: &str, volume: &str, vol: &StorageVol| -> Result<_, Error> {
            let subject = Subject::volume(pool, volume);
            let actual = xml::parse_volume_format(&self.lv(&subject, vol.xml_desc(0))?)?;
            if actual == DiskFormat::Unknown {
                return Err(ValidationError::new(
                    format!("{field}.source"),
                    format_args!("volume {pool}/{volume} has a format QEMU disks cannot use"),
                )
                .into());
            }
            if let Some(said) = d.format.filter(|f| *f != actual) {
                return Err(ValidationError::new(
                    format!("{field}.format"),
                    format_args!("is {said}, but volume {pool}/{volume} is {actual}"),
                )
                .into());
            }
            Ok((
                DiskSrc::Volume {
                    pool: pool.to_owned(),
                    volume: volume.to_owned(),
                },
                actual,
                None,
            ))
        };
        match &d.source {
            DiskSource::Path(p) => match conn.lookup_storage_vol_by_path(p) {
                // A path inside a pool is that pool's volume.
                Ok(vol) => {
                    let pool = vol.get_pool_name_lossy().unwrap_or_default();
                    let name = vol.name().unwrap_or_default();
                    existing(&pool, &name, &vol)
                }
                Err(_) => {
                    let format = d.format.ok_or_else(|| {
                        Error::from(ValidationError::new(
                            format!("{field}.format"),
                            "is required for a path outside every storage pool",
                        ))
                    })?;
                    Ok((DiskSrc::Path(p.clone()), format, None))
                }
            },
            DiskSource::Volume(v) => {
                let vol = self.lookup_volume(conn, &v.pool, &v.volume)?;
                existing(&v.pool, &v.volume, &vol)
            }
            DiskSource::NewVolume {
                pool,
                capacity_bytes,
            } => {
                let format = d.format.unwrap_or(DiskFormat::Qcow2);
                let name = new_volume_name(vm_name, &d.target, Some(format));
                let spec = hostbus_protocol::types::VolumeSpec {
                    name: name.clone(),
                    capacity_bytes: *capacity_bytes,
                    allocation_bytes: 0,
                    format,
                };
                let vol = self.create_volume_raw(conn, pool, &spec)?;
                Ok((
                    DiskSrc::Volume {
                        pool: pool.clone(),
                        volume: name,
                    },
                    format,
                    Some(vol),
                ))
            }
        }
    }

    /// The volumes `vm.undefine` removes with `remove_storage`: those of the
    /// VM's writable hard disks that no other VM uses. Read-only disks,
    /// CD-ROMs and shareable disks are shared by nature and stay.
    fn owned_volumes(
        &self,
        conn: &Connect,
        dom: &Domain,
        rec: &VmRecord,
    ) -> Result<Vec<StorageVol>, Error> {
        let subject = Subject::vm(rec.uuid, "undefine");
        let desc = self.lv(&subject, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE))?;
        let shareable = xml::parse_domain(&desc)?.shareable;
        let mut out = Vec::new();
        for d in &rec.disks {
            if d.read_only || d.device != DiskDevice::Disk || shareable.contains(&d.target) {
                tracing::info!(vm = %rec.name, disk = %d.target, "keeping the image of a read-only or shared disk");
                continue;
            }
            let vol = match (&d.volume, &d.source_path) {
                (Some(v), _) => conn
                    .lookup_storage_pool_by_name(&v.pool)
                    .and_then(|p| p.lookup_storage_vol_by_name(&v.volume)),
                (None, Some(p)) => conn.lookup_storage_vol_by_path(p),
                (None, None) => continue,
            };
            let Ok(vol) = vol else { continue };
            let pool = vol.get_pool_name_lossy().unwrap_or_default();
            let name = vol.name().unwrap_or_default();
            let path = vol.path().unwrap_or_default();
            let others = self
                .volume_users(conn, &pool, &name, &path)?
                .into_iter()
                .filter(|u| u.uuid != rec.uuid)
                .count();
            if others > 0 {
                tracing::info!(vm = %rec.name, volume = %name, others, "keeping a volume other vms use");
                continue;
            }
            out.push(vol);
        }
        Ok(out)
    }

    fn check_networks(&self, conn: &Connect, nics: &[NicSpec]) -> Result<(), Error> {
        for n in nics {
            if let Some(net) = &n.network {
                self.lookup_network(conn, net)?;
            }
        }
        Ok(())
    }

    fn rollback_volumes(&self, created: Vec<StorageVol>) {
        for v in created {
            let name = v.name().unwrap_or_default();
            if let Err(e) = v.delete(0) {
                tracing::warn!(volume = %name, error = %e, "cannot roll back a volume created for a failed operation");
            }
        }
    }

    pub(crate) fn vm_define(
        &self,
        r: VmDefineRequest,
        progress: &Progress,
    ) -> Result<VmRecord, Error> {
        let spec = r.spec;
        let conn = self.conn()?;
        if conn.lookup_domain_by_name(&spec.name).is_ok() {
            return Err(already_exists("vm", &spec.name));
        }
        let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
        if conn.lookup_domain_by_uuid_string(&uuid.to_string()).is_ok() {
            return Err(already_exists("vm", &uuid.to_string()));
        }
        let caps = self.caps_facts(&conn)?;
        let arch = spec.arch.clone().unwrap_or_else(|| {
            if caps.guest_domain_types.contains_key(&caps.arch) {
                caps.arch.clone()
            } else {
                caps.guest_domain_types
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_default()
            }
        });
        let types = caps.guest_domain_types.get(&arch).ok_or_else(|| {
            Error::from(ValidationError::new(
                "spec.arch",
                format_args!("this host runs no {arch} guests"),
            ))
        })?;
        let domain_type = match self.config.domain_type {
            DomainType::Auto if types.iter().any(|t| t == "kvm") => "kvm",
            DomainType::Auto => types.first().map_or("qemu", String::as_str),
            wanted => {
                let t = wanted.as_str();
                if !types.iter().any(|x| x == t) {
                    return Err(Error::new(
                        ErrorCode::OperationNotSupported,
                        [
                            ("operation", "vm.define".to_owned()),
                            ("reason", format!("domain type {t} for {arch}")),
                        ],
                        format!(
                            "this host runs no {t} guests for {arch} (it offers {}); see the agent's domain_type",
                            types.join(", ")
                        ),
                    ));
                }
                t
            }
        };
        // KVM guests see a model like the host's CPU; TCG offers QEMU's
        // `max` (its default, qemu64, is too old for current distributions);
        // other drivers get what they default to.
        let cpu_mode = spec.cpu_mode.or(match domain_type {
            "kvm" => Some(CpuMode::HostModel),
            "qemu" => Some(CpuMode::Maximum),
            _ => None,
        });
        self.check_networks(&conn, &spec.nics)?;

        let new_volumes = spec
            .disks
            .iter()
            .filter(|d| matches!(d.source, DiskSource::NewVolume { .. }))
            .count();
        let total = new_volumes + 1;
        let mut created = Vec::new();
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let field = format!("spec.disks[{i}]");
            let step = progress
                .step(created.len(), total)
                .and_then(|()| self.resolve_disk(&conn, &spec.name, d, &field));
            match step {
                Ok((source, format, vol)) => {
                    created.extend(vol);
                    disks.push(DiskXml {
                        target: &d.target,
                        source,
                        bus: d.bus,
                        format,
                        read_only: d.read_only,
                        device: d.device,
                    });
                }
                Err(e) => {
                    self.rollback_volumes(created);
                    return Err(e);
                }
            }
        }
        if let Err(e) = progress.step(created.len(), total) {
            self.rollback_volumes(created);
            return Err(e);
        }
        let nics = spec
            .nics
            .iter()
            .map(|n| NicXml {
                network: n.network.as_deref(),
                bridge: n.bridge.as_deref(),
                mac: n.mac.clone().unwrap_or_else(random_mac),
                model: n.model,
            })
            .collect();
        let xml = xml::domain_xml(&DomainXml {
            domain_type,
            name: &spec.name,
            uuid,
            description: &spec.description,
            memory_kib: spec.memory_kib,
            max_memory_kib: spec.max_memory_kib.unwrap_or(spec.memory_kib),
            vcpus: spec.vcpus,
            max_vcpus: spec.max_vcpus.unwrap_or(spec.vcpus),
            arch: &arch,
            boot: &spec.boot,
            cpu_mode,
            console_log: self
                .config
                .console_log_dir
                .as_ref()
                .map(|dir| format!("{}/{}-serial0.log", dir.trim_end_matches('/'), spec.name)),
            disks,
            nics,
        });
        let dom = match self.lv(
            &Subject::vm(&spec.name, "define"),
            conn.define_domain_xml(&xml),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.rollback_volumes(created);
                return Err(e);
            }
        };
        if spec.autostart {
            self.lv(
                &Subject::vm(uuid, "define"),
                dom.set_autostart(true).map(|_| ()),
            )?;
        }
        for v in &created {
            if let (Ok(pool), Ok(name)) = (v.get_pool_name_lossy(), v.name()) {
                let _ = self.volume_get(&pool, &name);
            }
        }
        tracing::info!(vm = %spec.name, %uuid, "defined vm");
        self.vm_record(&dom)
    }

    pub(crate) fn vm_undefine(
        &self,
        r: VmUndefineRequest,
        progress: &Progress,
        id: Uuid,
    ) -> Result<Empty, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::Undefine)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::Undefine);
        let volumes: Vec<StorageVol> = if r.remove_storage {
            self.owned_volumes(&conn, &dom, &rec)?
        } else {
            Vec::new()
        };
        let total = volumes.len() + 1;
        progress.step(0, total)?;
        let flags =
            sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        self.lv(&Subject::vm(r.uuid, "undefine"), dom.undefine_flags(flags))?;
        self.vm_gone(&r.uuid.to_string());
        // Past this point the VM is gone; storage removal runs to the end.
        for (i, v) in volumes.into_iter().enumerate() {
            let pool = v.get_pool_name_lossy().unwrap_or_default();
            let name = v.name().unwrap_or_default();
            progress.fraction((i + 1) as u64, total as u64);
            if let Err(e) = v.delete(0) {
                tracing::warn!(volume = %name, error = %e, "cannot delete a volume of an undefined vm");
            }
            self.volume_gone(&pool, &name);
        }
        tracing::info!(vm = %rec.name, uuid = %r.uuid, "undefined vm");
        Ok(Empty {})
    }

    /// Attaches or detaches a device. Drivers without hotplug (the test
    /// driver) still change a halted VM by redefining it with the device
    /// added or removed; a running VM on such a driver gets
    /// `OPERATION_NOT_SUPPORTED`.
    fn change_device(
        &self,
        conn: &Connect,
        dom: &Domain,
        rec: &VmRecord,
        op: &'static str,
        change: DeviceChange<'_>,
    ) -> Result<(), Error> {
        let subject = Subject::vm(rec.uuid, op);
        // A halted VM is changed through its definition, on every driver:
        // the device API with the CONFIG flag alone is refused by some (the
        // test driver answers "unsupported flags", as an invalid argument).
        if rec.power_state == PowerState::Halted && rec.persistent {
            let current = self.lv(&subject, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE))?;
            let changed = match change {
                DeviceChange::Attach(x) => xml::add_device(&current, x)?,
                DeviceChange::Detach(_, tag, matches) => {
                    xml::remove_device(&current, tag, matches)?
                        .ok_or_else(|| device_not_found(rec.uuid, tag))?
                }
            };
            return self
                .lv(&subject, conn.define_domain_xml(&changed))
                .map(|_| ());
        }
        let flags = live_flags(rec.power_state, rec.persistent);
        let result = match &change {
            DeviceChange::Attach(x) => dom.attach_device_flags(x, flags),
            DeviceChange::Detach(x, _, _) => dom.detach_device_flags(x, flags),
        };
        self.lv(&subject, result)?;
        // QEMU removes a device only once the guest releases it; libvirt
        // waits a few seconds for that and then answers success anyway. A
        // device still in the live definition was not removed.
        if let DeviceChange::Detach(_, tag, matches) = change {
            let live = self.lv(&subject, dom.xml_desc(0))?;
            if xml::remove_device(&live, tag, matches)?.is_some() {
                return Err(Error::new(
                    ErrorCode::DeviceDetachPending,
                    [
                        ("vm", rec.uuid.to_string()),
                        ("device", device_name(tag, &live, matches)),
                    ],
                    format!(
                        "vm {} has not released the {tag} yet; it goes when the guest lets it go",
                        rec.name
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn vm_attach_disk(
        &self,
        r: VmAttachDiskRequest,
        id: Uuid,
    ) -> Result<VmRecord, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::AttachDisk)?;
        if rec.disks.iter().any(|d| d.target == r.disk.target) {
            return Err(ValidationError::new(
                "disk.target",
                format_args!("{} is already used by this vm", r.disk.target),
            )
            .into());
        }
        let _op = self.begin_op(r.uuid, id, VmOperation::AttachDisk);
        let (source, format, created) = self.resolve_disk(&conn, &rec.name, &r.disk, "disk")?;
        let xml = xml::disk_xml(&DiskXml {
            target: &r.disk.target,
            source,
            bus: r.disk.bus,
            format,
            read_only: r.disk.read_only,
            device: r.disk.device,
        });
        if let Err(e) =
            self.change_device(&conn, &dom, &rec, "attach_disk", DeviceChange::Attach(&xml))
        {
            self.rollback_volumes(created.into_iter().collect());
            return Err(e);
        }
        self.vm_record(&dom)
    }

    pub(crate) fn vm_detach_disk(
        &self,
        r: VmDetachDiskRequest,
        id: Uuid,
    ) -> Result<VmRecord, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::DetachDisk)?;
        let disk: &DiskRecord = rec
            .disks
            .iter()
            .find(|d| d.target == r.target)
            .ok_or_else(|| device_not_found(r.uuid, &r.target))?;
        let _op = self.begin_op(r.uuid, id, VmOperation::DetachDisk);
        // libvirt finds the disk to detach by its target.
        let source = match &disk.volume {
            Some(VolumeRef { pool, volume }) => DiskSrc::Volume {
                pool: pool.clone(),
                volume: volume.clone(),
            },
            None => DiskSrc::Path(disk.source_path.clone().unwrap_or_default()),
        };
        let xml = xml::disk_xml(&DiskXml {
            target: &disk.target,
            source,
            bus: disk.bus,
            format: disk.format,
            read_only: disk.read_only,
            device: disk.device,
        });
        let target = r.target.clone();
        self.change_device(
            &conn,
            &dom,
            &rec,
            "detach_disk",
            DeviceChange::Detach(&xml, "disk", &move |n| xml::disk_has_target(n, &target)),
        )?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_attach_nic(&self, r: VmAttachNicRequest, id: Uuid) -> Result<VmRecord, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::AttachNic)?;
        self.check_networks(&conn, std::slice::from_ref(&r.nic))?;
        let mac = r.nic.mac.clone().unwrap_or_else(random_mac);
        if rec.nics.iter().any(|n| n.mac.eq_ignore_ascii_case(&mac)) {
            return Err(ValidationError::new(
                "nic.mac",
                format_args!("{mac} is already used by this vm"),
            )
            .into());
        }
        let _op = self.begin_op(r.uuid, id, VmOperation::AttachNic);
        let xml = xml::nic_xml(&NicXml {
            network: r.nic.network.as_deref(),
            bridge: r.nic.bridge.as_deref(),
            mac,
            model: r.nic.model,
        });
        self.change_device(&conn, &dom, &rec, "attach_nic", DeviceChange::Attach(&xml))?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_detach_nic(&self, r: VmDetachNicRequest, id: Uuid) -> Result<VmRecord, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::DetachNic)?;
        let nic: &NicRecord = rec
            .nics
            .iter()
            .find(|n| n.mac.eq_ignore_ascii_case(&r.mac))
            .ok_or_else(|| device_not_found(r.uuid, &r.mac))?;
        let _op = self.begin_op(r.uuid, id, VmOperation::DetachNic);
        let xml = xml::nic_xml(&NicXml {
            network: nic.network.as_deref(),
            bridge: nic.bridge.as_deref(),
            mac: nic.mac.clone(),
            model: nic.model,
        });
        let mac = r.mac.clone();
        self.change_device(
            &conn,
            &dom,
            &rec,
            "detach_nic",
            DeviceChange::Detach(&xml, "interface", &move |n| xml::nic_has_mac(n, &mac)),
        )?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_stats(&self, uuid: Uuid) -> Result<VmStats, Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, uuid)?;
        let (raw, nic_devs) = self.vm_raw(&dom)?;
        let rec = self.observe_vm(raw, None);
        let info = self.lv(&Subject::vm(uuid, "stats"), dom.info())?;
        let active = matches!(rec.power_state, PowerState::Running | PowerState::Paused);
        let mut block = Vec::new();
        let mut net = Vec::new();
        let mut memory_rss_kib = None;
        if active {
            for d in &rec.disks {
                if let Ok(s) = dom.block_stats(&d.target) {
                    block.push(BlockStats {
                        target: d.target.clone(),
                        read_reqs: s.rd_req.max(0) as u64,
                        read_bytes: s.rd_bytes.max(0) as u64,
                        write_reqs: s.wr_req.max(0) as u64,
                        write_bytes: s.wr_bytes.max(0) as u64,
                    });
                }
            }
            for (n, dev) in rec.nics.iter().zip(nic_devs) {
                let s = dev.as_deref().and_then(|d| dom.interface_stats(d).ok());
                net.push(NetStats {
                    mac: n.mac.clone(),
                    rx_bytes: s.as_ref().map_or(0, |s| s.rx_bytes.max(0) as u64),
                    rx_packets: s.as_ref().map_or(0, |s| s.rx_packets.max(0) as u64),
                    tx_bytes: s.as_ref().map_or(0, |s| s.tx_bytes.max(0) as u64),
                    tx_packets: s.as_ref().map_or(0, |s| s.tx_packets.max(0) as u64),
                    interface: dev,
                });
            }
            memory_rss_kib = dom.memory_stats(0).ok().and_then(|v| {
                v.into_iter()
                    .find(|m| m.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS)
                    .map(|m| m.val)
            });
        }
        Ok(VmStats {
            uuid,
            sampled_at: now_ms(),
            power_state: rec.power_state,
            cpu_time_ns: info.cpu_time,
            vcpus: rec.vcpus,
            memory_kib: rec.memory_kib,
            memory_rss_kib,
            block,
            net,
        })
    }
}

/// A device change for [`Inner::change_device`].
enum DeviceChange<'a> {
    /// Attach this device XML.
    Attach(&'a str),
    /// Detach this device XML; for redefinition, the tag and a matcher.
    Detach(
        &'a str,
        &'static str,
        &'a dyn Fn(roxmltree::Node<'_, '_>) -> bool,
    ),
}

/// The name hostbus gives a device found by `matches` (target or MAC).
fn device_name(
    tag: &str,
    domain: &str,
    matches: &dyn Fn(roxmltree::Node<'_, '_>) -> bool,
) -> String {
    roxmltree::Document::parse(domain)
        .ok()
        .and_then(|doc| {
            let dev = doc
                .root_element()
                .children()
                .find(|c| c.has_tag_name("devices"))?
                .children()
                .find(|c| c.has_tag_name(tag) && matches(*c))?;
            let (child, attr) = if tag == "disk" {
                ("target", "dev")
            } else {
                ("mac", "address")
            };
            dev.children()
                .find(|c| c.has_tag_name(child))?
                .attribute(attr)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| tag.to_owned())
}

pub(crate) fn already_exists(class: &str, name: &str) -> Error {
    Error::new(
        ErrorCode::AlreadyExists,
        [("class", class.to_owned()), ("name", name.to_owned())],
        format!("{class} {name} already exists"),
    )
}

fn device_not_found(vm: Uuid, device: &str) -> Error {
    Error::new(
        ErrorCode::DeviceNotFound,
        [("vm", vm.to_string()), ("device", device.to_owned())],
        format!("vm {vm} has no device {device}"),
    )
}

/// Small conveniences over virt's getters.
trait DomainExt {
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
