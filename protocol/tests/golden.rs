//! Golden fixtures lock the encoded bytes of a representative message of
//! each kind, in both encodings, and the exported schema under `docs/`.
//! A change to the wire shows up here as a failing test; when the change is
//! intended (and allowed by docs/protocol.md's versioning rules), regenerate
//! with `HOSTBUS_BLESS=1 cargo test -p hostbus-protocol --test golden` and
//! commit the new files together with the change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hostbus_protocol::commands::{Message, Pong, VmCloneRequest, VmDefineRequest, VmStartRequest};
use hostbus_protocol::error::ErrorCode;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::types::{
    BootDevice, BootSpec, ConsoleRecord, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskRecord,
    DiskSource, DiskSpec, HealthStatus, NicModel, NicRecord, ObjectClass, ObjectRef, PowerState,
    Record, TaskRecord, TaskStatus, VmOperation, VmRecord, VmSpec, VolumeRef,
};
use hostbus_protocol::{
    decode, encode, Announcement, ContentType, Error, Event, EventAction, Heartbeat, Reply,
    RosterAction,
};
use hostbus_testkit::virtio_nic;
use uuid::Uuid;

fn bless() -> bool {
    std::env::var_os("HOSTBUS_BLESS").is_some()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in bytes.chunks(32).enumerate() {
        if i > 0 {
            s.push('\n');
        }
        for b in chunk {
            s.push_str(&format!("{b:02x}"));
        }
    }
    s.push('\n');
    s
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

/// Compares (or, when blessing, writes) the fixture files of one message.
fn check<T: Message>(name: &str, value: &T) {
    let dir = golden_dir();
    let msgpack = encode(ContentType::MsgPack, value).expect("encode msgpack");
    let json = serde_json::to_string_pretty(value).expect("encode json") + "\n";
    let mp_path = dir.join(format!("{name}.msgpack.hex"));
    let json_path = dir.join(format!("{name}.json"));
    if bless() {
        std::fs::write(&mp_path, hex(&msgpack)).expect("write fixture");
        std::fs::write(&json_path, &json).expect("write fixture");
        return;
    }
    let stored_mp = std::fs::read_to_string(&mp_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with HOSTBUS_BLESS=1 to create)",
            mp_path.display()
        )
    });
    let stored_json = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with HOSTBUS_BLESS=1 to create)",
            json_path.display()
        )
    });
    assert_eq!(
        hex(&msgpack),
        stored_mp,
        "{name}: MessagePack bytes changed"
    );
    assert_eq!(json, stored_json, "{name}: JSON changed");
    // And the stored bytes decode to the same value, so old peers' messages still read.
    let from_mp: T = decode(ContentType::MsgPack, &unhex(&stored_mp), usize::MAX)
        .expect("decode stored msgpack");
    let from_json: T =
        decode(ContentType::Json, stored_json.as_bytes(), usize::MAX).expect("decode stored json");
    assert_eq!(&from_mp, value);
    assert_eq!(&from_json, value);
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(0x6a8f_1b8e_8a8e_4d47_9d6f_3c1f_0000_0000 + n)
}

fn vm_record() -> VmRecord {
    VmRecord {
        uuid: uuid(1),
        name: "web01".into(),
        description: "front end".into(),
        power_state: PowerState::Running,
        memory_kib: 1_048_576,
        max_memory_kib: 2_097_152,
        vcpus: 2,
        max_vcpus: 4,
        disks: vec![DiskRecord {
            target: "vda".into(),
            bus: DiskBus::Virtio,
            format: DiskFormat::Qcow2,
            source_path: Some("/var/lib/libvirt/images/web01.qcow2".into()),
            volume: Some(VolumeRef {
                pool: "default".into(),
                volume: "web01.qcow2".into(),
            }),
            read_only: false,
            device: DiskDevice::Disk,
        }],
        nics: vec![NicRecord {
            mac: "52:54:00:12:34:56".into(),
            network: Some("default".into()),
            bridge: None,
            model: NicModel::Virtio,
        }],
        autostart: true,
        persistent: true,
        has_saved_state: false,
        current_snapshot: None,
        generation: 7,
        allowed_operations: vec![
            VmOperation::Shutdown,
            VmOperation::Destroy,
            VmOperation::Pause,
        ],
        current_operations: vec![],
        boot: BootSpec {
            order: vec![BootDevice::Disk, BootDevice::Network],
            kernel: None,
            initrd: None,
            cmdline: None,
        },
        cpu_mode: Some(CpuMode::HostModel),
        domain_type: Some("kvm".into()),
        console: Some(ConsoleRecord {
            guest_device: "ttyS0".into(),
            pty: Some("/dev/pts/3".into()),
            log_path: Some("/var/log/libvirt/qemu/web01-serial0.log".into()),
        }),
        template: false,
    }
}

