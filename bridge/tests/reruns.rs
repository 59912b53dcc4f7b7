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

/// An error a re-run might get, made here to try each kind of answer's
/// condition with the errors it must not take for the first run's effect.
fn error(code: ErrorCode, params: &[(&str, &str)]) -> hostbus_protocol::Error {
    hostbus_protocol::Error::new(
        code,
        params.iter().map(|(k, v)| (*k, (*v).to_owned())),
        "made by the test",
    )
}

/// Each kind of answer from state (bridge/src/recover.rs, `Done`) is given
/// for the failure the first run's effect causes, taken from a real re-run,
/// and for no other: another code, the right code with the wrong detail.
#[test]
fn each_kind_of_rerun_is_answered_from_state_only_for_its_own_failure() {
    use hostbus_protocol::ErrorCode as E;
    let b = open();
    let ctx = CallContext::new();
    let again = |req: &AnyRequest| b.call(req.clone(), &ctx).expect_err("the re-run fails");

    // A power operation: the VM is in a state the first run left it in.
    let running = vm_in(&b, "rr-power", PowerState::Running);
    let start = AnyRequest::VmStart(VmStartRequest {
        uuid: running.uuid,
        paused: false,
    });
    let err = again(&start);
    assert_eq!(
        (err.code, err.param("current")),
        (E::VmBadPowerState, Some("running"))
    );
    let Some(AnyResponse::VmStart(vm)) = b.recover(&start, &err) else {
        panic!("a start re-run on a running vm is not answered with it: {err:?}");
    };
    assert_eq!(vm.uuid, running.uuid);
    for other in [
        error(E::VmBadPowerState, &[("current", "halted")]),
        error(E::VmBadPowerState, &[]),
        error(E::VmNotFound, &[("current", "running")]),
    ] {
        assert!(b.recover(&start, &other).is_none(), "{other:?}");
    }

    // A create: the object exists.
    let define_it = AnyRequest::VmDefine(VmDefineRequest {
        spec: spec("rr-define"),
    });
    b.call(define_it.clone(), &ctx).expect("the first run");
    let err = again(&define_it);
    let Some(AnyResponse::VmDefine(vm)) = b.recover(&define_it, &err) else {
        panic!("a define re-run is not answered with the vm: {err:?}");
    };
    assert_eq!(vm.name, "rr-define");
    assert!(b
        .recover(&define_it, &error(E::InvalidArgument, &[]))
        .is_none());

    // A snapshot create: the snapshot of that name, not another one.
    let snap = |name: &str| {
        AnyRequest::SnapshotCreate(SnapshotCreateRequest {
            vm: running.uuid,
            name: name.into(),
            description: String::new(),
        })
    };
    b.call(snap("rr-s0"), &ctx).expect("a first snapshot");
    b.call(snap("rr-s1"), &ctx).expect("the first run");
    let err = again(&snap("rr-s1"));
    let Some(AnyResponse::SnapshotCreate(s)) = b.recover(&snap("rr-s1"), &err) else {
        panic!("a snapshot re-run is not answered with the snapshot: {err:?}");
    };
    assert_eq!(s.name, "rr-s1");

    // A removal: the object is gone, with this removal's not-found code.
    let undefine = AnyRequest::VmUndefine(VmUndefineRequest {
        uuid: uuid::Uuid::new_v4(),
        remove_storage: false,
    });
    let err = again(&undefine);
    assert!(
        matches!(b.recover(&undefine, &err), Some(AnyResponse::VmUndefine(_))),
        "{err:?}"
    );
    assert!(b.recover(&undefine, &error(E::PoolNotFound, &[])).is_none());

    // An attachment: the device is there (this field, not another).
    let halted = define(&b, "rr-devices");
    let nic = virtio_nic("default", Some("52:54:00:00:aa:01"));
    let attach = AnyRequest::VmAttachNic(VmAttachNicRequest {
        uuid: halted.uuid,
        nic,
    });
    b.call(attach.clone(), &ctx).expect("the first run");
    let err = again(&attach);
    assert!(
        matches!(b.recover(&attach, &err), Some(AnyResponse::VmAttachNic(_))),
        "{err:?}"
    );
    for other in [
        error(E::InvalidArgument, &[("field", "disk.target")]),
        error(E::InvalidArgument, &[]),
        error(E::VmNotFound, &[("field", "nic.mac")]),
    ] {
        assert!(b.recover(&attach, &other).is_none(), "{other:?}");
    }

    // A detachment: the device is gone.
    let detach = AnyRequest::VmDetachNic(nic_of(halted.uuid, "52:54:00:00:aa:02"));
    let err = again(&detach);
    assert_eq!(err.code, E::DeviceNotFound, "{err:?}");
    assert!(
        matches!(b.recover(&detach, &err), Some(AnyResponse::VmDetachNic(_))),
        "{err:?}"
    );
    assert!(b.recover(&detach, &error(E::VmNotFound, &[])).is_none());

    // A pool or network switched: it is already in the state the first
    // run left it in.
    let pool = AnyRequest::PoolStart(ObjectName {
        name: "default".into(),
    });
    let err = again(&pool);
    assert!(
        matches!(b.recover(&pool, &err), Some(AnyResponse::PoolStart(p)) if p.name == "default"),
        "{err:?}"
    );
    assert!(b.recover(&pool, &error(E::PoolNotFound, &[])).is_none());
    let net = AnyRequest::NetworkStart(ObjectName {
        name: "default".into(),
    });
    let err = again(&net);
    assert!(
        matches!(b.recover(&net, &err), Some(AnyResponse::NetworkStart(n)) if n.name == "default"),
        "{err:?}"
    );
    assert!(b.recover(&net, &error(E::NetworkNotFound, &[])).is_none());

    // Re-runs that run again as new are never answered from state.
    let reboot = AnyRequest::VmReboot(VmUuid { uuid: running.uuid });
    assert!(b
        .recover(
            &reboot,
            &error(E::VmBadPowerState, &[("current", "running")])
        )
        .is_none());
}

