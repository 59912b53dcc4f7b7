//! A real guest's life under QEMU (TCG) and libvirtd, driven through a
//! real agent and the SDK over a private RabbitMQ node, as a cluster
//! manager would: storage, boot, devices live, balloon, snapshots,
//! suspend, reboot, shutdown, undefine; and requests a guest ignores, which
//! are not reported as done.
//!
//! Needs what `scripts/qemu-setup` prepares (scripts/test runs it): without
//! its environment the suite says so and does not run, except where it is
//! required (`HOSTBUS_QEMU_REQUIRED` or `CI`), where that is a failure
//! (`hostbus_tests::QemuHost::from_env`). The real-hypervisor tests share
//! one libvirtd, so they take turns: within this binary on
//! `hostbus_tests::qemu_bench::TURNS`; the `qemu_*` binaries never run at
//! once, as `cargo test` and scripts/test's first phase run test binaries
//! one after another.

use std::time::{Duration, Instant};

use hostbus_client::protocol::types::{
    CpuMode, DiskFormat, DiskSpec, PowerState, Record, VolumeRef, VolumeSpec,
};
use hostbus_client::protocol::{ErrorCode, EventAction};
use hostbus_tests::qemu_bench::{
    code, console, console_log, volume_names, wait_guest_disks, Bench, BOOTED, MIB,
};
use hostbus_tests::{volume_disk, QEMU_PREFIX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_lives_its_whole_life_through_the_agent() {
    // Reconciliation is rare here: every event below comes from libvirt's
    // callbacks or the operations themselves.
    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(120_000).await else {
        return;
    };
    let pool = format!("{QEMU_PREFIX}pool");
    let started_at = Instant::now();

    // The host as QEMU reports it.
    let info = host.info().await.expect("host.info");
    assert_eq!(info.hypervisor, "QEMU");
    assert!(
        !info.cpu_model.is_empty() && info.cpu_model != info.arch,
        "host.cpu_model names a CPU model, not the architecture: {info:?}"
    );
    let stats = host.stats().await.expect("host.stats");
    assert!(
        stats.cpu_time_ns.get("idle").is_some_and(|n| *n > 0)
            && stats.cpu_time_ns.contains_key("user"),
        "host CPU times: {:?}",
        stats.cpu_time_ns
    );

    // Storage: a directory pool, a qcow2 root volume and a raw data volume.
    b.pool(&pool).await;
    let p = host.pool(&pool);
    let vol = |name: &str, mib: u64, format| VolumeSpec {
        name: name.into(),
        capacity_bytes: mib * MIB,
        allocation_bytes: 0,
        format,
    };
    p.create_volume(vol("root.qcow2", 64, DiskFormat::Qcow2))
        .await
        .expect("root volume");
    p.create_volume(vol("data.img", 16, DiskFormat::Raw))
        .await
        .expect("data volume");

    // A format that contradicts the volume is refused before anything exists.
    let name = format!("{QEMU_PREFIX}life");
    let wrong = b.guest(
        &name,
        vec![volume_disk(
            "vda",
            &pool,
            "root.qcow2",
            Some(DiskFormat::Raw),
        )],
        "",
    );
    let err = host
        .define_vm(wrong)
        .await
        .expect_err("raw for a qcow2 volume");
    assert_eq!(
        (err.code(), err.param("field")),
        (
            Some(ErrorCode::InvalidArgument),
            Some("spec.disks[0].format")
        ),
        "{err}"
    );

    // Define from the volume: its format, pool and path are the volume's.
    let spec = b.guest(
        &name,
        vec![volume_disk("vda", &pool, "root.qcow2", None)],
        "",
    );
    let vm = host.define_vm(spec).await.expect("define");
    let defined = ev
        .vm(&vm, EventAction::Defined, Duration::from_secs(10))
        .await;
    assert_eq!(defined.uuid, vm.uuid);
    assert_eq!(
        vm.domain_type.as_deref(),
        Some("qemu"),
        "TCG, as configured"
    );
    assert_eq!(vm.cpu_mode, Some(CpuMode::Maximum), "TCG's default CPU");
    let vda = &vm.disks[0];
    assert_eq!(vda.format, DiskFormat::Qcow2);
    assert_eq!(
        vda.volume,
        Some(VolumeRef {
            pool: pool.clone(),
            volume: "root.qcow2".into()
        })
    );
    assert_eq!(
        vda.source_path.as_deref(),
        Some(
            b.q.pool_dir(&pool)
                .join("root.qcow2")
                .to_str()
                .expect("utf-8")
        )
    );
    let _ = std::fs::remove_file(console_log(&vm));
    let h = host.vm(vm.uuid);
    assert_eq!(
        code(p.delete_volume("root.qcow2").await),
        ErrorCode::VolumeInUse,
        "a volume a defined vm boots from is not deleted"
    );

    // Start, and watch the guest boot on its serial console.
    let t = Instant::now();
    let running = h.start().await.expect("start");
    assert_eq!(running.power_state, PowerState::Running);
    let pty = running
        .console
        .as_ref()
        .and_then(|c| c.pty.clone())
        .expect("a running vm's console has a pty");
    assert!(pty.starts_with("/dev/pts/"), "{pty}");
    let log = console(&running, BOOTED, 1, Duration::from_secs(60));
    let boot = t.elapsed();
    let guest_uptime = log
        .lines()
        .find_map(|l| l.split(BOOTED).nth(1))
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!(
        "TCG boot: shell on the console {boot:?} after vm.start (guest uptime {guest_uptime})"
    );
    ev.vm(&vm, EventAction::Started, Duration::from_secs(10))
        .await;
    wait_guest_disks(&running, "vda").await;

    // An image a running guest writes can be neither cloned nor deleted.
    assert_eq!(
        code(p.clone_volume("root.qcow2", "copy.qcow2").await),
        ErrorCode::VolumeInUse
    );

    // A raw disk attached live: the guest sees it; a snapshot is refused
    // clearly (internal snapshots need qcow2); the volume grows live.
    let r = h
        .attach_disk(volume_disk("vdb", &pool, "data.img", None))
        .await
        .expect("attach live");
    let vdb = r.disks.iter().find(|d| d.target == "vdb").expect("vdb");
    assert_eq!(vdb.format, DiskFormat::Raw, "the volume's own format");
    wait_guest_disks(&running, "vda vdb").await;
    let err = h.snapshot("s0", "").await.expect_err("a raw disk");
    assert_eq!(err.code(), Some(ErrorCode::OperationNotSupported), "{err}");
    assert!(err.message().contains("vdb"), "{err}");
    let grown = p
        .resize_volume("data.img", 32 * MIB)
        .await
        .expect("live resize");
    assert_eq!(grown.capacity_bytes, 32 * MIB);
    console(
        &running,
        "capacity change from 32768 to 65536",
        1,
        Duration::from_secs(20),
    );
    h.detach_disk("vdb").await.expect("detach live");
    wait_guest_disks(&running, "vda").await;

    // A guest that cannot answer (paused) keeps the device: the detach says
    // so, and the removal is an event once the guest lets it go.
    h.attach_disk(volume_disk("vdb", &pool, "data.img", None))
        .await
        .expect("attach again");
    wait_guest_disks(&running, "vda vdb").await;
    h.pause().await.expect("pause");
    ev.vm(&vm, EventAction::Paused, Duration::from_secs(10))
        .await;
    let err = h
        .detach_disk("vdb")
        .await
        .expect_err("a paused guest cannot release it");
    assert_eq!(
        (err.code(), err.param("device")),
        (Some(ErrorCode::DeviceDetachPending), Some("vdb")),
        "{err}"
    );
    assert!(
        h.get()
            .await
            .expect("get")
            .disks
            .iter()
            .any(|d| d.target == "vdb"),
        "the device is still there"
    );
    h.resume().await.expect("resume");
    let id = vm.uuid.to_string();
    ev.next_matching(Duration::from_secs(20), "the removal of vdb", |e| {
        e.object_id == id
            && matches!(&e.record, Record::Vm(v) if v.disks.iter().all(|d| d.target != "vdb"))
    })
    .await;
    wait_guest_disks(&running, "vda").await;

    // Memory, through the guest's balloon: in effect (and an event) once
    // the guest has given it back.
    h.set_memory(128 * 1024).await.expect("set memory");
    ev.next_matching(Duration::from_secs(30), "memory at 128 MiB", |e| {
        e.object_id == id && matches!(&e.record, Record::Vm(v) if v.memory_kib == 128 * 1024)
    })
    .await;

    // Snapshot of the running guest, revert, delete.
    let s = h.snapshot("s1", "running guest").await.expect("snapshot");
    assert_eq!(s.vm_power_state, PowerState::Running);
    let r = h.revert("s1").await.expect("revert");
    assert_eq!(r.power_state, PowerState::Running);
    h.delete_snapshot("s1").await.expect("delete snapshot");
    assert!(h.snapshots().await.expect("snapshots").is_empty());

    // Suspend to disk and back.
    let r = h.suspend().await.expect("suspend");
    assert_eq!(r.power_state, PowerState::Suspended);
    ev.vm(&vm, EventAction::Suspended, Duration::from_secs(10))
        .await;
    let r = h.resume().await.expect("restore");
    assert_eq!(r.power_state, PowerState::Running);

    // A reboot the guest performs: the event comes when it happens.
    let boots = std::fs::read_to_string(console_log(&vm))
        .unwrap_or_default()
        .matches(BOOTED)
        .count();
    h.reboot().await.expect("reboot");
    ev.vm(&vm, EventAction::Rebooted, Duration::from_secs(30))
        .await;
    console(&running, BOOTED, boots + 1, Duration::from_secs(60));

    // Clean shutdown through ACPI.
    let r = h
        .shutdown(Duration::from_secs(60), false)
        .await
        .expect("clean shutdown");
    assert_eq!(r.power_state, PowerState::Halted);
    console(
        &running,
        "hostbus-guest: power button",
        1,
        Duration::from_secs(5),
    );
    ev.vm(&vm, EventAction::Stopped, Duration::from_secs(10))
        .await;

    // Undefine with storage: its own disk goes, a read-only one stays.
    h.attach_disk(DiskSpec {
        read_only: true,
        ..volume_disk("vdb", &pool, "data.img", None)
    })
    .await
    .expect("attach read-only to the halted vm");
    h.undefine(true).await.expect("undefine with storage");
    ev.vm(&vm, EventAction::Undefined, Duration::from_secs(10))
        .await;
    let left = volume_names(&p).await;
    assert_eq!(
        left,
        ["data.img"],
        "root.qcow2 removed, the read-only data.img kept"
    );

    // Every event of the vm, in order, with growing generations.
    ev.drain(Duration::from_millis(500)).await;
    let history = ev.history(&vm.uuid.to_string());
    for a in [
        EventAction::Defined,
        EventAction::Started,
        EventAction::Paused,
        EventAction::Resumed,
        EventAction::Suspended,
        EventAction::Rebooted,
        EventAction::Stopped,
        EventAction::Undefined,
    ] {
        assert!(history.contains(&a), "no {a} in {history:?}");
    }
    println!(
        "whole life of {name}: {:?}, {} events: {:?}",
        started_at.elapsed(),
        history.len(),
        history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_guest_ignores_are_not_reported_as_done() {
    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(120_000).await else {
        return;
    };
    // No disk, and a guest that ignores the power button.
    let mut spec = b.guest(&format!("{QEMU_PREFIX}deaf"), vec![], "hostbus.noacpi");
    spec.max_vcpus = Some(2);
    let vm = host.define_vm(spec).await.expect("define");
    let _ = std::fs::remove_file(console_log(&vm));
    let h = host.vm(vm.uuid);
    let running = h.start().await.expect("start");
    console(&running, BOOTED, 1, Duration::from_secs(60));

    // A vCPU the guest cannot release (it is paused): one timeout, as
    // libvirt reports it, and the change applied nowhere.
    let r = h.set_vcpus(2).await.expect("hotplug a vcpu");
    assert_eq!(r.vcpus, 2);
    h.pause().await.expect("pause");
    let t = Instant::now();
    let err = h
        .set_vcpus(1)
        .await
        .expect_err("a paused guest cannot unplug");
    let took = t.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    assert!(
        took < Duration::from_secs(8),
        "one wait for the guest, not a retry: {took:?}"
    );
    assert_eq!(h.get().await.expect("get").vcpus, 2, "nothing half-applied");
    h.resume().await.expect("resume");

    // Nothing to keep a snapshot in: a clear refusal, not INTERNAL.
    let err = h.snapshot("s", "").await.expect_err("no disk");
    assert_eq!(err.code(), Some(ErrorCode::OperationNotSupported), "{err}");

    // The reboot request is accepted and ignored: no `rebooted` event.
    ev.drain(Duration::from_millis(300)).await;
    h.reboot().await.expect("the request is delivered");
    ev.drain(Duration::from_secs(5)).await;
    let id = vm.uuid.to_string();
    let rebooted = ev
        .seen
        .iter()
        .filter(|e| e.object_id == id && e.action == EventAction::Rebooted)
        .count();
    assert_eq!(rebooted, 0, "nothing rebooted: {:?}", ev.history(&id));

    // A clean shutdown it ignores times out; forced, it ends halted.
    let err = h
        .shutdown(Duration::from_secs(3), false)
        .await
        .expect_err("ignored");
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    let r = h
        .shutdown(Duration::from_secs(1), true)
        .await
        .expect("forced");
    assert_eq!(r.power_state, PowerState::Halted);
    h.undefine(false).await.expect("undefine");
}

/// A halted guest marked as a template refuses to start; a full clone and
/// a linked clone of it (a qcow2 overlay on its volume) each boot to the
/// guest's shell and see their disk; removing them with their storage
/// leaves the template's volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_linked_clones_of_a_halted_guest_boot() {
    let Some((_turn, b, host, _ev)) = Bench::turn_watched(120_000).await else {
        return;
    };
    let pool = format!("{QEMU_PREFIX}pool");
    b.pool(&pool).await;
    let p = host.pool(&pool);
    let root = p
        .create_volume(VolumeSpec {
            name: "base.qcow2".into(),
            capacity_bytes: 64 * MIB,
            allocation_bytes: 0,
            format: DiskFormat::Qcow2,
        })
        .await
        .expect("root volume");
    let spec = b.guest(
        &format!("{QEMU_PREFIX}base"),
        vec![volume_disk("vda", &pool, "base.qcow2", None)],
        "",
    );
    let base = host.define_vm(spec).await.expect("define");
    let t = host.vm(base.uuid);
    assert!(t.set_template(true).await.expect("mark").template);
    assert_eq!(code(t.start().await), ErrorCode::VmIsTemplate);

    for linked in [false, true] {
        let name = format!("{QEMU_PREFIX}{}", if linked { "linked" } else { "full" });
        let task = t.clone_to(&name, linked, None).await.expect("clone");
        let done = task.wait(|_| {}).await.expect("the clone task");
        let Some(Record::Vm(vm)) = done.result else {
            panic!("{name}: {done:?}");
        };
        assert!(!vm.template);
        assert_ne!(vm.uuid, base.uuid);
        let disk = format!("{name}-vda.qcow2");
        let vol = p.volume(&disk).await.expect("the clone's disk");
        let backing = linked.then(|| root.path.clone());
        assert_eq!(vol.backing_path, backing, "{disk}");
        let _ = std::fs::remove_file(console_log(&vm));
        let h = host.vm(vm.uuid);
        let t0 = Instant::now();
        let running = h.start().await.expect("start the clone");
        console(&running, BOOTED, 1, Duration::from_secs(60));
        wait_guest_disks(&running, "vda").await;
        println!("{name} booted in {:?}", t0.elapsed());
        h.destroy().await.expect("destroy");
        h.undefine(true).await.expect("undefine with storage");
        assert!(!volume_names(&p).await.contains(&disk), "{disk} removed");
    }
    assert!(!t.set_template(false).await.expect("unmark").template);
    t.undefine(true).await.expect("undefine the base");
}