#[test]
fn request_vm_clone() {
    check(
        "request-vm-clone",
        &VmCloneRequest {
            source: uuid(1),
            name: "web02".into(),
            linked: true,
            pool: None,
        },
    );
}

#[test]
fn request_vm_define() {
    check(
        "request-vm-define",
        &VmDefineRequest {
            spec: VmSpec {
                name: "web01".into(),
                uuid: Some(uuid(1)),
                description: String::new(),
                memory_kib: 1_048_576,
                max_memory_kib: Some(2_097_152),
                vcpus: 2,
                max_vcpus: None,
                arch: None,
                disks: vec![DiskSpec {
                    target: "vda".into(),
                    source: DiskSource::NewVolume {
                        pool: "default".into(),
                        capacity_bytes: 10 << 30,
                    },
                    bus: DiskBus::Virtio,
                    format: Some(DiskFormat::Qcow2),
                    read_only: false,
                    device: DiskDevice::Disk,
                }],
                nics: vec![virtio_nic("default", None)],
                autostart: false,
                boot: BootSpec {
                    order: vec![],
                    kernel: Some("/var/lib/hostbus/vmlinuz".into()),
                    initrd: Some("/var/lib/hostbus/initrd.img".into()),
                    cmdline: Some("console=ttyS0".into()),
                },
                cpu_mode: None,
            },
        },
    );
}

#[test]
fn request_vm_start() {
    check(
        "request-vm-start",
        &VmStartRequest {
            uuid: uuid(1),
            paused: false,
        },
    );
}

#[test]
fn reply_ok_vm_record() {
    check("reply-ok-vm", &Reply::Ok(vm_record()));
}

#[test]
fn reply_ok_pong() {
    check(
        "reply-ok-pong",
        &Reply::Ok(Pong {
            host_id: "h1".into(),
            time: 1_700_000_000_000,
            echo: Some("hi".into()),
        }),
    );
}

#[test]
fn reply_error() {
    let e = Error::new(
        ErrorCode::VmBadPowerState,
        [
            ("vm", uuid(1).to_string()),
            ("operation", "pause".to_owned()),
            ("current", "halted".to_owned()),
            ("allowed", "running".to_owned()),
        ],
        "vm web01 is halted; pause needs running",
    );
    check("reply-error", &Reply::<VmRecord>::Error(e));
}

#[test]
fn reply_task() {
    let task = TaskRecord {
        id: uuid(9),
        command: "vm.start".into(),
        object: Some(ObjectRef {
            class: ObjectClass::Vm,
            id: uuid(1).to_string(),
        }),
        status: TaskStatus::Success,
        progress: 100,
        created_at: 1_700_000_000_000,
        finished_at: Some(1_700_000_000_250),
        cancellable: false,
        result: Some(Record::Vm(vm_record())),
        error: None,
        generation: 3,
    };
    check("reply-task", &Reply::<VmRecord>::Task(Box::new(task)));
}

#[test]
fn event_vm_started() {
    check(
        "event-vm-started",
        &Event {
            host_id: "h1".into(),
            epoch: uuid(100),
            seq: 42,
            time: 1_700_000_000_123,
            class: ObjectClass::Vm,
            action: EventAction::Started,
            object_id: uuid(1).to_string(),
            generation: 7,
            record: Record::Vm(vm_record()),
            inventory: None,
            migration: None,
        },
    );
}

#[test]
fn heartbeat() {
    check(
        "heartbeat",
        &Heartbeat {
            host_id: "h1".into(),
            epoch: uuid(100),
            last_seq: 42,
            time: 1_700_000_005_000,
            started_at: 1_700_000_000_000,
            interval_ms: 5000,
            versions: Versions {
                agent: "0.1.0".into(),
                protocol: "1.0".into(),
                libvirt: "9.0.0".into(),
                hypervisor: "Test 2.0.0".into(),
            },
            capabilities: vec!["host.ping".into(), "vm.start".into()],
            labels: vec!["rack-a".into(), "gpu".into()],
            health: Health {
                status: HealthStatus::Ok,
                hypervisor_connected: true,
                message: String::new(),
            },
            load: Load {
                in_flight: 1,
                commands_total: 1234,
                tasks_running: 0,
                vms_active: 2,
                load_avg_milli: 250,
                memory_free_kib: 8_000_000,
            },
            facts: BTreeMap::from([("kvm".to_owned(), "false".to_owned())]),
            placement: Default::default(),
        },
    );
}

#[test]
fn announcement() {
    check(
        "announcement-online",
        &Announcement {
            host_id: "h1".into(),
            action: RosterAction::Online,
            epoch: Some(uuid(100)),
            time: 1_700_000_000_050,
            started_at: 1_700_000_000_000,
            interval_ms: 5000,
            labels: vec!["rack-a".into(), "gpu".into()],
            versions: Some(Versions {
                agent: "0.1.0".into(),
                protocol: "1.1".into(),
                libvirt: "9.0.0".into(),
                hypervisor: "Test 2.0.0".into(),
            }),
            capabilities: vec!["host.ping".into(), "vm.start".into()],
            by: None,
            migration_uri: None,
        },
    );
}

