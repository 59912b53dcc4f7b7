//! Golden fixtures of the libvirt XML the bridge writes: one file under
//! `src/xml/testdata/` per representative input of each writer (domains,
//! devices, snapshots, pools, volumes, networks, the devices spliced into
//! and removed from a definition libvirt returned, the simulated node
//! file). The inputs a splice starts from are under `testdata/input/`.
//!
//! What is compared is the documents' canonical form: their elements
//! (names and attributes, in order), text (whitespace included), comments
//! and processing instructions, in document order, at their depth. Form
//! is not compared: quick-xml's writer puts attribute values between `"`
//! where the hand-written XML it replaced used `'`, which changed every
//! document's bytes and nothing libvirt reads; the fixtures hold the bytes
//! written now.
//!
//! A change to what the bridge sends libvirt shows up here as a failing
//! test; when it is intended, regenerate with
//! `HOSTBUS_BLESS=1 cargo test -p hostbus-bridge --lib xml::golden` and
//! commit the new files with the change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hostbus_protocol::types::{
    BootDevice, BootSpec, CpuMode, DiskBus, DiskDevice, DiskFormat, ForwardMode, IpSpec,
    NetworkSpec, NicModel, PoolKind, PoolSpec, VolumeSpec,
};
use roxmltree::NodeType;
use uuid::Uuid;

use super::*;

fn bless() -> bool {
    std::env::var_os("HOSTBUS_BLESS").is_some()
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/xml/testdata")
}

