//! A command run again with the same command id after its agent died
//! (bridge/src/recover.rs): the re-run finds what the first run did and is
//! answered from the object's state, instead of failing or doing it twice.

mod common;

use common::*;
use hostbus_bridge::CallContext;
use hostbus_protocol::commands::*;
use hostbus_protocol::types::PowerState;
use hostbus_protocol::{AnyRequest, AnyResponse, ErrorCode};

/// A NIC attached without a MAC gets one derived from the command id, so
/// the re-run names the NIC the first run attached: it is refused as
/// already there and answered with the VM, which has one NIC more, not two.
/// (With a random MAC, the re-run attached a second NIC.)
#[test]
fn a_rerun_nic_attachment_finds_the_nic_the_first_run_attached() {
    let b = open();
    let vm = vm_in(&b, "rerun-nic", PowerState::Halted);
    let before = vm.nics.len();
    let ctx = CallContext::new();
    let attach = AnyRequest::VmAttachNic(VmAttachNicRequest {
        uuid: vm.uuid,
        nic: virtio_nic("default", None),
    });
    b.call(attach.clone(), &ctx).expect("the first run");
    let err = b
        .call(attach.clone(), &ctx)
        .expect_err("the re-run finds the nic");
    assert_eq!(
        (err.code, err.param("field")),
        (ErrorCode::InvalidArgument, Some("nic.mac")),
        "{err:?}"
    );
    let Some(AnyResponse::VmAttachNic(answer)) = b.recover(&attach, &err) else {
        panic!("the re-run of {attach:?} is not answered from the vm's state");
    };
    assert_eq!(answer.nics.len(), before + 1);
    // Another command id is another NIC.
    b.call(attach, &CallContext::new())
        .expect("another attachment");
    let now = run::<VmGet>(&b, VmUuid { uuid: vm.uuid }).expect("get");
    assert_eq!(now.nics.len(), before + 2);
}

/// A re-run that fails for another reason than the first run's effect is
/// not answered from state: the failure stands.
#[test]
fn a_real_failure_of_a_rerun_is_not_taken_for_the_first_runs_effect() {
    let b = open();
    let missing = uuid::Uuid::new_v4();
    let start = AnyRequest::VmStart(VmStartRequest {
        uuid: missing,
        paused: false,
    });
    let err = b
        .call(start.clone(), &CallContext::new())
        .expect_err("no such vm");
    assert_eq!(err.code, ErrorCode::VmNotFound);
    assert!(b.recover(&start, &err).is_none());
    let create = AnyRequest::SnapshotCreate(SnapshotCreateRequest {
        vm: uuid(WEB01),
        name: "bad name/".into(),
        description: String::new(),
    });
    let err = b
        .call(create.clone(), &CallContext::new())
        .expect_err("invalid");
    assert!(b.recover(&create, &err).is_none(), "{err:?}");
}

/// An interrupted `vm.clone` that made a disk but not the VM: the clean
/// removes the disk, the re-run makes the whole clone, and a further re-run
/// (the clone defined) is answered with that VM, the same uuid and MACs.
#[test]
fn an_interrupted_clone_is_cleaned_then_finished_and_a_finished_one_answered() {
    let b = open();
    let ctx = CallContext::new();
    let clone = AnyRequest::VmClone(VmCloneRequest {
        source: uuid(DB01),
        name: "db05".into(),
        linked: false,
        pool: None,
    });
    // What a first run killed after its first step left.
    run::<VolumeClone>(
        &b,
        VolumeCloneRequest {
            pool: "default".into(),
            name: "db01.qcow2".into(),
            new_name: "db05-vda.qcow2".into(),
        },
    )
    .expect("the half-made disk");
    b.clean_interrupted(&clone);
    assert_code(
        run::<VolumeGet>(&b, volume_key("default", "db05-vda.qcow2")),
        ErrorCode::VolumeNotFound,
    );
    let Ok(AnyResponse::VmClone(first)) = b.call(clone.clone(), &ctx) else {
        panic!("the re-run did not clone");
    };
    // Killed after the definition: nothing to clean, the VM is the answer.
    b.clean_interrupted(&clone);
    run::<VolumeGet>(&b, volume_key("default", "db05-vda.qcow2")).expect("the clone's disk stays");
    let err = b.call(clone.clone(), &ctx).expect_err("the clone exists");
    assert_eq!(err.code, ErrorCode::AlreadyExists, "{err:?}");
    let Some(AnyResponse::VmClone(again)) = b.recover(&clone, &err) else {
        panic!("the re-run of a finished clone is not answered with it");
    };
    assert_eq!((again.uuid, &again.nics), (first.uuid, &first.nics));
}
