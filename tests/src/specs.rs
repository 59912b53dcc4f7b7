//! Objects the suites create: the smallest VM that boots on the test
//! driver, with new volumes for its disks.

use hostbus_protocol::types::{DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, VmSpec};

/// A disk `target` on virtio backed by a new 1 GiB qcow2 volume in pool
/// `default`.
pub fn new_disk(target: &str) -> DiskSpec {
    DiskSpec {
        target: target.to_owned(),
        source: DiskSource::NewVolume {
            pool: "default".into(),
            capacity_bytes: 1 << 30,
        },
        bus: DiskBus::Virtio,
        format: Some(DiskFormat::Qcow2),
        read_only: false,
        device: DiskDevice::Disk,
    }
}

/// A VM of 256 MiB and one vCPU named `name`, with a [`new_disk`] for each
/// of `disks` (targets such as `vda`).
pub fn small_vm(name: &str, disks: &[&str]) -> VmSpec {
    VmSpec {
        name: name.to_owned(),
        uuid: None,
        description: String::new(),
        memory_kib: 262_144,
        max_memory_kib: None,
        vcpus: 1,
        max_vcpus: None,
        arch: None,
        disks: disks.iter().map(|t| new_disk(t)).collect(),
        nics: vec![],
        autostart: false,
        boot: Default::default(),
        cpu_mode: None,
    }
}