fn input(name: &str) -> String {
    let path = testdata().join("input").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixtures of one run: each checked (or, when blessing, written),
/// mismatches collected so that one run reports them all.
struct Golden {
    checked: BTreeSet<String>,
    failures: Vec<String>,
}

impl Golden {
    fn new() -> Self {
        Self {
            checked: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    /// Compares `xml` with fixture `<name>.xml` (the XML and a newline).
    fn check(&mut self, name: &str, xml: &str) {
        let file = format!("{name}.xml");
        assert!(self.checked.insert(file.clone()), "{file} checked twice");
        let path = testdata().join(&file);
        let written = format!("{xml}\n");
        if bless() {
            std::fs::write(&path, written).expect("write fixture");
            return;
        }
        match std::fs::read_to_string(&path) {
            Ok(stored) => {
                if let Some(difference) = difference(&stored, xml) {
                    self.failures.push(format!(
                        "{file} changed: {difference}\n  stored:  {}\n  written: {xml}",
                        stored.trim_end(),
                    ));
                }
            }
            Err(e) => self.failures.push(format!(
                "{}: {e} (run with HOSTBUS_BLESS=1 to create)",
                path.display()
            )),
        }
    }

    /// Fails on any mismatch, and on a fixture no case wrote (a case
    /// removed without its file, which would check nothing).
    fn finish(mut self) {
        let dir = std::fs::read_dir(testdata()).expect("testdata");
        for entry in dir {
            let entry = entry.expect("testdata entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && !self.checked.contains(&name) {
                if bless() {
                    std::fs::remove_file(entry.path()).expect("remove stale fixture");
                } else {
                    self.failures
                        .push(format!("{name} is a fixture no case checks"));
                }
            }
        }
        assert!(
            self.failures.is_empty(),
            "{} fixture(s) differ (regenerate with `HOSTBUS_BLESS=1 cargo test -p hostbus-bridge \
             --lib xml::golden` if intended):\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// The document's canonical form (see the module's documentation), one
/// line per node.
fn canonical(xml: &str) -> Result<Vec<String>, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let line = |n: roxmltree::Node<'_, '_>| {
        let what = match n.node_type() {
            NodeType::Element => {
                let mut line = format!(
                    "<{}",
                    expanded(n.tag_name().namespace(), n.tag_name().name())
                );
                for a in n.attributes() {
                    let name = expanded(a.namespace(), a.name());
                    line.push_str(&format!(" {name}={:?}", a.value()));
                }
                line
            }
            NodeType::Text => format!("text {:?}", n.text().unwrap_or_default()),
            NodeType::Comment => format!("comment {:?}", n.text().unwrap_or_default()),
            NodeType::PI => format!("pi {:?}", n.pi()),
            NodeType::Root => "root".to_owned(),
        };
        format!("{} {what}", n.ancestors().count())
    };
    Ok(doc.root().descendants().map(line).collect())
}

fn expanded(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{{{ns}}}{name}"),
        None => name.to_owned(),
    }
}

/// How `written` differs from `stored` in canonical form, if it does.
fn difference(stored: &str, written: &str) -> Option<String> {
    let (stored, written) = match (canonical(stored), canonical(written)) {
        (Ok(s), Ok(w)) => (s, w),
        (Err(e), _) => return Some(format!("the fixture does not parse: {e}")),
        (_, Err(e)) => return Some(format!("the written XML does not parse: {e}")),
    };
    let first = stored.iter().zip(&written).position(|(s, w)| s != w);
    match first {
        Some(i) => Some(format!("node {i} was {} and is {}", stored[i], written[i])),
        None if stored.len() != written.len() => Some(format!(
            "{} nodes were {} nodes",
            stored.len(),
            written.len()
        )),
        None => None,
    }
}

/// Characters XML escapes, in text and in attribute values.
const TRICKY: &str = "it's \"quoted\" & <tagged> > done";

/// A writable hard disk on an image outside every pool: a file, or a
/// block device (under `/dev/`).
fn path_disk(
    target: &'static str,
    path: &str,
    bus: DiskBus,
    format: DiskFormat,
) -> DiskXml<'static> {
    DiskXml {
        target,
        source: DiskSrc::Path(path.into()),
        bus,
        format,
        read_only: false,
        device: DiskDevice::Disk,
    }
}

fn file_disk() -> DiskXml<'static> {
    let image = "/var/lib/hostbus/images/web01.qcow2";
    path_disk("vda", image, DiskBus::Virtio, DiskFormat::Qcow2)
}

fn block_disk() -> DiskXml<'static> {
    path_disk("sda", "/dev/mapper/vg-data", DiskBus::Sata, DiskFormat::Raw)
}

fn volume_disk() -> DiskXml<'static> {
    DiskXml {
        target: "sdb",
        source: DiskSrc::Volume {
            pool: "default".into(),
            volume: "data & logs.raw".into(),
        },
        bus: DiskBus::Scsi,
        format: DiskFormat::Raw,
        read_only: true,
        device: DiskDevice::Disk,
    }
}

fn cdrom() -> DiskXml<'static> {
    DiskXml {
        target: "hdc",
        source: DiskSrc::Volume {
            pool: "iso".into(),
            volume: "debian-12.iso".into(),
        },
        bus: DiskBus::Ide,
        format: DiskFormat::Raw,
        // A CD-ROM is read-only whatever the flag says.
        read_only: false,
        device: DiskDevice::Cdrom,
    }
}

fn nic(
    network: Option<&'static str>,
    bridge: Option<&'static str>,
    model: NicModel,
) -> NicXml<'static> {
    NicXml {
        network,
        bridge,
        mac: "52:54:00:ab:cd:01".into(),
        model,
    }
}

