//! Disks backed by volumes, volumes in use, boot options, CPU modes and
//! consoles, on the test driver (issue 15's findings that do not need a
//! real hypervisor; tests/tests/qemu_*.rs have the rest on QEMU).

mod common;

use common::*;
use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    BootDevice, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, ForwardMode,
    NetworkSpec, PowerState, VolumeRef,
};
use hostbus_protocol::ErrorCode;

#[test]
fn a_disk_takes_its_format_from_its_volume_and_names_it() {
    let b = open();
    let mut s = spec("fmt01");
    s.disks = vec![volume_disk("vda", "default", "base-debian12.qcow2", None)];
    let vm = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect("define");
    let vda = &vm.disks[0];
    assert_eq!(vda.format, DiskFormat::Qcow2, "the volume is qcow2");
    assert_eq!(
        vda.volume,
        Some(VolumeRef {
            pool: "default".into(),
            volume: "base-debian12.qcow2".into()
        }),
        "the record names the volume that backs the disk"
    );
    assert_eq!(
        vda.source_path.as_deref(),
        Some("/var/lib/hostbus/images/base-debian12.qcow2")
    );

    // A raw image declared qcow2 (or the reverse) is refused before
    // anything is defined: QEMU would fail to start, or show the guest the
    // image's raw bytes.
    let mut s = spec("fmt02");
    s.disks = vec![volume_disk(
        "vda",
        "iso",
        "debian-12.iso",
        Some(DiskFormat::Qcow2),
    )];
    let err = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect_err("wrong format");
    assert_eq!(
        (err.code, err.param("field")),
        (ErrorCode::InvalidArgument, Some("spec.disks[0].format")),
        "{err}"
    );
    assert_code(
        run::<VmGetByName>(&b, named("fmt02")),
        ErrorCode::VmNotFound,
    );

    // A path that is a pool's volume is that volume.
    let mut s = spec("fmt03");
    s.disks = vec![DiskSpec {
        source: DiskSource::Path("/var/lib/hostbus/images/base-debian12.qcow2".into()),
        ..volume_disk("vda", "x", "x", Some(DiskFormat::Raw))
    }];
    let err = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect_err("path of a qcow2");
    assert_eq!(err.param("field"), Some("spec.disks[0].format"), "{err}");

    // A path outside every pool needs its format said.
    let mut s = spec("fmt04");
    s.disks = vec![DiskSpec {
        source: DiskSource::Path("/srv/images/foreign.img".into()),
        ..volume_disk("vda", "x", "x", None)
    }];
    let err = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect_err("no format");
    assert_eq!(err.param("field"), Some("spec.disks[0].format"), "{err}");
}

#[test]
fn volumes_in_use_are_not_deleted_or_cloned_and_undefine_keeps_shared_ones() {
    let b = open();
    // web01 runs on default/web01.qcow2 (by path, as the node file defines it).
    let err = run::<VolumeDelete>(&b, volume_key("default", "web01.qcow2"))
        .expect_err("in use by a running vm");
    assert_eq!(err.code, ErrorCode::VolumeInUse, "{err}");
    assert_eq!(err.param("vms"), Some(WEB01));
    let err = run::<VolumeClone>(
        &b,
        VolumeCloneRequest {
            pool: "default".into(),
            name: "web01.qcow2".into(),
            new_name: "web01-copy.qcow2".into(),
        },
    )
    .expect_err("written by a running vm");
    assert_eq!(err.code, ErrorCode::VolumeInUse, "{err}");
    // db01 is halted: its image may be copied, not deleted.
    run::<VolumeClone>(
        &b,
        VolumeCloneRequest {
            pool: "default".into(),
            name: "db01.qcow2".into(),
            new_name: "db01-copy.qcow2".into(),
        },
    )
    .expect("a halted vm's image can be cloned");
    let err = run::<VolumeDelete>(&b, volume_key("default", "db01.qcow2"))
        .expect_err("a halted vm is defined on it");
    assert_eq!(err.code, ErrorCode::VolumeInUse, "{err}");

    // A vm with its own new disk, a read-only base image and a CD-ROM:
    // undefining it with its storage removes only its own disk.
    let mut s = spec("own01");
    s.disks = vec![
        new_disk_in("vda", "default"),
        DiskSpec {
            read_only: true,
            ..volume_disk("vdb", "default", "base-debian12.qcow2", None)
        },
        DiskSpec {
            bus: DiskBus::Ide,
            device: DiskDevice::Cdrom,
            ..volume_disk("hdc", "iso", "debian-12.iso", None)
        },
    ];
    let vm = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect("define");
    let cd = vm.disks.iter().find(|d| d.target == "hdc").expect("cdrom");
    assert_eq!((cd.device, cd.read_only), (DiskDevice::Cdrom, true));
    undefine(&b, vm.uuid, true);
    let names = |pool: &str| volume_names(&b, pool);
    let default = names("default");
    assert!(
        !default.iter().any(|n| n == "own01-vda.qcow2"),
        "{default:?}"
    );
    assert!(
        default.iter().any(|n| n == "base-debian12.qcow2"),
        "a read-only disk's volume stays: {default:?}"
    );
    assert!(names("iso").iter().any(|n| n == "debian-12.iso"));
}

