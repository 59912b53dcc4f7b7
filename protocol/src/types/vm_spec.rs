//! What a manager asks for when it defines a VM: disks, boot, NICs, the VM spec.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::device::*;
use super::object::*;
use crate::validate::*;

/// Where a new disk's storage comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DiskSource {
    /// An existing volume in a pool.
    Volume(VolumeRef),
    /// A new volume created in `pool` with this size (named after the VM and target).
    NewVolume {
        /// Pool to create it in.
        pool: String,
        /// Virtual size, bytes.
        capacity_bytes: u64,
    },
    /// An existing file or block device on the host.
    Path(String),
}

wire_struct! {
    /// A disk to give a VM.
    DiskSpec {
        /// Guest device name, such as `vda`.
        target: String,
        /// Storage.
        source: DiskSource,
        /// Bus the guest sees (default virtio).
        #[serde(default = "default_bus")]
        bus: DiskBus,
        /// Image format. Absent: the volume's own format for a `volume` source
        /// (or a path that is a volume of a pool), qcow2 for a new volume. A
        /// format that contradicts the volume's is refused (`INVALID_ARGUMENT`);
        /// a path outside every pool needs it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<DiskFormat>,
        /// Read-only (always, for a CD-ROM).
        #[serde(default)]
        read_only: bool,
        /// A disk (default) or a CD-ROM drive.
        #[serde(default)]
        device: DiskDevice,
    }
    validate(this) {
        check_device_target("target", &this.target)?;
        match &this.source {
            DiskSource::Volume(v) => v.validate().map_err(|e| e.within("source.volume")),
            DiskSource::NewVolume {
                pool,
                capacity_bytes,
            } => {
                check_name("source.new_volume.pool", pool)?;
                check_range(
                    "source.new_volume.capacity_bytes",
                    *capacity_bytes,
                    1 << 20,
                    MAX_VOLUME_BYTES,
                )
            }
            DiskSource::Path(p) => check_path("source.path", p),
        }?;
        if this.bus == DiskBus::Unknown {
            return Err(ValidationError::new("bus", "unknown bus"));
        }
        if this.format == Some(DiskFormat::Unknown) {
            return Err(ValidationError::new("format", "unknown format"));
        }
        match this.device {
            DiskDevice::Disk => {}
            DiskDevice::Cdrom => {
                if this.bus == DiskBus::Virtio {
                    return Err(ValidationError::new(
                        "bus",
                        "a cdrom needs bus sata, ide or scsi",
                    ));
                }
                if matches!(this.source, DiskSource::NewVolume { .. }) {
                    return Err(ValidationError::new(
                        "source",
                        "a cdrom reads an existing image, not a new volume",
                    ));
                }
            }
            DiskDevice::Unknown => return Err(ValidationError::new("device", "unknown device")),
        }
        Ok(())
    }
}

fn default_bus() -> DiskBus {
    DiskBus::Virtio
}

wire_struct! {
    /// How a VM boots: from its devices in firmware order, or straight into a
    /// kernel (XenAPI's HVM boot order and PV kernel/ramdisk/args).
    #[derive(Default)]
    BootSpec {
        /// Devices the firmware tries, in order (empty: `[disk]`). Ignored by
        /// the firmware when `kernel` is set.
        #[serde(default)]
        order: Vec<BootDevice>,
        /// A kernel image on the host to boot directly.
        #[serde(default)]
        kernel: Option<String>,
        /// An initrd on the host for `kernel`.
        #[serde(default)]
        initrd: Option<String>,
        /// The kernel command line for `kernel`.
        #[serde(default)]
        cmdline: Option<String>,
    }
    validate(this) {
        if this.order.len() > BootDevice::ALL.len() {
            return Err(ValidationError::new(
                "order",
                format_args!("must have at most {} entries", BootDevice::ALL.len()),
            ));
        }
        for (i, d) in this.order.iter().enumerate() {
            if *d == BootDevice::Unknown {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    "unknown boot device",
                ));
            }
            if this.order[..i].contains(d) {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    format_args!("{d} is listed twice"),
                ));
            }
        }
        if let Some(k) = &this.kernel {
            check_path("kernel", k)?;
        }
        if let Some(i) = &this.initrd {
            check_path("initrd", i)?;
        }
        if let Some(c) = &this.cmdline {
            check_text("cmdline", c)?;
            if c.contains('\n') {
                return Err(ValidationError::new("cmdline", "must be one line"));
            }
        }
        if this.kernel.is_none() && (this.initrd.is_some() || this.cmdline.is_some()) {
            return Err(ValidationError::new(
                "kernel",
                "is required when initrd or cmdline is given",
            ));
        }
        Ok(())
    }
}

wire_struct! {
    /// A NIC to give a VM. Exactly one of `network` and `bridge` is set.
    NicSpec {
        /// Virtual network to attach to.
        #[serde(default)]
        network: Option<String>,
        /// Host bridge to attach to.
        #[serde(default)]
        bridge: Option<String>,
        /// MAC address; generated when absent.
        #[serde(default)]
        mac: Option<String>,
        /// Device model (default virtio).
        #[serde(default = "default_model")]
        model: NicModel,
    }
    validate(this) {
        match (&this.network, &this.bridge) {
            (Some(n), None) => check_name("network", n)?,
            (None, Some(b)) => {
                check_name("bridge", b)?;
                if b.len() > 15 {
                    return Err(ValidationError::new("bridge", "must be at most 15 bytes"));
                }
            }
            _ => {
                return Err(ValidationError::new(
                    "network",
                    "exactly one of `network` and `bridge` must be set",
                ))
            }
        }
        if let Some(mac) = &this.mac {
            check_mac("mac", mac)?;
        }
        if this.model == NicModel::Unknown {
            return Err(ValidationError::new("model", "unknown model"));
        }
        Ok(())
    }
}

