//! Objects the suites create: the smallest VM that boots on the test
//! driver, with new volumes for its disks.

use hostbus_protocol::types::{DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, VmSpec};

/// A VM of 256 MiB and one vCPU named `name`, with `disks` (at most three:
/// `vda`, `vdb`, `vdc`) new 1 GiB qcow2 volumes in pool `default` on virtio.
pub fn small_vm(name: &str, disks: usize) -> VmSpec {
    let targets = ["vda", "vdb", "vdc"];
    VmSpec {
        name: name.to_owned(),
        uuid: None,
        description: String::new(),
        memory_kib: 262_144,
        max_memory_kib: None,
        vcpus: 1,
        max_vcpus: None,
        arch: None,
        disks: targets[..disks]
            .iter()
            .map(|t| DiskSpec {
                target: (*t).to_owned(),
                source: DiskSource::NewVolume {
                    pool: "default".into(),
                    capacity_bytes: 1 << 30,
                },
                bus: DiskBus::Virtio,
                format: Some(DiskFormat::Qcow2),
                read_only: false,
                device: DiskDevice::Disk,
            })
            .collect(),
        nics: vec![],
        autostart: false,
        boot: Default::default(),
        cpu_mode: None,
    }
}
