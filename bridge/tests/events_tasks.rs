//! Events with growing generations, tasks with progress and cancellation,
//! and the per-object serialization of operations.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hostbus_bridge::{Bridge, CallContext, Config, LockEvent};
use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    DiskFormat, ObjectClass, PowerState, Record, TaskStatus, VolumeSpec,
};
use hostbus_protocol::{Command, ErrorCode, EventAction};
use uuid::Uuid;

#[test]
fn each_lifecycle_change_emits_one_event_with_a_growing_generation() {
    let b = open();
    let rx = b.subscribe();
    let db = uuid(DB01);
    let is_db = |action: EventAction| {
        move |e: &hostbus_bridge::ObjectEvent| {
            e.class == ObjectClass::Vm && e.object_id == DB01 && e.action == action
        }
    };

    let mut last = 0;
    let mut step = |action: EventAction, f: &dyn Fn()| {
        f();
        let ev = wait_event(&rx, is_db(action));
        assert!(
            ev.generation > last,
            "{action}: generation {} after {last}",
            ev.generation
        );
        match &ev.record {
            Record::Vm(vm) => assert_eq!(vm.generation, ev.generation),
            other => panic!("{action}: record {other:?}"),
        }
        last = ev.generation;
    };
    step(EventAction::Started, &|| {
        run::<VmStart>(
            &b,
            VmStartRequest {
                uuid: db,
                paused: false,
            },
        )
        .expect("start");
    });
    step(EventAction::Paused, &|| {
        run::<VmPause>(&b, VmUuid { uuid: db }).expect("pause");
    });
    step(EventAction::Resumed, &|| {
        run::<VmResume>(&b, VmUuid { uuid: db }).expect("resume");
    });
    step(EventAction::Suspended, &|| {
        run::<VmSuspend>(&b, VmUuid { uuid: db }).expect("suspend");
    });
    step(EventAction::Resumed, &|| {
        run::<VmResume>(&b, VmUuid { uuid: db }).expect("restore");
    });
    step(EventAction::Rebooted, &|| {
        run::<VmReboot>(&b, VmUuid { uuid: db }).expect("reboot");
    });
    step(EventAction::Changed, &|| {
        run::<VmSetMemory>(&b, set_memory(db, 2_097_152)).expect("memory");
    });
    step(EventAction::Stopped, &|| {
        run::<VmShutdown>(
            &b,
            VmShutdownRequest {
                uuid: db,
                timeout_s: 10,
                force: false,
            },
        )
        .expect("shutdown");
    });

    // libvirt's callback for the same start arrives too; it must not make a second event.
    run::<VmStart>(
        &b,
        VmStartRequest {
            uuid: db,
            paused: false,
        },
    )
    .expect("start again");
    std::thread::sleep(Duration::from_millis(500));
    let started: Vec<_> = rx
        .try_iter()
        .filter(|e| e.object_id == DB01 && e.action == EventAction::Started)
        .collect();
    assert_eq!(started.len(), 1, "one start, one event: {started:?}");

    let vm = define(&b, "ev01");
    let ev = wait_event(&rx, |e| {
        e.action == EventAction::Defined && e.object_id == vm.uuid.to_string()
    });
    assert_eq!(ev.generation, vm.generation);
    undefine(&b, vm.uuid, false);
    let ev = wait_event(&rx, |e| {
        e.action == EventAction::Undefined && e.object_id == vm.uuid.to_string()
    });
    assert_eq!(ev.record, Record::None);
    assert!(ev.generation > vm.generation);

    let spec = VolumeSpec {
        name: "ev.qcow2".into(),
        capacity_bytes: 1 << 30,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    };
    run::<VolumeCreate>(
        &b,
        VolumeCreateRequest {
            pool: "iso".into(),
            spec,
        },
    )
    .expect("volume");
    wait_event(&rx, |e| {
        e.class == ObjectClass::Volume
            && e.action == EventAction::Created
            && e.object_id == "iso/ev.qcow2"
    });
    run::<NetworkStop>(&b, named("storage-net")).expect("net stop");
    wait_event(&rx, |e| {
        e.class == ObjectClass::Network && e.action == EventAction::Stopped
    });
    run::<PoolStop>(&b, named("iso")).expect("pool stop");
    wait_event(&rx, |e| {
        e.class == ObjectClass::Pool && e.action == EventAction::Stopped && e.object_id == "iso"
    });
}

