//! Faults on a real hypervisor (QEMU under TCG, libvirtd), through a real
//! agent and the SDK: an agent killed during a burst of definitions answers
//! each and defines one VM each; killed during bursts of `volume.create`,
//! `volume.clone` and `snapshot.create`, it answers each once and every
//! object stands once (one test per recovery class of
//! bridge/src/recover.rs that leaves objects behind, on a libvirtd whose
//! state outlives the agent, unlike the test driver's); and a libvirtd
//! restart shows in the host's health and loses no change.
//!
//! Needs what `scripts/qemu-setup` prepares (scripts/test runs it): without
//! its environment the suite says so and does not run, except where it is
//! required (`HOSTBUS_QEMU_REQUIRED` or `CI`), where that is a failure
//! (`hostbus_tests::QemuHost::from_env`). The real-hypervisor tests share
//! one libvirtd, so they take turns: within this binary on
//! `hostbus_tests::qemu_bench::TURNS`; the `qemu_*` binaries never run at
//! once, as `cargo test` and scripts/test's first phase run test binaries
//! one after another.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hostbus_client::protocol::types::{
    DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, HealthStatus, ObjectClass, PowerState,
    VmRecord, VolumeSpec,
};
use hostbus_client::protocol::{ErrorCode, EventAction};
use hostbus_tests::qemu_bench::{
    code, console, console_log, type_on_console, volume_names, Bench, StartLibvirtdOnDrop, BOOTED,
    HOST, MIB, TURNS,
};
use hostbus_tests::{Hostctl, QEMU_PREFIX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_a_define_burst_answers_each_and_defines_one_vm_each() {
    let _turn = TURNS.lock().await;
    // Two at a time, each step of a definition 300 ms long (its volume,
    // then the vm), so the kill lands in the middle of some.
    let Some(mut b) = Bench::start_with(
        120_000,
        &[
            ("HOSTBUS_CONCURRENCY", "2"),
            ("HOSTBUS_STEP_PAUSE_MS", "300"),
        ],
    )
    .await
    else {
        return;
    };
    let pool = format!("{QEMU_PREFIX}burst");
    b.pool(&pool).await;
    let host = b.host();
    let mut ev = b.events().await;

    // Eight definitions, each creating a volume; the agent dies while they run.
    let names: Vec<String> = (0..8).map(|i| format!("{QEMU_PREFIX}burst-{i}")).collect();
    let calls: Vec<_> = names
        .iter()
        .map(|n| {
            let host = host.clone();
            let mut spec = b.guest(n, vec![], "");
            spec.disks = vec![DiskSpec {
                target: "vda".into(),
                source: DiskSource::NewVolume {
                    pool: pool.clone(),
                    capacity_bytes: 16 * MIB,
                },
                bus: DiskBus::Virtio,
                format: None,
                read_only: false,
                device: DiskDevice::Disk,
            }];
            tokio::spawn(async move { host.define_vm(spec).await })
        })
        .collect();
    ev.next_matching(Duration::from_secs(60), "a first definition", |e| {
        e.class == ObjectClass::Vm && e.action == EventAction::Defined
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.agent.kill().expect("SIGKILL");
    let killed = Instant::now();
    b.agent.restart().expect("restart on the same journal");
    b.wait_serving().await;
    println!("agent back {:?} after SIGKILL", killed.elapsed());

    // Every call is answered, with the one VM that stands for it.
    let mut answers: BTreeMap<String, VmRecord> = BTreeMap::new();
    for (name, call) in names.iter().zip(calls) {
        let vm = call
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", b.agent.log_tail(60)));
        assert_eq!(&vm.name, name);
        answers.insert(name.clone(), vm);
    }
    let vms = host.vms(None).await.expect("vm.list");
    for (name, answer) in &answers {
        let now: Vec<&VmRecord> = vms.iter().filter(|v| &v.name == name).collect();
        assert_eq!(now.len(), 1, "{name} is defined exactly once");
        assert_eq!(
            now[0].uuid, answer.uuid,
            "{name}: the answer is the vm that stands"
        );
        assert_eq!(now[0].disks.len(), 1, "{name}");
    }
    // libvirtd holds the state: no volume without its vm, none twice.
    let mut volumes = volume_names(&host.pool(&pool)).await;
    volumes.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("{n}-vda.qcow2")).collect();
    expected.sort();
    assert_eq!(volumes, expected);
    let second = b.agent.log_since_start(2);
    let interrupted = second
        .matches("command was interrupted before it finished")
        .count();
    println!(
        "after the restart: {interrupted} interrupted commands re-run, {} answered from the journal",
        second.matches("duplicate command answered from the journal").count()
    );
    assert!(
        interrupted >= 1,
        "the kill must hit running definitions\n{}",
        b.agent.log_tail(60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libvirtd_restart_is_seen_in_health_and_loses_no_change() {
    // Reconciliation every second: it is what reconnects and catches up.

    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(1_000).await else {
        return;
    };
    let presence = b.client.presence().await.expect("presence");
    let health = || {
        presence
            .hosts()
            .into_iter()
            .find(|h| h.host_id == HOST)
            .map(|h| h.health.status)
    };
    let wait_health = |want: HealthStatus| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while health() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "health is {:?}, not {want}",
                health()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_health(HealthStatus::Ok).await;

    // This one through hostctl, as an operator would.
    let name = format!("{QEMU_PREFIX}restart");
    let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{name}-serial0.log"));
    let created = Hostctl::new(&b.url).json(&[
        "vm",
        "create",
        HOST,
        "--name",
        &name,
        "--memory",
        "192",
        "--kernel",
        b.q.kernel.to_str().expect("utf-8"),
        "--initrd",
        b.q.initrd.to_str().expect("utf-8"),
        "--cmdline",
        "console=ttyS0",
        "--cpu-mode",
        "maximum",
        "--start",
    ]);
    let vm: VmRecord = serde_json::from_value(created).expect("a vm record");
    assert_eq!(vm.power_state, PowerState::Running);
    assert_eq!(vm.boot.cmdline.as_deref(), Some("console=ttyS0"));
    let h = host.vm(vm.uuid);
    let running = h.get().await.expect("get");
    console(&running, BOOTED, 1, Duration::from_secs(60));
    let before = ev
        .vm(&vm, EventAction::Started, Duration::from_secs(10))
        .await;
    let where_ = Hostctl::new(&b.url).json(&["vm", "console", &format!("{HOST}/{name}")]);
    assert_eq!(where_["log_path"].as_str(), Some(console_log(&vm).as_str()));
    assert!(
        where_["attach"]
            .as_str()
            .is_some_and(|a| a.contains("virsh")),
        "{where_}"
    );

    // libvirtd goes away: health goes down, commands say the host is unavailable.
    let mut restart = StartLibvirtdOnDrop(true, b.q.clone());
    b.q.stop_libvirtd().expect("stop libvirtd");
    wait_health(HealthStatus::Down).await;
    assert_eq!(code(h.get().await), ErrorCode::HostUnavailable);

    // Meanwhile the guest powers itself off (typed on its serial console);
    // nobody is connected to tell.
    let pty = where_["pty"]
        .as_str()
        .expect("the console's pty")
        .to_owned();
    type_on_console(&running, &pty, "poweroff", "reboot: Power down");

    // libvirtd is back: health recovers and the missed change is an event.
    b.q.start_libvirtd().expect("start libvirtd");
    restart.0 = false;
    wait_health(HealthStatus::Ok).await;
    let stopped = ev
        .vm(&vm, EventAction::Stopped, Duration::from_secs(30))
        .await;
    assert!(stopped.generation > before.generation);
    assert_eq!(h.get().await.expect("get").power_state, PowerState::Halted);

    // Events go on as before.
    h.undefine(false).await.expect("undefine");
    let gone = ev
        .next_matching(Duration::from_secs(10), "vm.undefined", |e| {
            e.object_id == vm.uuid.to_string() && e.action == EventAction::Undefined
        })
        .await;
    assert!(gone.generation > stopped.generation);
}

// ------------------------------------------------ interrupted creations

/// An agent whose steps pause 300 ms, before and after each libvirt call,
/// two commands at a time, with a running dir pool `<prefix>recovery`.
async fn pausing_bench() -> Option<(Bench, String)> {
    let b = Bench::start_with(
        120_000,
        &[
            ("HOSTBUS_CONCURRENCY", "2"),
            ("HOSTBUS_STEP_PAUSE_MS", "300"),
        ],
    )
    .await?;
    let pool = format!("{QEMU_PREFIX}recovery");
    b.pool(&pool).await;
    Some((b, pool))
}

/// Runs `calls` at once; once an event shows that one of `class` was
/// created, SIGKILLs the agent 150 ms into the 300 ms between that
/// command's effect and its reply, restarts it on its journal and returns
/// every call's answer, panicking on any failure. Asserts that the kill
/// hit a command that had taken effect and was answered from the object's
/// state after the restart.
async fn killed_during<T, F>(b: &mut Bench, class: ObjectClass, calls: Vec<F>) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, hostbus_client::ClientError>> + Send + 'static,
{
    let mut ev = b.events().await;
    let running: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    ev.next_matching(Duration::from_secs(60), "a first creation", |e| {
        e.class == class && e.action == EventAction::Created
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.agent.kill().expect("SIGKILL");
    b.agent.restart().expect("restart on the same journal");
    b.wait_serving().await;
    let mut answers = Vec::new();
    for call in running {
        let answer = call
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("a call failed: {e}\n{}", b.agent.log_tail(60)));
        answers.push(answer);
    }
    let second = b.agent.log_since_start(2);
    let interrupted = second
        .matches("command was interrupted before it finished")
        .count();
    let from_state = second
        .matches("the interrupted command had already taken effect")
        .count();
    println!(
        "after the restart: {interrupted} interrupted commands re-run, {} answered from the journal, {from_state} answered from the object's state",
        second.matches("duplicate command answered from the journal").count(),
    );
    assert!(
        interrupted >= 1 && from_state >= 1,
        "the kill must hit a command that took effect and was not answered\n{}",
        b.agent.log_tail(60)
    );
    answers
}

fn volume(name: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        capacity_bytes: 16 * MIB,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    }
}

async fn volume_set(pool: &hostbus_client::Pool) -> BTreeSet<String> {
    volume_names(pool).await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_created_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some((mut b, pool)) = pausing_bench().await else {
        return;
    };
    let names: Vec<String> = (0..8).map(|i| format!("v{i}.qcow2")).collect();
    let p = b.host().pool(&pool);
    let calls = names
        .iter()
        .map(|n| {
            let (p, spec) = (p.clone(), volume(n));
            async move { p.create_volume(spec).await }
        })
        .collect();
    let answers = killed_during(&mut b, ObjectClass::Volume, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|v| v.name).collect();
    let expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    assert_eq!(volume_set(&p).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_made_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some((mut b, pool)) = pausing_bench().await else {
        return;
    };
    let p = b.host().pool(&pool);
    p.create_volume(volume("src.qcow2"))
        .await
        .expect("the source");
    let names: Vec<String> = (0..6).map(|i| format!("c{i}.qcow2")).collect();
    let calls = names
        .iter()
        .map(|n| {
            let (p, n) = (p.clone(), n.clone());
            async move { p.clone_volume("src.qcow2", &n).await }
        })
        .collect();
    let answers = killed_during(&mut b, ObjectClass::Volume, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|v| v.name).collect();
    let mut expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    expected.insert("src.qcow2".into());
    assert_eq!(volume_set(&p).await, expected);
    for v in p.volumes().await.expect("volumes") {
        assert_eq!(v.capacity_bytes, 16 * MIB, "{} is whole", v.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_taken_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some((mut b, pool)) = pausing_bench().await else {
        return;
    };
    let name = format!("{QEMU_PREFIX}snaps");
    let disk = DiskSpec {
        target: "vda".into(),
        source: DiskSource::NewVolume {
            pool,
            capacity_bytes: 16 * MIB,
        },
        bus: DiskBus::Virtio,
        format: None,
        read_only: false,
        device: DiskDevice::Disk,
    };
    let vm = b
        .host()
        .define_vm(b.guest(&name, vec![disk], ""))
        .await
        .expect("define");
    let handle = b.host().vm(vm.uuid);
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let calls = names
        .iter()
        .map(|n| {
            let (h, n) = (handle.clone(), n.clone());
            async move { h.snapshot(&n, "taken in a crash test").await }
        })
        .collect();
    let answers = killed_during(&mut b, ObjectClass::Snapshot, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|s| s.name).collect();
    let expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    let standing: Vec<String> = handle
        .snapshots()
        .await
        .expect("snapshots")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(standing.len(), expected.len(), "{standing:?}");
    assert_eq!(standing.into_iter().collect::<BTreeSet<_>>(), expected);
    handle.undefine(true).await.expect("undefine");
}