/// Protocol 1.1 heartbeats may leave the command list out (it moved to
/// the announcement); 1.0 heartbeats, which carry it, still decode.
#[test]
fn a_heartbeat_without_capabilities_decodes() {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("heartbeat.json")).expect("fixture"),
    )
    .expect("json");
    v.as_object_mut().expect("object").remove("capabilities");
    let hb: Heartbeat =
        hostbus_protocol::decode(ContentType::Json, v.to_string().as_bytes(), 1 << 20)
            .expect("decodes");
    assert!(hb.capabilities.is_empty());
}

/// A generated document under docs/ equals what the code generates now
/// (rewritten instead when blessing).
fn check_generated(relative: &str, current: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    if bless() {
        std::fs::write(&path, current).expect("write the generated document");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == current,
        "{} is stale: regenerate with `HOSTBUS_BLESS=1 cargo test -p hostbus-protocol --test golden` \
         and commit it",
        path.display()
    );
}

#[test]
fn schema_in_docs_is_up_to_date() {
    check_generated(
        hostbus_protocol::schema::SCHEMA_PATH,
        &hostbus_protocol::schema::schema_text(),
    );
}

#[test]
fn openapi_in_docs_is_up_to_date() {
    check_generated(
        hostbus_protocol::openapi::OPENAPI_PATH,
        &hostbus_protocol::openapi::openapi_text(),
    );
}

#[test]
fn openapi_has_every_command_with_its_reply_shapes() {
    let doc = hostbus_protocol::openapi::openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    for c in hostbus_protocol::COMMANDS {
        let op = &doc["paths"][format!("/v1/commands/{}", c.name)]["post"];
        assert_eq!(op["operationId"], c.name, "{}", c.name);
        let r = &op["responses"];
        assert!(
            r["200"]["content"]["application/json"]["schema"]["properties"]["ok"].is_object(),
            "{}",
            c.name
        );
        assert!(
            r["default"]["content"]["application/json"]["schema"]["properties"]["error"]
                .is_object()
        );
        assert_eq!(
            r["202"].is_object(),
            c.run.changes(),
            "{}: a task only for changes",
            c.name
        );
    }
    // Every reference resolves inside the document.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap_or_default();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

#[test]
fn schema_lists_every_command_with_request_and_response() {
    let schema = hostbus_protocol::schema::schema();
    let commands = schema["commands"].as_array().expect("commands");
    assert_eq!(commands.len(), hostbus_protocol::COMMANDS.len());
    let defs = schema["$defs"].as_object().expect("$defs");
    for c in commands {
        for part in ["request", "response"] {
            let r = c[part]["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{c}: {part} is not a $ref"));
            let name = r.trim_start_matches("#/$defs/");
            assert!(defs.contains_key(name), "{name} missing from $defs");
        }
    }
}

/// docs/protocol.md §4.4 describes how `reply-ok-vm` starts: the map16
/// header it quotes and the number of `VmRecord` fields it names must be
/// those of the fixture and of a record as encoded, so the sentence goes
/// stale never again when a field is added.
#[test]
fn protocol_md_says_how_reply_ok_vm_starts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let lead = "Its reply (`reply-ok-vm`) starts `81 a2 \"ok\" de ";
    let at = doc.find(lead).expect("§4.4 quotes how reply-ok-vm starts") + lead.len();
    let sentence: String = doc[at..].chars().take(200).collect();
    let quoted = u16::from_str_radix(&sentence[..4], 16).expect("four hex digits after `de`");
    let named: usize = sentence
        .split_once("map16 of the ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("`map16 of the N `VmRecord` fields`");

    let bytes = encode(ContentType::MsgPack, &Reply::Ok(vm_record())).expect("encode");
    assert_eq!(
        bytes[..5],
        [0x81, 0xa2, b'o', b'k', 0xde],
        "a map16 in `ok`"
    );
    let encoded = u16::from_be_bytes([bytes[5], bytes[6]]);
    let fields = serde_json::to_value(vm_record())
        .expect("json")
        .as_object()
        .map(|o| o.len())
        .expect("an object");
    assert_eq!(usize::from(encoded), fields, "every field is encoded");
    let stored = std::fs::read_to_string(golden_dir().join("reply-ok-vm.msgpack.hex"))
        .expect("reply-ok-vm fixture");
    assert_eq!(unhex(&stored)[..7], bytes[..7], "the fixture starts so");
    assert_eq!(
        (quoted, named),
        (encoded, fields),
        "docs/protocol.md §4.4 says `de {quoted:04x}` and {named} fields; a VmRecord is encoded as `de {encoded:04x}`, {fields} fields"
    );
}
