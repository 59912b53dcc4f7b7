//! Validation refuses each kind of bad field, and the error names the field.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    BootDevice, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, ForwardMode,
    NetworkSpec, NicModel, NicSpec, PoolKind, PoolSpec, VmSpec, VolumeRef, VolumeSpec,
};
use hostbus_protocol::{Error, ErrorCode, Validate};
use hostbus_testkit::{nat_network, virtio_nic};
use uuid::Uuid;

fn vm_spec() -> VmSpec {
    VmSpec {
        disks: vec![disk("vda")],
        nics: vec![virtio_nic("default", None)],
        ..VmSpec::new("web01", 524_288, 1)
    }
}

fn disk(target: &str) -> DiskSpec {
    DiskSpec {
        target: target.into(),
        source: DiskSource::Volume(VolumeRef {
            pool: "default".into(),
            volume: "a.qcow2".into(),
        }),
        bus: DiskBus::Virtio,
        format: Some(DiskFormat::Qcow2),
        read_only: false,
        device: DiskDevice::Disk,
    }
}

/// A vm.define of [`vm_spec`] changed by `f`.
fn define(f: &dyn Fn(&mut VmSpec)) -> VmDefineRequest {
    let mut spec = vm_spec();
    f(&mut spec);
    VmDefineRequest { spec }
}

/// Asserts that `req` fails validation on exactly `field`, and that the
/// protocol error built from it is INVALID_ARGUMENT naming it.
fn refused(req: &impl Validate, field: &str) {
    let err = req
        .validate()
        .expect_err(&format!("accepted a bad `{field}`"));
    assert_eq!(err.field, field, "wrong field named: {err}");
    let wire: Error = err.into();
    assert_eq!(wire.code, ErrorCode::InvalidArgument);
    assert_eq!(wire.param("field"), Some(field));
}

#[test]
fn a_good_vm_spec_passes() {
    VmDefineRequest { spec: vm_spec() }
        .validate()
        .expect("valid");
}

#[test]
fn boot_cpu_and_cdrom_fields_are_checked() {
    let kernel_boot = define(&|s| {
        s.boot.kernel = Some("/boot/vmlinuz".into());
        s.boot.initrd = Some("/boot/initrd.img".into());
        s.boot.cmdline = Some("console=ttyS0 quiet".into());
        s.cpu_mode = Some(CpuMode::Maximum);
    });
    kernel_boot.validate().expect("direct kernel boot is valid");
    refused(
        &define(&|s| s.boot.initrd = Some("/boot/initrd.img".into())),
        "spec.boot.kernel",
    );
    refused(
        &define(&|s| s.boot.kernel = Some("vmlinuz".into())),
        "spec.boot.kernel",
    );
    refused(
        &define(&|s| {
            s.boot.kernel = Some("/boot/vmlinuz".into());
            s.boot.cmdline = Some("a\nb".into());
        }),
        "spec.boot.cmdline",
    );
    refused(
        &define(&|s| s.boot.order = vec![BootDevice::Disk, BootDevice::Disk]),
        "spec.boot.order[1]",
    );
    refused(
        &define(&|s| s.boot.order = vec![BootDevice::Cdrom]),
        "spec.boot.order[0]",
    );
    refused(
        &define(&|s| s.cpu_mode = Some(CpuMode::Unknown)),
        "spec.cpu_mode",
    );
    refused(
        &define(&|s| s.disks[0].device = DiskDevice::Cdrom),
        "spec.disks[0].bus",
    );
    let cdrom_boot = define(&|s| {
        let mut cd = disk("hdc");
        cd.device = DiskDevice::Cdrom;
        cd.bus = DiskBus::Ide;
        s.disks.push(cd);
        s.boot.order = vec![BootDevice::Cdrom, BootDevice::Disk, BootDevice::Network];
    });
    cdrom_boot
        .validate()
        .expect("cdrom, disk, network boot is valid");
}

#[test]
fn vm_spec_fields_are_checked() {
    refused(&define(&|s| s.name = String::new()), "spec.name");
    refused(&define(&|s| s.name = "web 01".into()), "spec.name");
    refused(&define(&|s| s.name = "x".repeat(65)), "spec.name");
    refused(
        &define(&|s| s.description = "bell\u{7}".into()),
        "spec.description",
    );
    refused(&define(&|s| s.memory_kib = 10), "spec.memory_kib");
    refused(
        &define(&|s| s.max_memory_kib = Some(1024)),
        "spec.max_memory_kib",
    );
    refused(&define(&|s| s.vcpus = 0), "spec.vcpus");
    refused(&define(&|s| s.vcpus = 100_000), "spec.vcpus");
    refused(&define(&|s| s.max_vcpus = Some(0)), "spec.max_vcpus");
    refused(
        &define(&|s| s.disks[0].target = "nvme0".into()),
        "spec.disks[0].target",
    );
    refused(&define(&|s| s.disks.push(disk("vda"))), "spec.disks");
    refused(
        &define(&|s| s.disks[0].bus = DiskBus::Unknown),
        "spec.disks[0].bus",
    );
    refused(
        &define(&|s| s.disks[0].source = DiskSource::Path("relative/path".into())),
        "spec.disks[0].source.path",
    );
    refused(
        &define(&|s| s.disks[0].source = DiskSource::Path("/var/../etc/shadow".into())),
        "spec.disks[0].source.path",
    );
    refused(
        &define(&|s| {
            s.disks[0].source = DiskSource::NewVolume {
                pool: "default".into(),
                capacity_bytes: 5,
            }
        }),
        "spec.disks[0].source.new_volume.capacity_bytes",
    );
    refused(
        &define(&|s| {
            s.disks[0].source = DiskSource::Volume(VolumeRef {
                pool: "p".into(),
                volume: "../x".into(),
            })
        }),
        "spec.disks[0].source.volume.volume",
    );
    refused(
        &define(&|s| s.nics[0].mac = Some("zz:54:00:00:00:01".into())),
        "spec.nics[0].mac",
    );
    refused(
        &define(&|s| s.nics[0].mac = Some("01:00:5e:00:00:01".into())),
        "spec.nics[0].mac",
    );
    refused(
        &define(&|s| s.nics[0].bridge = Some("br0".into())),
        "spec.nics[0].network",
    );
    refused(
        &define(&|s| s.nics = vec![s.nics[0].clone(); 65]),
        "spec.nics",
    );
}