fn domain<'a>(boot: &'a BootSpec) -> DomainXml<'a> {
    DomainXml {
        domain_type: "kvm",
        name: "web01",
        uuid: Uuid::from_u128(0x6a8f_1b8e_8a8e_4d47_9d6f_3c1f_0000_0001),
        description: "",
        memory_kib: 1_048_576,
        max_memory_kib: 1_048_576,
        vcpus: 1,
        max_vcpus: 1,
        arch: "x86_64",
        boot,
        cpu_mode: None,
        console_log: None,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

fn domains(g: &mut Golden) {
    let full_boot = BootSpec {
        order: vec![
            BootDevice::Cdrom,
            BootDevice::Unknown,
            BootDevice::Disk,
            BootDevice::Network,
        ],
        kernel: Some("/boot/vmlinuz-6.1 & co".into()),
        initrd: Some("/boot/initrd.img-6.1".into()),
        cmdline: Some("console=ttyS0 root=/dev/vda1 quiet msg=\"<hi>\"".into()),
    };
    g.check(
        "domain-full",
        &domain_xml(&DomainXml {
            name: "web<01>&'\"",
            description: TRICKY,
            memory_kib: 1_048_576,
            max_memory_kib: 2_097_152,
            vcpus: 2,
            max_vcpus: 4,
            cpu_mode: Some(CpuMode::Maximum),
            console_log: Some("/var/log/hostbus/web&01-serial0.log".into()),
            disks: vec![file_disk(), block_disk(), volume_disk(), cdrom()],
            nics: vec![
                nic(Some("default"), None, NicModel::Virtio),
                nic(None, Some("br0"), NicModel::E1000),
                nic(None, None, NicModel::Rtl8139),
            ],
            ..domain(&full_boot)
        }),
    );
    let default_boot = BootSpec::default();
    g.check("domain-minimal", &domain_xml(&domain(&default_boot)));
    let kernel_only = BootSpec {
        order: Vec::new(),
        kernel: Some("/boot/vmlinuz".into()),
        initrd: None,
        cmdline: Some("console=ttyS0".into()),
    };
    g.check(
        "domain-kernel-without-boot-order",
        &domain_xml(&DomainXml {
            console_log: Some("/var/log/hostbus/web01-serial0.log".into()),
            ..domain(&kernel_only)
        }),
    );
    let order_only = BootSpec {
        order: vec![BootDevice::Network, BootDevice::Disk],
        ..BootSpec::default()
    };
    g.check("domain-boot-order", &domain_xml(&domain(&order_only)));
    for (name, mode) in [
        ("host-model", CpuMode::HostModel),
        ("host-passthrough", CpuMode::HostPassthrough),
        ("maximum", CpuMode::Maximum),
        ("hypervisor-default", CpuMode::HypervisorDefault),
    ] {
        g.check(
            &format!("domain-cpu-{name}"),
            &domain_xml(&DomainXml {
                cpu_mode: Some(mode),
                ..domain(&default_boot)
            }),
        );
    }
}

fn devices(g: &mut Golden) {
    g.check("disk-file-virtio-qcow2", &Device::Disk(file_disk()).xml());
    g.check("disk-block-sata-raw", &Device::Disk(block_disk()).xml());
    g.check(
        "disk-volume-scsi-raw-read-only",
        &Device::Disk(volume_disk()).xml(),
    );
    g.check("disk-cdrom-ide-volume", &Device::Disk(cdrom()).xml());
    g.check(
        "disk-cdrom-sata-file",
        &Device::Disk(DiskXml {
            target: "sdc",
            source: DiskSrc::Path("/srv/iso/it's <new> & \"shiny\".iso".into()),
            bus: DiskBus::Sata,
            format: DiskFormat::Raw,
            read_only: true,
            device: DiskDevice::Cdrom,
        })
        .xml(),
    );
    for (on, network, bridge) in [
        ("network", Some("default"), None),
        ("bridge", None, Some("br0")),
    ] {
        for model in [NicModel::Virtio, NicModel::E1000, NicModel::Rtl8139] {
            g.check(
                &format!("nic-{on}-{model}"),
                &Device::Nic(nic(network, bridge, model)).xml(),
            );
        }
    }
    g.check(
        "nic-neither-network-nor-bridge",
        &Device::Nic(nic(None, None, NicModel::Virtio)).xml(),
    );
    g.check(
        "nic-network-and-bridge",
        &Device::Nic(nic(Some("a&b"), Some("br<0>"), NicModel::Virtio)).xml(),
    );
}

fn snapshots(g: &mut Golden) {
    g.check(
        "snapshot",
        &snapshot_xml("before <upgrade> & \"reboot\"", TRICKY),
    );
    g.check("snapshot-without-description", &snapshot_xml("s1", ""));
}

fn pools(g: &mut Golden) {
    let pool = |kind, source: Option<&str>| PoolSpec {
        name: "images".into(),
        kind,
        target_path: "/srv/it's <images> & \"more\"".into(),
        source: source.map(str::to_owned),
        autostart: false,
    };
    let cases = [
        ("pool-dir", pool(PoolKind::Dir, None)),
        (
            "pool-dir-ignores-source",
            pool(PoolKind::Dir, Some("/dev/sdz")),
        ),
        ("pool-fs", pool(PoolKind::Fs, Some("/dev/sdb1"))),
        ("pool-disk", pool(PoolKind::Disk, Some("/dev/sdc"))),
        ("pool-logical", pool(PoolKind::Logical, Some("vg<0>&1"))),
        (
            "pool-netfs",
            pool(PoolKind::Netfs, Some("nas.example:/export/it's")),
        ),
    ];
    for (name, spec) in cases {
        g.check(name, &pool_xml(&spec).expect("pool xml"));
    }
}

fn volumes(g: &mut Golden) {
    for (name, format) in [("qcow2", DiskFormat::Qcow2), ("raw", DiskFormat::Raw)] {
        let spec = VolumeSpec {
            name: format!("disk & <{name}>"),
            capacity_bytes: 10 << 30,
            allocation_bytes: 1 << 20,
            format,
        };
        g.check(&format!("volume-{name}"), &volume_xml(&spec));
    }
    let overlay = VolumeSpec {
        name: "app01-vda.qcow2".into(),
        capacity_bytes: 10 << 30,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    };
    g.check(
        "volume-overlay-on-raw",
        &overlay_xml(
            &overlay,
            "/var/lib/hostbus/images/base & <01>.img",
            DiskFormat::Raw,
        ),
    );
}

/// A clone of a template with a volume disk, a file disk in a pool, a
/// CD-ROM (shared), two NICs and a console log.
fn clones(g: &mut Golden) {
    let source = input("domain-template.xml");
    let xml = clone_domain(
        &source,
        &CloneXml {
            name: "app & <01>",
            uuid: Uuid::from_u128(0x6a8f_1b8e_8a8e_4d47_9d6f_3c1f_0000_0010),
            macs: vec!["52:54:00:00:00:10".into(), "52:54:00:00:00:11".into()],
            disks: vec![
                Some((
                    DiskSrc::Volume {
                        pool: "default".into(),
                        volume: "app01-vda.qcow2".into(),
                    },
                    DiskFormat::Qcow2,
                )),
                Some((
                    DiskSrc::Volume {
                        pool: "fast".into(),
                        volume: "app01-vdb.qcow2".into(),
                    },
                    DiskFormat::Qcow2,
                )),
                None,
            ],
            console_log: Some("/var/log/hostbus/console/app01-serial0.log".into()),
        },
    )
    .expect("clone");
    g.check("clone-of-a-template", &xml);
    let facts = parse_domain(&xml).expect("parse the clone");
    assert!(parse_domain(&source).expect("parse").template);
    assert!(!facts.template, "a clone is not a template");
}

fn networks(g: &mut Golden) {
    let ip = |dhcp_start: Option<&str>, dhcp_end: Option<&str>| IpSpec {
        address: "192.168.100.1".into(),
        prefix: 24,
        dhcp_start: dhcp_start.map(str::to_owned),
        dhcp_end: dhcp_end.map(str::to_owned),
    };
    let net = |bridge: Option<&str>, forward, ip| NetworkSpec {
        name: "lab<&>".into(),
        bridge: bridge.map(str::to_owned),
        forward,
        ip,
        autostart: false,
    };
    let dhcp = || Some(ip(Some("192.168.100.2"), Some("192.168.100.254")));
    let cases = [
        (
            "network-nat-dhcp",
            net(Some("virbr10"), ForwardMode::Nat, dhcp()),
        ),
        (
            "network-nat-ip-without-dhcp",
            net(Some("virbr10"), ForwardMode::Nat, Some(ip(None, None))),
        ),
        (
            "network-nat-no-ip",
            net(Some("virbr10"), ForwardMode::Nat, None),
        ),
        ("network-nat-no-bridge", net(None, ForwardMode::Nat, dhcp())),
        (
            "network-bridge",
            net(Some("br0"), ForwardMode::Bridge, None),
        ),
        (
            "network-bridge-with-ip",
            net(Some("br0"), ForwardMode::Bridge, dhcp()),
        ),
        (
            "network-route",
            net(Some("virbr11"), ForwardMode::Route, Some(ip(None, None))),
        ),
        ("network-open", net(None, ForwardMode::Open, None)),
        (
            "network-isolated-dhcp",
            net(Some("virbr12"), ForwardMode::Isolated, dhcp()),
        ),
        (
            "network-half-a-dhcp-range",
            net(
                None,
                ForwardMode::Isolated,
                Some(ip(Some("192.168.100.2"), None)),
            ),
        ),
    ];
    for (name, spec) in cases {
        g.check(name, &network_xml(&spec));
    }
}

fn splices(g: &mut Golden) {
    let with_devices = input("domain-with-devices.xml");
    let empty_devices = input("domain-empty-devices.xml");
    let no_devices = input("domain-without-devices.xml");
    let add = |domain: &str, device: Device<'_>| add_device(domain, &device).expect("add device");
    g.check(
        "add-disk-to-devices",
        &add(&with_devices, Device::Disk(volume_disk())),
    );
    g.check(
        "add-nic-to-devices",
        &add(
            &with_devices,
            Device::Nic(nic(None, Some("br0"), NicModel::E1000)),
        ),
    );
    g.check(
        "add-cdrom-to-empty-devices",
        &add(&empty_devices, Device::Disk(cdrom())),
    );
    g.check(
        "add-nic-without-devices",
        &add(
            &no_devices,
            Device::Nic(nic(Some("default"), None, NicModel::Virtio)),
        ),
    );
    let remove = |domain: &str, tag, matches: &dyn Fn(roxmltree::Node<'_, '_>) -> bool| {
        remove_device(domain, tag, matches).expect("remove device")
    };
    let disk = remove(&with_devices, "disk", &|n| disk_has_target(n, "vdb"));
    g.check("remove-disk-by-target", &disk.expect("disk vdb"));
    let nic = remove(&with_devices, "interface", &|n| {
        nic_has_mac(n, "52:54:00:AB:CD:02")
    });
    g.check("remove-nic-by-mac", &nic.expect("nic 52:54:00:ab:cd:02"));
    assert_eq!(
        remove(&with_devices, "disk", &|n| disk_has_target(n, "vdz")),
        None
    );
    assert_eq!(
        remove(&empty_devices, "disk", &|n| disk_has_target(n, "vda")),
        None
    );
    assert_eq!(remove(&no_devices, "interface", &|_| true), None);
}

fn simulated_nodes(g: &mut Golden) {
    g.check("simulated-node-0", &crate::simulated_node_xml(0));
    g.check("simulated-node-258", &crate::simulated_node_xml(258));
}

#[test]
fn xml_writers_match_their_fixtures() {
    let mut g = Golden::new();
    domains(&mut g);
    devices(&mut g);
    snapshots(&mut g);
    pools(&mut g);
    volumes(&mut g);
    networks(&mut g);
    splices(&mut g);
    simulated_nodes(&mut g);
    clones(&mut g);
    g.finish();
}
