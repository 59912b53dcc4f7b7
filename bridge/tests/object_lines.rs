//! Commands on several objects: a command waits in the line of every
//! object its plan names (`volume.clone`: its source and its new name),
//! takes its places in all of them at once, and holds them together.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hostbus_bridge::{Bridge, CallContext, Config, LockEvent};
use hostbus_protocol::commands::*;
use hostbus_protocol::types::{DiskFormat, VolumeSpec};
use hostbus_protocol::{AnyRequest, ErrorCode, Planned};

fn create(b: &Bridge, name: &str) {
    run::<VolumeCreate>(
        b,
        VolumeCreateRequest {
            pool: "default".into(),
            spec: VolumeSpec {
                name: name.into(),
                capacity_bytes: 1 << 20,
                allocation_bytes: 0,
                format: DiskFormat::Raw,
            },
        },
    )
    .expect("create a volume");
}

fn clone(name: &str, new_name: &str) -> AnyRequest {
    VolumeClone::wrap(VolumeCloneRequest {
        pool: "default".into(),
        name: name.into(),
        new_name: new_name.into(),
    })
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// The agent takes turns in arrival order: a clone, then a delete of its
/// source. The clone is slow to start (the lock hook holds it on its new
/// name); the delete must wait for it in the source's line. When the clone
/// waited only in its new name's line, the delete ran first and the clone
/// failed with `VOLUME_NOT_FOUND`.
#[test]
fn a_delete_of_a_clones_source_waits_for_the_clone() {
    let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = events.clone();
    let hook = Arc::new(move |ev: LockEvent<'_>| {
        let (what, key) = match ev {
            LockEvent::Acquired(k) => ("acquired", k),
            LockEvent::Released(k) => ("released", k),
        };
        seen.lock()
            .expect("events")
            .push((thread_name(), format!("{what} {key}")));
        if ev == LockEvent::Acquired("volume:default/copy") {
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let b = Arc::new(
        Bridge::open(Config {
            lock_hook: Some(hook),
            ..config()
        })
        .expect("open"),
    );
    create(&b, "src");
    let cloning = Planned::new(clone("src", "copy")).expect("valid");
    let deleting = Planned::new(VolumeDelete::wrap(volume_key("default", "src"))).expect("valid");
    let clone_turn = b.take_turn(&cloning);
    let delete_turn = b.take_turn(&deleting);
    let run_in = |name: &str, req: Planned, turn| {
        let b = b.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || b.call_in_turn(req, &CallContext::new(), turn))
            .expect("thread")
    };
    let deleter = run_in("delete", deleting, delete_turn);
    let cloner = run_in("clone", cloning, clone_turn);
    let cloned = cloner.join().expect("join");
    let deleted = deleter.join().expect("join");
    assert!(
        cloned.is_ok(),
        "the clone ran after its source was deleted: {cloned:?}"
    );
    assert!(deleted.is_ok(), "{deleted:?}");
    let names = volume_names(&b, "default");
    assert!(
        names.contains(&"copy".to_owned()) && !names.contains(&"src".to_owned()),
        "{names:?}"
    );

    let events = events.lock().expect("events").clone();
    let at = |who: &str, what: &str| {
        events
            .iter()
            .position(|(t, e)| t == who && e == what)
            .unwrap_or_else(|| panic!("no {what} by {who} in {events:?}"))
    };
    assert!(
        at("clone", "released volume:default/src") < at("delete", "acquired volume:default/src"),
        "{events:?}"
    );
    // The clone's lines are taken in key order and released together.
    assert!(
        at("clone", "acquired volume:default/copy") < at("clone", "acquired volume:default/src"),
        "{events:?}"
    );
}

/// Clones that cross (A as B while B as A) wait in the same two lines in
/// opposite roles; taken in one global order, they never wait for each
/// other. Every command is answered, round after round, and exactly one of
/// each pair succeeds.
#[test]
fn crossing_clones_never_deadlock_and_each_is_answered() {
    const ROUNDS: usize = 40;
    // A moment inside each lock widens the window for a deadlock.
    let hook = Arc::new(|ev: LockEvent<'_>| {
        if matches!(ev, LockEvent::Acquired(_)) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let b = Arc::new(
        Bridge::open(Config {
            lock_hook: Some(hook),
            ..config()
        })
        .expect("open"),
    );
    let before = volume_names(&b, "default").len();
    for round in 0..ROUNDS {
        let (a, z) = (format!("a{round}"), format!("z{round}"));
        create(&b, &a);
        let (tx, rx) = mpsc::channel();
        for (from, to) in [(a.clone(), z.clone()), (z.clone(), a.clone())] {
            let (b, tx) = (b.clone(), tx.clone());
            std::thread::spawn(move || {
                let r = b.call(clone(&from, &to), &CallContext::new());
                let _ = tx.send((from, r.map(|_| ()).map_err(|e| e.code)));
            });
        }
        let mut answers: Vec<_> = (0..2)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        panic!("round {round}: a clone was never answered (deadlock)")
                    })
            })
            .collect();
        answers.sort();
        let (first, second) = (&answers[0], &answers[1]);
        assert_eq!(first, &(a.clone(), Ok(())), "round {round}: {answers:?}");
        assert!(
            matches!(
                second.1,
                Err(ErrorCode::AlreadyExists | ErrorCode::VolumeNotFound)
            ),
            "round {round}: {answers:?}"
        );
    }
    assert_eq!(volume_names(&b, "default").len(), before + 2 * ROUNDS);
}