#[test]
fn vm_operation_requests_are_checked() {
    let uuid = Uuid::nil();
    refused(
        &VmShutdownRequest {
            uuid,
            timeout_s: 7200,
            force: false,
        },
        "timeout_s",
    );
    refused(
        &VmSetMemoryRequest {
            uuid,
            memory_kib: 0,
        },
        "memory_kib",
    );
    refused(&VmSetVcpusRequest { uuid, vcpus: 0 }, "vcpus");
    refused(
        &VmDetachDiskRequest {
            uuid,
            target: "c:".into(),
        },
        "target",
    );
    refused(
        &VmDetachNicRequest {
            uuid,
            mac: "52:54:00".into(),
        },
        "mac",
    );
    refused(
        &VmAttachDiskRequest {
            uuid,
            disk: disk("floppy"),
        },
        "disk.target",
    );
    refused(
        &VmAttachNicRequest {
            uuid,
            nic: NicSpec {
                network: None,
                bridge: None,
                mac: None,
                model: NicModel::E1000,
            },
        },
        "nic.network",
    );
    refused(&ObjectName { name: "a/b".into() }, "name");
    refused(
        &Ping {
            echo: Some("x".repeat(2000)),
        },
        "echo",
    );
    refused(
        &SnapshotCreateRequest {
            vm: uuid,
            name: String::new(),
            description: String::new(),
        },
        "name",
    );
    refused(
        &SnapshotRef {
            vm: uuid,
            name: ".hidden".into(),
        },
        "name",
    );
}

#[test]
fn storage_and_network_requests_are_checked() {
    let pool = |f: &dyn Fn(&mut PoolSpec)| {
        let mut spec = PoolSpec {
            name: "images".into(),
            kind: PoolKind::Dir,
            target_path: "/var/lib/images".into(),
            source: None,
            autostart: false,
        };
        f(&mut spec);
        PoolDefineRequest { spec }
    };
    pool(&|_| {}).validate().expect("valid pool");
    refused(&pool(&|s| s.kind = PoolKind::Unknown), "spec.kind");
    refused(
        &pool(&|s| s.target_path = "images".into()),
        "spec.target_path",
    );

    let vol = VolumeSpec {
        name: "a.qcow2".into(),
        capacity_bytes: 1 << 30,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    };
    VolumeCreateRequest {
        pool: "default".into(),
        spec: vol.clone(),
    }
    .validate()
    .expect("valid volume");
    refused(
        &VolumeCreateRequest {
            pool: "".into(),
            spec: vol.clone(),
        },
        "pool",
    );
    refused(
        &VolumeCreateRequest {
            pool: "default".into(),
            spec: VolumeSpec {
                capacity_bytes: 0,
                ..vol.clone()
            },
        },
        "spec.capacity_bytes",
    );
    refused(
        &VolumeCreateRequest {
            pool: "default".into(),
            spec: VolumeSpec {
                allocation_bytes: 2 << 30,
                ..vol.clone()
            },
        },
        "spec.allocation_bytes",
    );
    refused(
        &VolumeResizeRequest {
            pool: "default".into(),
            name: "a".into(),
            capacity_bytes: u64::MAX,
        },
        "capacity_bytes",
    );
    refused(
        &VolumeCloneRequest {
            pool: "default".into(),
            name: "a".into(),
            new_name: "b c".into(),
        },
        "new_name",
    );
    refused(
        &VolumeKey {
            pool: "default".into(),
            name: "".into(),
        },
        "name",
    );
    refused(&PoolName { pool: "p*".into() }, "pool");

    let net = |f: &dyn Fn(&mut NetworkSpec)| {
        let mut spec = nat_network(
            "lab",
            "virbr9",
            "192.168.150.1",
            ("192.168.150.10", "192.168.150.100"),
        );
        f(&mut spec);
        NetworkDefineRequest { spec }
    };
    net(&|_| {}).validate().expect("valid network");
    refused(
        &net(&|s| s.bridge = Some("a-very-long-bridge-name".into())),
        "spec.bridge",
    );
    refused(
        &net(&|s| {
            s.forward = ForwardMode::Bridge;
            s.bridge = None;
        }),
        "spec.bridge",
    );
    refused(&net(&|s| s.forward = ForwardMode::Unknown), "spec.forward");
    refused(
        &net(&|s| {
            if let Some(ip) = s.ip.as_mut() {
                ip.address = "300.1.1.1".into()
            }
        }),
        "spec.ip.address",
    );
    refused(
        &net(&|s| {
            if let Some(ip) = s.ip.as_mut() {
                ip.prefix = 31
            }
        }),
        "spec.ip.prefix",
    );
    refused(
        &net(&|s| {
            if let Some(ip) = s.ip.as_mut() {
                ip.dhcp_end = None
            }
        }),
        "spec.ip.dhcp_start",
    );
}
