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
