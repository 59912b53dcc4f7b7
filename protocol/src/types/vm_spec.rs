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

/// A disk to give a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DiskSpec {
    /// Guest device name, such as `vda`.
    pub target: String,
    /// Storage.
    pub source: DiskSource,
    /// Bus the guest sees (default virtio).
    #[serde(default = "default_bus")]
    pub bus: DiskBus,
    /// Image format. Absent: the volume's own format for a `volume` source
    /// (or a path that is a volume of a pool), qcow2 for a new volume. A
    /// format that contradicts the volume's is refused (`INVALID_ARGUMENT`);
    /// a path outside every pool needs it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Read-only (always, for a CD-ROM).
    #[serde(default)]
    pub read_only: bool,
    /// A disk (default) or a CD-ROM drive.
    #[serde(default)]
    pub device: DiskDevice,
}

fn default_bus() -> DiskBus {
    DiskBus::Virtio
}
impl Validate for DiskSpec {
    fn validate(&self) -> Validation {
        check_device_target("target", &self.target)?;
        match &self.source {
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
        if self.bus == DiskBus::Unknown {
            return Err(ValidationError::new("bus", "unknown bus"));
        }
        if self.format == Some(DiskFormat::Unknown) {
            return Err(ValidationError::new("format", "unknown format"));
        }
        match self.device {
            DiskDevice::Disk => {}
            DiskDevice::Cdrom => {
                if self.bus == DiskBus::Virtio {
                    return Err(ValidationError::new(
                        "bus",
                        "a cdrom needs bus sata, ide or scsi",
                    ));
                }
                if matches!(self.source, DiskSource::NewVolume { .. }) {
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

/// How a VM boots: from its devices in firmware order, or straight into a
/// kernel (XenAPI's HVM boot order and PV kernel/ramdisk/args).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BootSpec {
    /// Devices the firmware tries, in order (empty: `[disk]`). Ignored by
    /// the firmware when `kernel` is set.
    #[serde(default)]
    pub order: Vec<BootDevice>,
    /// A kernel image on the host to boot directly.
    #[serde(default)]
    pub kernel: Option<String>,
    /// An initrd on the host for `kernel`.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The kernel command line for `kernel`.
    #[serde(default)]
    pub cmdline: Option<String>,
}

impl Validate for BootSpec {
    fn validate(&self) -> Validation {
        if self.order.len() > BootDevice::ALL.len() {
            return Err(ValidationError::new(
                "order",
                format_args!("must have at most {} entries", BootDevice::ALL.len()),
            ));
        }
        for (i, d) in self.order.iter().enumerate() {
            if *d == BootDevice::Unknown {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    "unknown boot device",
                ));
            }
            if self.order[..i].contains(d) {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    format_args!("{d} is listed twice"),
                ));
            }
        }
        if let Some(k) = &self.kernel {
            check_path("kernel", k)?;
        }
        if let Some(i) = &self.initrd {
            check_path("initrd", i)?;
        }
        if let Some(c) = &self.cmdline {
            check_text("cmdline", c)?;
            if c.contains('\n') {
                return Err(ValidationError::new("cmdline", "must be one line"));
            }
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err(ValidationError::new(
                "kernel",
                "is required when initrd or cmdline is given",
            ));
        }
        Ok(())
    }
}

/// A NIC to give a VM. Exactly one of `network` and `bridge` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NicSpec {
    /// Virtual network to attach to.
    #[serde(default)]
    pub network: Option<String>,
    /// Host bridge to attach to.
    #[serde(default)]
    pub bridge: Option<String>,
    /// MAC address; generated when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Device model (default virtio).
    #[serde(default = "default_model")]
    pub model: NicModel,
}

fn default_model() -> NicModel {
    NicModel::Virtio
}

impl Validate for NicSpec {
    fn validate(&self) -> Validation {
        match (&self.network, &self.bridge) {
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
        if let Some(mac) = &self.mac {
            check_mac("mac", mac)?;
        }
        if self.model == NicModel::Unknown {
            return Err(ValidationError::new("model", "unknown model"));
        }
        Ok(())
    }
}

/// A VM to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VmSpec {
    /// Unique name on the host.
    pub name: String,
    /// Identity; generated when absent.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Memory at start, KiB.
    pub memory_kib: u64,
    /// Memory ceiling, KiB (default: `memory_kib`).
    #[serde(default)]
    pub max_memory_kib: Option<u64>,
    /// vCPUs at start.
    pub vcpus: u32,
    /// vCPU ceiling (default: `vcpus`).
    #[serde(default)]
    pub max_vcpus: Option<u32>,
    /// Guest architecture (default: the host's).
    #[serde(default)]
    pub arch: Option<String>,
    /// Disks, in boot order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// NICs.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Start when the host boots.
    #[serde(default)]
    pub autostart: bool,
    /// How it boots (default: from the first disk).
    #[serde(default)]
    pub boot: BootSpec,
    /// The CPU the guest sees. Absent: the host's choice, `host_model` on
    /// KVM and `maximum` under TCG.
    #[serde(default)]
    pub cpu_mode: Option<CpuMode>,
}

impl Validate for VmSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        check_text("description", &self.description)?;
        check_range(
            "memory_kib",
            self.memory_kib,
            MIN_MEMORY_KIB,
            MAX_MEMORY_KIB,
        )?;
        if let Some(max) = self.max_memory_kib {
            check_range("max_memory_kib", max, self.memory_kib, MAX_MEMORY_KIB)?;
        }
        check_range("vcpus", self.vcpus, 1, MAX_VCPUS)?;
        if let Some(max) = self.max_vcpus {
            check_range("max_vcpus", max, self.vcpus, MAX_VCPUS)?;
        }
        if let Some(arch) = &self.arch {
            check_name("arch", arch)?;
        }
        check_each("disks", &self.disks, MAX_DEVICES)?;
        check_each("nics", &self.nics, MAX_DEVICES)?;
        self.boot.validate().map_err(|e| e.within("boot"))?;
        if self.cpu_mode == Some(CpuMode::Unknown) {
            return Err(ValidationError::new("cpu_mode", "unknown cpu mode"));
        }
        for (i, d) in self.boot.order.iter().enumerate() {
            let has = match d {
                BootDevice::Disk => self.disks.iter().any(|x| x.device == DiskDevice::Disk),
                BootDevice::Cdrom => self.disks.iter().any(|x| x.device == DiskDevice::Cdrom),
                BootDevice::Network => !self.nics.is_empty(),
                BootDevice::Unknown => false,
            };
            if !has && self.boot.kernel.is_none() {
                return Err(ValidationError::new(
                    format!("boot.order[{i}]"),
                    format_args!("the vm has no {d} device to boot from"),
                ));
            }
        }
        let mut targets: Vec<&str> = self.disks.iter().map(|d| d.target.as_str()).collect();
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