fn default_model() -> NicModel {
    NicModel::Virtio
}

wire_struct! {
    /// A VM to define.
    VmSpec {
        /// Unique name on the host.
        name: String,
        /// Identity; generated when absent.
        #[serde(default)]
        uuid: Option<Uuid>,
        /// Free text.
        #[serde(default)]
        description: String,
        /// Memory at start, KiB.
        memory_kib: u64,
        /// Memory ceiling, KiB (default: `memory_kib`).
        #[serde(default)]
        max_memory_kib: Option<u64>,
        /// vCPUs at start.
        vcpus: u32,
        /// vCPU ceiling (default: `vcpus`).
        #[serde(default)]
        max_vcpus: Option<u32>,
        /// Guest architecture (default: the host's).
        #[serde(default)]
        arch: Option<String>,
        /// Disks, in boot order.
        #[serde(default)]
        disks: Vec<DiskSpec>,
        /// NICs.
        #[serde(default)]
        nics: Vec<NicSpec>,
        /// Start when the host boots.
        #[serde(default)]
        autostart: bool,
        /// How it boots (default: from the first disk).
        #[serde(default)]
        boot: BootSpec,
        /// The CPU the guest sees. Absent: the host's choice, `host_model` on
        /// KVM and `maximum` under TCG.
        #[serde(default)]
        cpu_mode: Option<CpuMode>,
    }
    validate(this) {
        check_name("name", &this.name)?;
        check_text("description", &this.description)?;
        check_range(
            "memory_kib",
            this.memory_kib,
            MIN_MEMORY_KIB,
            MAX_MEMORY_KIB,
        )?;
        if let Some(max) = this.max_memory_kib {
            check_range("max_memory_kib", max, this.memory_kib, MAX_MEMORY_KIB)?;
        }
        check_range("vcpus", this.vcpus, 1, MAX_VCPUS)?;
        if let Some(max) = this.max_vcpus {
            check_range("max_vcpus", max, this.vcpus, MAX_VCPUS)?;
        }
        if let Some(arch) = &this.arch {
            check_name("arch", arch)?;
        }
        check_each("disks", &this.disks, MAX_DEVICES)?;
        check_each("nics", &this.nics, MAX_DEVICES)?;
        this.boot.validate().map_err(|e| e.within("boot"))?;
        if this.cpu_mode == Some(CpuMode::Unknown) {
            return Err(ValidationError::new("cpu_mode", "unknown cpu mode"));
        }
        for (i, d) in this.boot.order.iter().enumerate() {
            let has = match d {
                BootDevice::Disk => this.disks.iter().any(|x| x.device == DiskDevice::Disk),
                BootDevice::Cdrom => this.disks.iter().any(|x| x.device == DiskDevice::Cdrom),
                BootDevice::Network => !this.nics.is_empty(),
                BootDevice::Unknown => false,
            };
            if !has && this.boot.kernel.is_none() {
                return Err(ValidationError::new(
                    format!("boot.order[{i}]"),
                    format_args!("the vm has no {d} device to boot from"),
                ));
            }
        }
        let mut targets: Vec<&str> = this.disks.iter().map(|d| d.target.as_str()).collect();
        targets.sort_unstable();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new(
                "disks",
                format_args!("target {} is used twice", w[0]),
            ));
        }
        Ok(())
    }
}

impl VmSpec {
    /// A VM with this name, memory (KiB) and vCPUs and every other field as a
    /// peer that leaves it out gets it: no disks or NICs, a generated uuid,
    /// ceilings equal to the start values, the host's architecture and CPU
    /// choice, booting from its first disk. Add the rest with struct update
    /// syntax: `VmSpec { disks, ..VmSpec::new("web01", 1 << 20, 2) }`.
    pub fn new(name: impl Into<String>, memory_kib: u64, vcpus: u32) -> Self {
        Self {
            name: name.into(),
            uuid: None,
            description: String::new(),
            memory_kib,
            max_memory_kib: None,
            vcpus,
            max_vcpus: None,
            arch: None,
            disks: Vec::new(),
            nics: Vec::new(),
            autostart: false,
            boot: BootSpec::default(),
            cpu_mode: None,
        }
    }
}

impl DiskSpec {
    /// A writable virtio disk `target` (such as `vda`) on `source`, its
    /// format the volume's own (qcow2 for a new volume).
    pub fn new(target: impl Into<String>, source: DiskSource) -> Self {
        Self {
            target: target.into(),
            source,
            bus: default_bus(),
            format: None,
            read_only: false,
            device: DiskDevice::Disk,
        }
    }
}

impl NicSpec {
    /// A virtio NIC on the virtual network `network`, its MAC generated.
    pub fn on_network(network: impl Into<String>) -> Self {
        Self {
            network: Some(network.into()),
            bridge: None,
            mac: None,
            model: default_model(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructors build what a peer sending only the required fields
    /// gets from the decoder, so the two cannot drift apart.
    #[test]
    fn constructors_equal_what_the_wire_defaults_give() {
        let vm: VmSpec = serde_json::from_str(r#"{"name":"web01","memory_kib":1024,"vcpus":2}"#)
            .expect("decode");
        assert_eq!(VmSpec::new("web01", 1024, 2), vm);
        let disk: DiskSpec =
            serde_json::from_str(r#"{"target":"vda","source":{"path":"/var/lib/a.img"}}"#)
                .expect("decode");
        assert_eq!(
            DiskSpec::new("vda", DiskSource::Path("/var/lib/a.img".into())),
            disk
        );
        let nic: NicSpec = serde_json::from_str(r#"{"network":"default"}"#).expect("decode");
        assert_eq!(NicSpec::on_network("default"), nic);
    }
}
