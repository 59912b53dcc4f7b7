//! Helpers shared by the bridge tests: a bridge on its own private copy of
//! the shipped node file, typed calls, and event waits.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hostbus_bridge::{Bridge, CallContext, Config, ObjectEvent};
use hostbus_protocol::commands::*;
use hostbus_protocol::types::{PowerState, VmRecord, VmSpec};
use hostbus_protocol::{Command, Error, ErrorCode};
use uuid::Uuid;

/// The disk, NIC, network and VM builders of the test kit (protocol types
/// only), shared with hostbus-tests and the protocol's tests.
#[allow(unused_imports)]
pub use hostbus_testkit::{
    named, nat_network, new_disk_in, pool_name, snapshot_ref, virtio_nic, volume_disk, volume_key,
};

pub fn node_uri() -> String {
    format!("test://{}/testdata/node-h1.xml", env!("CARGO_MANIFEST_DIR"))
}

pub fn config() -> Config {
    Config {
        uri: node_uri(),
        host_id: "h1".into(),
        reconcile_interval: Duration::from_secs(3600),
        ..Config::default()
    }
}

pub fn open() -> Bridge {
    Bridge::open(config()).expect("open bridge")
}

/// Runs command `C` synchronously and returns its typed response.
pub fn run<C: Command>(b: &Bridge, req: C::Request) -> Result<C::Response, Error> {
    let resp = b.call(C::wrap(req), &CallContext::new())?;
    let name = resp.name();
    Ok(C::unwrap(resp).unwrap_or_else(|| panic!("{} answered with {name}", C::NAME)))
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorCode {
    r.expect_err("expected an error").code
}

pub const WEB01: &str = "11111111-0000-4000-8000-000000000001";
pub const DB01: &str = "11111111-0000-4000-8000-000000000002";

pub fn uuid(s: &str) -> Uuid {
    s.parse().expect("uuid")
}

pub fn spec(name: &str) -> VmSpec {
    VmSpec {
        max_memory_kib: Some(1_048_576),
        max_vcpus: Some(4),
        nics: vec![virtio_nic("default", None)],
        ..VmSpec::new(name, 524_288, 1)
    }
}

pub fn define(b: &Bridge, name: &str) -> VmRecord {
    run::<VmDefine>(b, VmDefineRequest { spec: spec(name) }).expect("define")
}

/// Defines a VM and drives it into `state`.
pub fn vm_in(b: &Bridge, name: &str, state: PowerState) -> VmRecord {
    let vm = define(b, name);
    let u = vm.uuid;
    let start = || {
        run::<VmStart>(
            b,
            VmStartRequest {
                uuid: u,
                paused: false,
            },
        )
        .expect("start")
    };
    let rec = match state {
        PowerState::Halted => vm,
        PowerState::Running => start(),
        PowerState::Paused => {
            start();
            run::<VmPause>(b, VmUuid { uuid: u }).expect("pause")
        }
        PowerState::Suspended => {
            start();
            run::<VmSuspend>(b, VmUuid { uuid: u }).expect("suspend")
        }
        other => panic!("cannot drive a vm to {other}"),
    };
    assert_eq!(rec.power_state, state, "{name} should be {state}");
    rec
}

/// Asserts that `r` failed with `code` naming `value` in parameter `param`
/// (`what`: the case); returns the error.
pub fn refused<T: std::fmt::Debug>(
    r: Result<T, Error>,
    what: &str,
    code: ErrorCode,
    param: &str,
    value: &str,
) -> Error {
    let err = r.expect_err(what);
    assert_eq!((err.code, err.param(param)), (code, Some(value)), "{what}");
    err
}

/// Asserts that `r` failed with `want`.
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, Error>, want: ErrorCode) {
    assert_eq!(code(r), want);
}

/// New disks `targets` in pool `default` (see [`new_disk_in`]).
pub fn new_disks(targets: &[&str]) -> Vec<hostbus_protocol::types::DiskSpec> {
    targets.iter().map(|t| new_disk_in(t, "default")).collect()
}

/// A new memory size for VM `uuid`.
pub fn set_memory(uuid: Uuid, memory_kib: u64) -> VmSetMemoryRequest {
    VmSetMemoryRequest { uuid, memory_kib }
}

/// A new vCPU count for VM `uuid`.
pub fn set_vcpus(uuid: Uuid, vcpus: u32) -> VmSetVcpusRequest {
    VmSetVcpusRequest { uuid, vcpus }
}

/// Disk `target` of VM `uuid`, to detach.
pub fn disk_of(uuid: Uuid, target: &str) -> VmDetachDiskRequest {
    VmDetachDiskRequest {
        uuid,
        target: target.into(),
    }
}

/// The NIC with MAC `mac` of VM `uuid`, to detach.
pub fn nic_of(uuid: Uuid, mac: &str) -> VmDetachNicRequest {
    VmDetachNicRequest {
        uuid,
        mac: mac.into(),
    }
}

/// Waits up to 5 s for an event matching `pred`, returning it.
pub fn wait_event(rx: &Receiver<ObjectEvent>, pred: impl Fn(&ObjectEvent) -> bool) -> ObjectEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return ev,
            Ok(_) => {}
            Err(e) => panic!("no matching event: {e}"),
        }
    }
}

/// The names of the volumes in `pool`.
pub fn volume_names(b: &Bridge, pool: &str) -> Vec<String> {
    run::<VolumeList>(b, pool_name(pool))
        .expect("volumes")
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// Undefines VM `uuid` (and its storage when `remove_storage`).
pub fn undefine(b: &Bridge, uuid: Uuid, remove_storage: bool) {
    run::<VmUndefine>(
        b,
        VmUndefineRequest {
            uuid,
            remove_storage,
        },
    )
    .expect("undefine");
}