/// The other host, as a migration's source sees it: a real bridge on its
/// own node, called in process instead of over the bus.
struct OtherHost(hostbus_bridge::Bridge);

impl hostbus_bridge::Peers for OtherHost {
    fn prepare(
        &self,
        _host: &str,
        request: VmMigratePrepareRequest,
    ) -> Result<VmMigratePrepareResponse, hostbus_protocol::Error> {
        run::<VmMigratePrepare>(&self.0, request)
    }
    fn abort(
        &self,
        _host: &str,
        request: VmMigrateAbortRequest,
    ) -> Result<(), hostbus_protocol::Error> {
        run::<VmMigrateAbort>(&self.0, request).map(drop)
    }
    fn vm_get(
        &self,
        _host: &str,
        uuid: uuid::Uuid,
    ) -> Result<hostbus_protocol::types::VmRecord, hostbus_protocol::Error> {
        run::<VmGet>(&self.0, VmUuid { uuid })
    }
}

/// A migration re-run whose VM is gone from here (`VM_NOT_FOUND`) is
/// answered with where it runs when the destination has it; for another
/// failure, or a VM the destination lacks, the failure stands.
#[test]
fn a_migration_rerun_is_answered_from_its_destination_only_when_the_vm_left() {
    use hostbus_protocol::ErrorCode as E;
    let h2 = open();
    let arrived = define(&h2, "rr-moved");
    let b = hostbus_bridge::Bridge::open(hostbus_bridge::Config {
        peers: Some(std::sync::Arc::new(OtherHost(h2))),
        ..config()
    })
    .expect("open the source");
    let migrate = |uuid| {
        AnyRequest::VmMigrate(VmMigrateRequest {
            uuid,
            destination: "h2".into(),
            offline: true,
            copy_storage: false,
            bandwidth_mib_s: None,
            max_downtime_ms: None,
        })
    };
    let gone = error(E::VmNotFound, &[]);
    let Some(AnyResponse::VmMigrate(m)) = b.recover(&migrate(arrived.uuid), &gone) else {
        panic!("a migration whose vm runs on its destination is not answered with it");
    };
    assert_eq!(
        (m.vm.uuid, m.host.as_str(), m.source.as_str()),
        (arrived.uuid, "h2", "h1")
    );
    assert!(b
        .recover(&migrate(arrived.uuid), &error(E::PeerUnavailable, &[]))
        .is_none());
    assert!(b.recover(&migrate(uuid::Uuid::new_v4()), &gone).is_none());
}

/// What an interrupted `vm.define` or `vm.migrate_prepare` left (volumes
/// without their VM) is removed before the re-run; with the VM there, its
/// volumes stay.
#[test]
fn volumes_left_without_their_vm_are_cleaned_and_with_it_kept() {
    let b = open();
    // vm.define: its new disk's volume made, the VM not defined.
    let mut s = spec("rr-left");
    s.disks = new_disks(&["vda"]);
    let first = AnyRequest::VmDefine(VmDefineRequest { spec: s });
    let vm = match b.call(first.clone(), &CallContext::new()) {
        Ok(AnyResponse::VmDefine(vm)) => vm,
        other => panic!("define: {other:?}"),
    };
    let disk = "rr-left-vda.qcow2";
    assert!(volume_names(&b, "default").iter().any(|v| v == disk));
    b.clean_interrupted(&first);
    assert!(
        volume_names(&b, "default").iter().any(|v| v == disk),
        "the vm's disk was removed"
    );
    undefine(&b, vm.uuid, false);
    b.clean_interrupted(&first);
    assert!(
        !volume_names(&b, "default").iter().any(|v| v == disk),
        "a volume left without its vm stayed"
    );

    // vm.migrate_prepare: the volumes it made, the VM never arrived.
    let prepare = |uuid| {
        AnyRequest::VmMigratePrepare(VmMigratePrepareRequest {
            uuid,
            name: "rr-arriving".into(),
            source: "h2".into(),
            task: uuid::Uuid::new_v4(),
            live: false,
            memory_kib: 524_288,
            networks: vec![],
            pools: vec!["default".into()],
            disks: vec![hostbus_protocol::types::MigrationDisk {
                pool: "default".into(),
                name: "rr-arriving-vda.qcow2".into(),
                capacity_bytes: 1 << 20,
                format: hostbus_protocol::types::DiskFormat::Qcow2,
            }],
            generation: 1,
        })
    };
    run::<VolumeCreate>(
        &b,
        VolumeCreateRequest {
            pool: "default".into(),
            spec: hostbus_protocol::types::VolumeSpec {
                name: "rr-arriving-vda.qcow2".into(),
                capacity_bytes: 1 << 20,
                allocation_bytes: 0,
                format: hostbus_protocol::types::DiskFormat::Qcow2,
            },
        },
    )
    .expect("the volume a prepare made");
    let here = define(&b, "rr-here");
    b.clean_interrupted(&prepare(here.uuid));
    assert!(
        volume_names(&b, "default")
            .iter()
            .any(|v| v == "rr-arriving-vda.qcow2"),
        "the volumes of a vm that arrived were removed"
    );
    b.clean_interrupted(&prepare(uuid::Uuid::new_v4()));
    assert!(
        !volume_names(&b, "default")
            .iter()
            .any(|v| v == "rr-arriving-vda.qcow2"),
        "the volumes of a vm that never arrived stayed"
    );
}
