//! Changes to a VM's devices and sizing: memory, vCPUs, disks, NICs.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    DiskRecord, NicRecord, PowerState, VmOperation, VmRecord, VolumeRef,
};
use hostbus_protocol::{Error, ErrorCode, ValidationError};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{mac_of, VmResult};
use crate::errors::{is_unsupported_flags, Subject};
use crate::inner::Inner;
use crate::xml::{self, Device, DiskSrc, DiskXml, NicXml};

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

impl Inner {
    pub(crate) fn vm_set_memory(&self, r: VmSetMemoryRequest, id: Uuid) -> VmResult {
        let size = Size(VmOperation::SetMemory, "memory_kib", |v| v.max_memory_kib);
        let set = |d: &Domain, f| d.set_memory_flags(r.memory_kib, f);
        self.set_size(r.uuid, id, size, r.memory_kib, set)
    }

    pub(crate) fn vm_set_vcpus(&self, r: VmSetVcpusRequest, id: Uuid) -> VmResult {
        let size = Size(VmOperation::SetVcpus, "vcpus", |v| v.max_vcpus);
        let set = |d: &Domain, f| d.set_vcpus_flags(r.vcpus, f);
        self.set_size(r.uuid, id, size, r.vcpus, set)
    }

    /// Sets a size of a VM (memory, vCPUs) up to its maximum, live and in
    /// its definition as its state allows.
    fn set_size<T: PartialOrd + std::fmt::Display>(
        &self,
        uuid: Uuid,
        id: Uuid,
        size: Size<T>,
        value: T,
        apply: impl Fn(&Domain, u32) -> Result<(), virt::error::Error>,
    ) -> Result<VmRecord, Error> {
        let Size(op, field, max) = size;
        let (_conn, dom, rec) = self.prepare(uuid, op)?;
        let max = max(&rec);
        if value > max {
            return Err(ValidationError::new(
                field,
                format_args!("exceeds the VM's max_{field} {max}"),
            )
            .into());
        }
        let _op = self.begin_op(uuid, id, op);
        let flags = live_flags(rec.power_state, rec.persistent);
        self.lv(
            &Subject::vm(uuid, op.as_str()),
            with_flags(flags, |f| apply(&dom, f)),
        )?;
        self.vm_record(&dom)
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
            let changed = match &change {
                DeviceChange::Attach(device) => xml::add_device(&current, device)?,
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
            DeviceChange::Attach(device) => dom.attach_device_flags(&device.xml(), flags),
            DeviceChange::Detach(x, _, _) => dom.detach_device_flags(x, flags),
        };
        self.lv(&subject, result)?;
        // QEMU removes a device only once the guest releases it; libvirt
        // waits a few seconds for that and then answers success anyway. A
        // device still in the live definition was not removed.
        if let DeviceChange::Detach(_, tag, matches) = change {
            let live = self.lv(&subject, dom.xml_desc(0))?;
            if xml::has_device(&live, tag, matches)? {
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

    pub(crate) fn vm_attach_disk(&self, r: VmAttachDiskRequest, id: Uuid) -> VmResult {
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
        let disk = Device::Disk(DiskXml {
            target: &r.disk.target,
            source,
            bus: r.disk.bus,
            format,
            read_only: r.disk.read_only,
            device: r.disk.device,
        });
        if let Err(e) =
            self.change_device(&conn, &dom, &rec, "attach_disk", DeviceChange::Attach(disk))
        {
            self.rollback_volumes(created.into_iter().collect());
            return Err(e);
        }
        self.vm_record(&dom)
    }

    pub(crate) fn vm_detach_disk(&self, r: VmDetachDiskRequest, id: Uuid) -> VmResult {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::DetachDisk)?;
        let disk: &DiskRecord =
            find_device(&rec.disks, r.uuid, &r.target, |d| d.target == r.target)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::DetachDisk);
        // libvirt finds the disk to detach by its target.
        let source = match &disk.volume {
            Some(VolumeRef { pool, volume }) => DiskSrc::Volume {
                pool: pool.clone(),
                volume: volume.clone(),
            },
            None => DiskSrc::Path(disk.source_path.clone().unwrap_or_default()),
        };
        let xml = Device::Disk(DiskXml {
            target: &disk.target,
            source,
            bus: disk.bus,
            format: disk.format,
            read_only: disk.read_only,
            device: disk.device,
        })
        .xml();
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

    pub(crate) fn vm_attach_nic(&self, r: VmAttachNicRequest, id: Uuid) -> VmResult {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::AttachNic)?;
        self.check_networks(&conn, std::slice::from_ref(&r.nic))?;
        let mac = r.nic.mac.clone().unwrap_or_else(|| mac_of(id));
        if rec.nics.iter().any(|n| n.mac.eq_ignore_ascii_case(&mac)) {
            return Err(ValidationError::new(
                "nic.mac",
                format_args!("{mac} is already used by this vm"),
            )
            .into());
        }
        let _op = self.begin_op(r.uuid, id, VmOperation::AttachNic);
        let nic = Device::Nic(NicXml {
            network: r.nic.network.as_deref(),
            bridge: r.nic.bridge.as_deref(),
            mac,
            model: r.nic.model,
        });
        self.change_device(&conn, &dom, &rec, "attach_nic", DeviceChange::Attach(nic))?;
        self.vm_record(&dom)
    }

    pub(crate) fn vm_detach_nic(&self, r: VmDetachNicRequest, id: Uuid) -> VmResult {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::DetachNic)?;
        let same_mac = |n: &NicRecord| n.mac.eq_ignore_ascii_case(&r.mac);
        let nic = find_device(&rec.nics, r.uuid, &r.mac, same_mac)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::DetachNic);
        let xml = Device::Nic(NicXml {
            network: nic.network.as_deref(),
            bridge: nic.bridge.as_deref(),
            mac: nic.mac.clone(),
            model: nic.model,
        })
        .xml();
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
}

/// Which size [`Inner::set_size`] sets: the operation, the request's
/// field, and the VM's maximum for it.
struct Size<T>(VmOperation, &'static str, fn(&VmRecord) -> T);

/// A device change for [`Inner::change_device`].
enum DeviceChange<'a> {
    /// Attach this device.
    Attach(Device<'a>),
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

/// The device of `vm` that `is` picks among `devices`, or
/// `DEVICE_NOT_FOUND` naming it as `name`.
fn find_device<'a, T>(
    devices: &'a [T],
    vm: Uuid,
    name: &str,
    is: impl Fn(&T) -> bool,
) -> Result<&'a T, Error> {
    devices
        .iter()
        .find(|d| is(d))
        .ok_or_else(|| device_not_found(vm, name))
}

fn device_not_found(vm: Uuid, device: &str) -> Error {
    Error::new(
        ErrorCode::DeviceNotFound,
        [("vm", vm.to_string()), ("device", device.to_owned())],
        format!("vm {vm} has no device {device}"),
    )
}