fn slow_bridge() -> Bridge {
    Bridge::open(Config {
        step_pause: Duration::from_millis(300),
        ..config()
    })
    .expect("open")
}

fn submit<C: Command>(b: &Bridge, req: C::Request) -> Uuid {
    let ctx = CallContext::new();
    let t = b.submit(C::wrap(req), &ctx).expect("submit");
    assert_eq!(t.id, ctx.command_id);
    assert_eq!(t.command, C::NAME);
    t.id
}

fn wait_task(b: &Bridge, id: Uuid) -> hostbus_protocol::types::TaskRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = run::<TaskGet>(b, TaskId { id }).expect("task.get");
        if t.status.is_final() {
            return t;
        }
        assert!(Instant::now() < deadline, "task did not finish: {t:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_task_runs_reports_progress_and_returns_its_result() {
    let b = slow_bridge();
    let rx = b.subscribe();
    let mut s = spec("task01");
    s.disks = new_disks(&["vda", "vdb", "vdc"]);
    let id = submit::<VmDefine>(&b, VmDefineRequest { spec: s });
    let t = wait_task(&b, id);
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    assert_eq!(t.progress, 100);
    match t.result {
        Some(Record::Vm(vm)) => assert_eq!((vm.name.as_str(), vm.disks.len()), ("task01", 3)),
        other => panic!("result {other:?}"),
    }
    let progress: Vec<u8> = rx
        .try_iter()
        .filter(|e| e.class == ObjectClass::Task && e.object_id == id.to_string())
        .filter_map(|e| match e.record {
            Record::Task(t) => Some(t.progress),
            _ => None,
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
    assert!(
        progress.iter().any(|p| *p > 0 && *p < 100),
        "intermediate progress reported: {progress:?}"
    );
    assert_eq!(progress.last(), Some(&100));
    let listed = run::<TaskList>(
        &b,
        TaskListRequest {
            status: Some(TaskStatus::Success),
        },
    )
    .expect("list")
    .tasks;
    assert!(listed.iter().any(|t| t.id == id));
    assert_code(
        run::<TaskCancel>(&b, TaskId { id }),
        ErrorCode::TaskNotCancellable,
    );
    assert_code(
        run::<TaskGet>(&b, TaskId { id: Uuid::new_v4() }),
        ErrorCode::TaskNotFound,
    );

    // A failing task reports its error.
    let id = submit::<VmStart>(
        &b,
        VmStartRequest {
            uuid: Uuid::new_v4(),
            paused: false,
        },
    );
    let t = wait_task(&b, id);
    assert_eq!(t.status, TaskStatus::Failure);
    assert_eq!(t.error.map(|e| e.code), Some(ErrorCode::VmNotFound));
}

#[test]
fn a_task_can_be_cancelled_and_rolls_back() {
    let b = slow_bridge();
    let rx = b.subscribe();
    let mut s = spec("cancel01");
    s.disks = new_disks(&["vda", "vdb", "vdc", "vdd"]);
    let id = submit::<VmDefine>(&b, VmDefineRequest { spec: s });
    // Cancel once the task has made some progress.
    wait_event(
        &rx,
        |e| matches!(&e.record, Record::Task(t) if t.id == id && t.progress > 0),
    );
    let c = run::<TaskCancel>(&b, TaskId { id }).expect("cancel");
    assert!(
        matches!(c.status, TaskStatus::Cancelling | TaskStatus::Cancelled),
        "{c:?}"
    );
    let t = wait_task(&b, id);
    assert_eq!(t.status, TaskStatus::Cancelled);
    assert_eq!(t.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    assert_code(
        run::<VmGetByName>(&b, named("cancel01")),
        ErrorCode::VmNotFound,
    );
    let vols = volume_names(&b, "default");
    assert!(
        !vols.iter().any(|v| v.starts_with("cancel01-")),
        "volumes rolled back: {vols:?}"
    );
}

#[test]
fn finished_tasks_are_collected_after_their_ttl() {
    let b = Bridge::open(Config {
        task_ttl: Duration::ZERO,
        ..config()
    })
    .expect("open");
    let id = submit::<HostPing>(&b, Ping { echo: None });
    assert_eq!(wait_task(&b, id).status, TaskStatus::Success);
    b.reconcile_now().expect("reconcile");
    assert_code(run::<TaskGet>(&b, TaskId { id }), ErrorCode::TaskNotFound);
}

/// Counts, per object lock, how many operations hold it at once.
#[derive(Default)]
struct Tracker {
    inside: Mutex<HashMap<String, usize>>,
    max: Mutex<HashMap<String, usize>>,
    /// Operations inside any of the watched keys, for the rendezvous.
    together: Mutex<usize>,
    cv: Condvar,
}

#[test]
fn different_vms_run_in_parallel() {
    let tracker = Arc::new(Tracker::default());
    let t2 = tracker.clone();
    let hook = Arc::new(move |ev: LockEvent<'_>| {
        if let LockEvent::Acquired(key) = ev {
            if key.starts_with("vm:") {
                // Rendezvous: wait until an operation on another VM is inside
                // its own lock too. If operations were serialized across
                // objects, this would time out.
                let mut n = t2.together.lock().expect("lock");
                *n += 1;
                t2.cv.notify_all();
                let deadline = Instant::now() + Duration::from_secs(5);
                while *n < 2 && Instant::now() < deadline {
                    n = t2
                        .cv
                        .wait_timeout(n, Duration::from_millis(50))
                        .expect("wait")
                        .0;
                }
            }
        }
    });
    let b = Arc::new(
        Bridge::open(Config {
            lock_hook: Some(hook),
            ..config()
        })
        .expect("open"),
    );
    let vms = [uuid(DB01), uuid("11111111-0000-4000-8000-000000000003")];
    let started = Instant::now();
    let handles: Vec<_> = vms
        .into_iter()
        .map(|u| {
            let b = b.clone();
            std::thread::spawn(move || {
                run::<VmStart>(
                    &b,
                    VmStartRequest {
                        uuid: u,
                        paused: false,
                    },
                )
                .map(|r| r.power_state)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("join").expect("start"), PowerState::Running);
    }
    assert_eq!(*tracker.together.lock().expect("lock"), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the rendezvous timed out: the starts were serialized"
    );
}

#[test]
fn operations_on_one_vm_never_interleave() {
    let tracker = Arc::new(Tracker::default());
    let t2 = tracker.clone();
    let hook = Arc::new(move |ev: LockEvent<'_>| match ev {
        LockEvent::Acquired(key) => {
            let mut inside = t2.inside.lock().expect("lock");
            let n = inside.entry(key.to_owned()).or_default();
            *n += 1;
            let mut max = t2.max.lock().expect("lock");
            let m = max.entry(key.to_owned()).or_default();
            *m = (*m).max(*n);
            drop(max);
            drop(inside);
            // Hold the lock a moment so a concurrent operation would overlap.
            std::thread::sleep(Duration::from_millis(30));
        }
        LockEvent::Released(key) => {
            *t2.inside
                .lock()
                .expect("lock")
                .entry(key.to_owned())
                .or_default() -= 1;
        }
    });
    let b = Arc::new(
        Bridge::open(Config {
            lock_hook: Some(hook),
            ..config()
        })
        .expect("open"),
    );
    let web = uuid(WEB01);
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let b = b.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                run::<VmSetMemory>(&b, set_memory(web, 1_048_576 + i * 1024)).expect("set memory");
                (t0, Instant::now())
            })
        })
        .collect();
    let spans: Vec<(Instant, Instant)> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let key = format!("vm:{web}");
    assert_eq!(
        tracker.max.lock().expect("lock").get(&key),
        Some(&1),
        "two operations held vm {web} at once"
    );
    // Four 30 ms critical sections one after the other take at least 120 ms.
    let first = spans.iter().map(|s| s.0).min().expect("spans");
    let last = spans.iter().map(|s| s.1).max().expect("spans");
    assert!(
        last - first >= Duration::from_millis(120),
        "{:?}",
        last - first
    );
}