#[test]
fn records_show_boot_cpu_console_and_domain_type() {
    let b = open();
    let mut s = spec("boot01");
    s.disks = vec![
        new_disk_in("vda", "default"),
        DiskSpec {
            bus: DiskBus::Sata,
            device: DiskDevice::Cdrom,
            ..volume_disk("sdb", "iso", "debian-12.iso", None)
        },
    ];
    s.boot.order = vec![BootDevice::Cdrom, BootDevice::Disk, BootDevice::Network];
    s.cpu_mode = Some(CpuMode::HostPassthrough);
    let vm = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect("define");
    assert_eq!(
        vm.boot.order,
        [BootDevice::Cdrom, BootDevice::Disk, BootDevice::Network]
    );
    assert_eq!(vm.cpu_mode, Some(CpuMode::HostPassthrough));
    assert_eq!(vm.domain_type.as_deref(), Some("test"));
    let console = vm.console.expect("every vm gets a serial console");
    assert_eq!(console.guest_device, "ttyS0");
    assert_eq!(
        console.log_path.as_deref(),
        Some("/var/log/libvirt/qemu/boot01-serial0.log")
    );

    let mut s = spec("boot02");
    s.boot.kernel = Some("/var/lib/hostbus/vmlinuz".into());
    s.boot.initrd = Some("/var/lib/hostbus/initrd.img".into());
    s.boot.cmdline = Some("console=ttyS0 quiet".into());
    let vm = run::<VmDefine>(&b, VmDefineRequest { spec: s }).expect("define");
    assert_eq!(vm.boot.kernel.as_deref(), Some("/var/lib/hostbus/vmlinuz"));
    assert_eq!(
        vm.boot.initrd.as_deref(),
        Some("/var/lib/hostbus/initrd.img")
    );
    assert_eq!(vm.boot.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    assert_eq!(vm.cpu_mode, None, "the test driver has no cpu default");
    let vm = run::<VmStart>(
        &b,
        VmStartRequest {
            uuid: vm.uuid,
            paused: false,
        },
    )
    .expect("start");
    assert_eq!(vm.power_state, PowerState::Running);
}

#[test]
fn a_network_on_an_existing_bridge_is_defined_without_stp() {
    let b = open();
    let n = run::<NetworkDefine>(
        &b,
        NetworkDefineRequest {
            spec: NetworkSpec {
                name: "lan".into(),
                bridge: Some("br0".into()),
                forward: ForwardMode::Bridge,
                ip: None,
                autostart: false,
            },
        },
    )
    .expect("a bridge network is accepted");
    assert_eq!(
        (n.forward, n.bridge.as_deref()),
        (ForwardMode::Bridge, Some("br0"))
    );
}
