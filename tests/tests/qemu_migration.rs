//! Live migration of real guests (QEMU under TCG) between independent
//! libvirt hosts on this one machine: `scripts/libvirt-hosts` runs a
//! libvirtd per host, each in a mount namespace of its own
//! (`hostbus_tests::libvirt_hosts`), beside the machine's own libvirtd.
//!
//! Needs what `scripts/qemu-setup` prepares (scripts/test runs it): without
//! its environment the suite says so and does not run, except where it is
//! required (`HOSTBUS_QEMU_REQUIRED` or `CI`), where that is a failure
//! (`hostbus_tests::QemuHost::from_env`). The real-hypervisor tests share
//! the machine's two cores, so they take turns: within this binary on
//! `hostbus_tests::qemu_bench::TURNS`; the `qemu_*` binaries never run at
//! once, as `cargo test` and scripts/test's first phase run test binaries
//! one after another.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmMigrate, VmMigrateRequest};
use hostbus_client::protocol::types::{DiskSource, DiskSpec, PowerState, TaskStatus, VmSpec};
use hostbus_client::protocol::{ErrorCode, EventAction};
use hostbus_client::{Notification, SubscribeOptions};
use hostbus_tests::libvirt_hosts::{LibvirtHosts, IMAGES_POOL};
use hostbus_tests::qemu_bench::{BOOTED, TURNS};
use hostbus_tests::qemu_cluster::{
    counts, counts_past, last_count, migrate_req, migration_of, wait_progress, Cluster, COUNT,
    START_COUNTING,
};
use hostbus_tests::sdk::{stop_and_see_gone, volume_names_of};
use hostbus_tests::{type_on_serial, wait_for_text, Hostctl, QemuHost};

/// A 128 MiB TCG guest without disk or NIC that boots the suite's kernel
/// and initramfs to a shell on its serial console, logged to `log` (append:
/// the destination of a migration must not truncate it).
fn counting_guest(q: &QemuHost, name: &str, log: &Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'><log file='{log}' append='on'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = q.kernel.display(),
        initrd = q.initrd.display(),
        log = log.display(),
    )
}

/// The reference for the migration suite: a guest that counts on its
/// console moves live from one host to the other with plain virsh
/// (peer-to-peer over the hosts' unix-socket URIs, definition and all),
/// and goes on counting there without booting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_libvirt_hosts_live_migrate_a_counting_guest_with_virsh() {
    let _turn = TURNS.lock().await;
    let Some(q) = QemuHost::from_env().expect("the real-hypervisor environment") else {
        return;
    };
    let started = Instant::now();
    let hosts = LibvirtHosts::start(2).expect("two libvirt hosts");
    let [one, two] = hosts.hosts() else {
        panic!("two hosts: {:?}", hosts.hosts());
    };
    let up = started.elapsed();

    // The guest on host 1, counting on its console.
    let name = "hbm-counter";
    let log = hosts.shared_dir().join(format!("{name}.log"));
    let xml = hosts.shared_dir().join(format!("{name}.xml"));
    std::fs::write(&xml, counting_guest(&q, name, &log)).expect("write the domain's XML");
    one.virsh(&["define", xml.to_str().expect("utf-8")])
        .expect("define on host 1");
    one.virsh(&["start", name]).expect("start on host 1");
    wait_for_text(&log, BOOTED, 1, Duration::from_secs(60)).expect("the guest boots");
    let pty = one.virsh(&["ttyconsole", name]).expect("the console's pty");
    type_on_serial(
        Path::new(pty.trim()),
        START_COUNTING,
        &log,
        &format!("{COUNT}1"),
        Duration::from_secs(30),
    )
    .expect("the guest counts");
    wait_for_text(&log, &format!("{COUNT}3"), 1, Duration::from_secs(30))
        .expect("the guest goes on counting");

    // Live, peer to peer: host 1's libvirtd dials host 2's socket.
    let before = last_count(&log);
    let t = Instant::now();
    one.virsh(&[
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        name,
        &two.uri,
    ])
    .expect("migrate from host 1 to host 2");
    let migration = t.elapsed();
    let at_end = last_count(&log);
    let job = two
        .virsh(&["domjobinfo", "--completed", name])
        .unwrap_or_default();

    // The guest runs on host 2, defined there, and is gone from host 1.
    assert_eq!(
        two.virsh(&["domstate", name])
            .expect("domstate on host 2")
            .trim(),
        "running"
    );
    let info = two.virsh(&["dominfo", name]).expect("dominfo on host 2");
    assert!(
        info.lines()
            .any(|l| l.starts_with("Persistent:") && l.ends_with("yes")),
        "the definition moved with the guest:\n{info}"
    );
    let left = one
        .virsh(&["list", "--all", "--name"])
        .expect("list on host 1");
    assert!(
        !left.lines().any(|l| l.trim() == name),
        "{name} is still on host 1: {left}"
    );

    // It goes on counting there (a number the source never printed), and
    // never booted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while last_count(&log) <= at_end {
        assert!(
            Instant::now() < deadline,
            "the guest stopped counting at {} after its migration",
            last_count(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = counts(&log);
    assert!(
        at_end >= before && last_count(&log) > before,
        "counts {before} before the migration, {at_end} at its end, then {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "the counter went on one by one, none lost or repeated: {seen:?}"
    );
    let text = std::fs::read_to_string(&log).expect("the console log");
    assert_eq!(
        (
            text.matches(BOOTED).count(),
            text.matches("Linux version").count()
        ),
        (1, 1),
        "the guest booted once, on host 1"
    );

    // The machine's own libvirtd was left alone.
    let own = q
        .virsh(&["list", "--all", "--name"])
        .expect("the machine's libvirtd answers");
    assert!(!own.lines().any(|l| l.trim() == name), "{own}");

    eprintln!(
        "two libvirt hosts up in {up:.1?}; live migration of a counting 128 MiB TCG guest in \
         {migration:.1?} (counts {before} before, {at_end} at its end, {} after); whole test \
         {:.1?}\n{}",
        last_count(&log),
        started.elapsed(),
        job.lines()
            .filter(|l| l.starts_with("Time elapsed:") || l.contains("downtime"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// A running guest with a disk moves live to the other host with its
/// disk's data, counting on; both hosts' events say it migrated; the
/// source keeps nothing of it; then, halted, it goes back offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_live_with_its_disk_and_back_offline() {
    let Some((_turn, c)) = Cluster::turn(2).await else {
        return;
    };
    let disk = DiskSpec::new(
        "vda",
        DiskSource::NewVolume {
            pool: IMAGES_POOL.into(),
            capacity_bytes: 16 << 20,
        },
    );
    let (vm, log) = c.counting_guest(0, "hbm-live", vec![disk]).await;
    let volume = vm.disks[0].volume.clone().expect("a volume").volume;
    c.type_on(
        0,
        "hbm-live",
        "printf hbdata42 > /dev/vda && sync && echo wrote-$((6*7))",
        &log,
        "wrote-42",
    );
    let mut events = c
        .client
        .subscribe(
            &["m1.vm.#", "m2.vm.#"],
            SubscribeOptions {
                resync: false,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let task = c
        .host(0)
        .submit::<VmMigrate>(VmMigrateRequest {
            copy_storage: true,
            ..migrate_req(vm.uuid, 1)
        })
        .await
        .expect("submit");
    let mut progress = Vec::new();
    let t = task
        .wait(|t| progress.push(t.progress))
        .await
        .expect("task");
    let m = migration_of(&t);
    assert_eq!((m.source.as_str(), m.host.as_str()), ("m1", "m2"));
    assert_eq!(m.vm.power_state, PowerState::Running);
    assert!(m.live && m.copy_storage);
    let at_end = last_count(&log);
    counts_past(&log, at_end).await;

    // One guest, on m2; m1 keeps neither it nor its disk.
    assert_eq!(c.domains(0), Vec::<String>::new());
    assert_eq!(c.domains(1), vec!["hbm-live".to_owned()]);
    assert_eq!(c.power_state(1, vm.uuid).await, PowerState::Running);
    assert!(c.host(0).vm(vm.uuid).get().await.is_err());
    let left = volume_names_of(&c.host(0), IMAGES_POOL).await;
    assert!(!left.contains(&volume), "{volume} left on m1: {left:?}");
    // Its disk's data came along; it never booted again.
    c.type_on(
        1,
        "hbm-live",
        "echo read-$(head -c 8 /dev/vda)-end",
        &log,
        "read-hbdata42-end",
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.matches(BOOTED).count(), 1, "booted once");
    let seen = counts(&log);
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "counted on one by one: {seen:?}"
    );

    // The events: gone from m1 and arrived on m2, both naming the move,
    // the generation growing across hosts.
    let mut from_m1 = Vec::new();
    let (mut gone, mut arrived) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while gone.is_none() || arrived.is_none() {
        assert!(
            Instant::now() < deadline,
            "gone {gone:?}, arrived {arrived:?}"
        );
        let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(5), events.next()).await else {
            continue;
        };
        let Ok(Notification::Event(ev)) = n else {
            continue;
        };
        if ev.object_id != vm.uuid.to_string() {
            continue;
        }
        if ev.host_id == "m1" {
            from_m1.push(ev.action);
        }
        if let Some(note) = &ev.migration {
            assert_eq!(
                (note.source.as_str(), note.destination.as_str(), note.task),
                ("m1", "m2", task.id())
            );
            if ev.host_id == "m1" {
                assert_eq!(ev.action, EventAction::Undefined);
                gone = Some(ev.generation);
            } else {
                assert_eq!(ev.host_id, "m2");
                arrived = Some(ev.generation);
            }
        }
    }
    assert!(
        arrived > gone,
        "m2's generation {arrived:?} continues above m1's {gone:?}"
    );
    assert_eq!(
        from_m1,
        [EventAction::Undefined],
        "m1 publishes the VM's departure, not the move's pause and stop"
    );

    // Halted, it goes back offline (its definition only), with hostctl.
    c.host(1)
        .vm(vm.uuid)
        .destroy()
        .await
        .expect("destroy on m2");
    let ctl = Hostctl::new(&c.url);
    let b = ctl.json(&["vm", "migrate", "m2/hbm-live", "--to", "m1", "--offline"]);
    assert_eq!(
        (&b["host"], &b["live"], &b["vm"]["uuid"]),
        (
            &serde_json::json!("m1"),
            &serde_json::json!(false),
            &serde_json::json!(vm.uuid.to_string())
        ),
        "{b}"
    );
    assert_eq!(c.power_state(0, vm.uuid).await, PowerState::Halted);
    assert_eq!(c.domains(1), Vec::<String>::new());
    eprintln!(
        "live migration with copied storage (16 MiB disk, 128 MiB guest): {} ms, downtime {:?} ms, \
         {:?} bytes, progress seen {progress:?}; offline back: {} ms",
        m.elapsed_ms, m.downtime_ms, m.data_bytes, b["elapsed_ms"]
    );
}

/// A slow migration (bandwidth-limited) is the VM's one operation: a
/// second is refused while it runs; cancelled, it leaves the guest
/// running on its source and nothing on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_leaves_the_guest_running_on_its_source() {
    let Some((_turn, mut c)) = Cluster::turn(2).await else {
        return;
    };
    let (vm, log) = c.counting_guest(0, "hbm-slow", vec![]).await;

    // Refused by the destination, which has a VM of that name: nothing moves.
    let clash = c
        .host(1)
        .define_vm(VmSpec::new("hbm-slow", 64 * 1024, 1))
        .await
        .expect("a namesake on m2");
    let t = c.migrate(0, migrate_req(vm.uuid, 1)).await;
    assert_eq!(t.status, TaskStatus::Failure, "{t:?}");
    let e = t.error.expect("an error");
    assert_eq!(e.code, ErrorCode::AlreadyExists, "{e:?}");
    assert!(e.message.contains("destination m2 refused"), "{e:?}");
    c.host(1)
        .vm(clash.uuid)
        .undefine(false)
        .await
        .expect("remove the namesake");
    assert_eq!(c.domains(0), vec!["hbm-slow".to_owned()]);

    let task = c
        .host(0)
        .submit::<VmMigrate>(VmMigrateRequest {
            bandwidth_mib_s: Some(1),
            ..migrate_req(vm.uuid, 1)
        })
        .await
        .expect("submit");
    let t = wait_progress(&task, 6).await;
    assert_eq!(t.status, TaskStatus::Running, "{t:?}");
    let second = c.host(0).submit::<VmMigrate>(migrate_req(vm.uuid, 1)).await;
    let Err(e) = second else {
        panic!("a second migration was accepted")
    };
    assert_eq!(e.code(), Some(ErrorCode::OperationInProgress), "{e}");
    assert_eq!(e.param("task"), Some(task.id().to_string().as_str()));

    task.cancel().await.expect("cancel");
    let t = task.wait(|_| {}).await.expect("task");
    assert_eq!(t.status, TaskStatus::Cancelled, "{t:?}");
    assert_eq!(c.power_state(0, vm.uuid).await, PowerState::Running);
    assert_eq!(c.domains(1), Vec::<String>::new());
    counts_past(&log, last_count(&log)).await;

    // m2's agent stops: refused at once from the fleet view.
    stop_and_see_gone(&c.client, &mut c.agents[1]).await;
    let t0 = Instant::now();
    let t = c.migrate(0, migrate_req(vm.uuid, 1)).await;
    assert_eq!(
        t.error.as_ref().map(|e| e.code),
        Some(ErrorCode::PeerUnavailable),
        "{t:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(c.domains(0), vec!["hbm-slow".to_owned()]);
}

/// The source's agent is killed while libvirt migrates (peer to peer, the
/// move goes on without it): restarted, it finds the guest on the
/// destination, and the task says so; one guest runs, on m2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_agent_killed_mid_migration_ends_with_one_guest_and_a_task_that_says_where() {
    let Some((_turn, mut c)) = Cluster::turn(2).await else {
        return;
    };
    let (vm, log) = c.counting_guest(0, "hbm-crash", vec![]).await;
    let task = c
        .host(0)
        .submit::<VmMigrate>(VmMigrateRequest {
            bandwidth_mib_s: Some(8),
            ..migrate_req(vm.uuid, 1)
        })
        .await
        .expect("submit");
    let t = wait_progress(&task, 8).await;
    assert_eq!(t.status, TaskStatus::Running, "{t:?}");
    let journal = c.agents[0].journal_path().to_path_buf();
    c.agents[0].kill().expect("SIGKILL m1's agent");
    // The killed agent's folder (its journal and state) stays until the
    // end: the new agent runs on them.
    let restarted = Cluster::agent(&c.hosts, &c.url, 0, Some(&journal));
    let _killed = std::mem::replace(&mut c.agents[0], restarted);

    // The broker gives the restarted agent the command again; its
    // recovery waits for libvirt's job and answers with where the VM is.
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = loop {
        match task.get().await {
            Ok(t) if t.status.is_final() => break t,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the task never ended after the restart"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let m = migration_of(&t);
    assert_eq!(m.host, "m2");
    assert_eq!(c.domains(0), Vec::<String>::new(), "nothing left on m1");
    assert_eq!(c.domains(1), vec!["hbm-crash".to_owned()]);
    assert_eq!(
        c.virt(1)
            .virsh(&["domstate", "hbm-crash"])
            .expect("state")
            .trim(),
        "running"
    );
    counts_past(&log, last_count(&log)).await;
}

/// A host with three running guests is drained to two others: it is
/// disabled first, every guest moves (two at a time) to the target with
/// the most free memory, both targets get some, each guest runs on, and
/// the report says where each went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_three_guests_is_evacuated_to_two_others() {
    let Some((_turn, c)) = Cluster::turn(3).await else {
        return;
    };
    let mut logs = Vec::new();
    for name in ["hbm-evac1", "hbm-evac2", "hbm-evac3"] {
        let (_, log) = c.counting_guest(0, name, vec![]).await;
        logs.push(log);
    }
    let started = Instant::now();
    let mut finished = 0;
    let report = c
        .client
        .evacuate(
            "m1",
            hostbus_client::Targets::Hosts(vec!["m2".into(), "m3".into()]),
            hostbus_client::EvacuateOptions::default(),
            |p| {
                if matches!(p, hostbus_client::EvacuationProgress::Finished(_)) {
                    finished += 1;
                }
            },
        )
        .await
        .expect("evacuate");
    let took = started.elapsed();
    assert!(report.all_moved(), "{report:?}");
    assert_eq!((report.vms.len(), finished), (3, 3), "{report:?}");
    let to: Vec<&str> = report
        .vms
        .iter()
        .filter_map(|v| v.destination.as_deref())
        .collect();
    assert!(
        to.contains(&"m2") && to.contains(&"m3"),
        "placed by free memory over both targets: {to:?}"
    );
    assert_eq!(c.domains(0), Vec::<String>::new(), "m1 is empty");
    let mut moved = c.domains(1);
    moved.extend(c.domains(2));
    moved.sort();
    assert_eq!(moved, ["hbm-evac1", "hbm-evac2", "hbm-evac3"]);
    for log in &logs {
        counts_past(log, last_count(log)).await;
    }
    let m1 = c.host(0).info().await.expect("m1");
    assert!(
        !m1.placement.enabled,
        "m1 stays disabled: {:?}",
        m1.placement
    );
    // The fleet view shows it (from m1's heartbeats), until it is enabled.
    let ctl = Hostctl::new(&c.url);
    let placement_of_m1 = |ctl: &Hostctl| {
        ctl.json(&["hosts"])
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["host_id"] == "m1").cloned())
            .map(|h| h["placement"].clone())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while placement_of_m1(&ctl).map(|p| p["enabled"].clone()) != Some(serde_json::json!(false)) {
        assert!(
            Instant::now() < deadline,
            "hostctl hosts: {:?}",
            placement_of_m1(&ctl)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ctl.json(&["host", "enable", "m1"]);
    eprintln!(
        "evacuation of 3 running 128 MiB TCG guests to 2 hosts, 2 at a time: {took:.1?}; each: {:?}",
        report
            .vms
            .iter()
            .map(|v| format!("{} → {:?} {:?}", v.name, v.destination, v.outcome))
            .collect::<Vec<_>>()
    );
}
