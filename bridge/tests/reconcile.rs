//! Changes made behind the bridge's back, on libvirt's shared in-process
//! `test:///default` host: reconciliation catches them when callbacks are
//! off, and libvirt's callbacks deliver them when on. One test, because the
//! default test host is shared by the whole process.

mod common;

use std::time::Duration;

use common::wait_event;
use hostbus_bridge::{Bridge, Config};
use hostbus_protocol::types::{ObjectClass, PowerState, Record};
use hostbus_protocol::EventAction;

#[test]
fn changes_behind_the_bridges_back_are_caught() {
    let uri = "test:///default";
    let quiet = Bridge::open(Config {
        uri: uri.into(),
        libvirt_events: false,
        reconcile_interval: Duration::from_secs(3600),
        ..Config::default()
    })
    .expect("open");
    let rx = quiet.subscribe();
    let other = virt::connect::Connect::open(Some(uri)).expect("second connection");
    let dom = other
        .lookup_domain_by_name("test")
        .expect("the default test domain");
    let uuid = dom.uuid_string().expect("uuid");
    let before = match quiet
        .inventory()
        .expect("inventory")
        .vms
        .into_iter()
        .find(|v| v.name == "test")
    {
        Some(vm) => vm,
        None => panic!("no test domain"),
    };
    assert_eq!(before.power_state, PowerState::Running);

    dom.suspend().expect("pause behind the bridge's back");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_iter().all(|e| e.object_id != uuid),
        "no callbacks: nothing seen before reconciliation"
    );
    quiet.reconcile_now().expect("reconcile");
    let ev = wait_event(&rx, |e| e.class == ObjectClass::Vm && e.object_id == uuid);
    assert_eq!(ev.action, EventAction::Paused);
    assert!(ev.generation > before.generation);
    assert!(matches!(&ev.record, Record::Vm(vm) if vm.power_state == PowerState::Paused));

    // With libvirt's callbacks, the change arrives without reconciliation.
    let live = Bridge::open(Config {
        uri: uri.into(),
        reconcile_interval: Duration::from_secs(3600),
        ..Config::default()
    })
    .expect("open");
    let rx2 = live.subscribe();
    dom.resume().expect("resume behind the bridge's back");
    let ev = wait_event(&rx2, |e| e.class == ObjectClass::Vm && e.object_id == uuid);
    assert_eq!(ev.action, EventAction::Resumed);

    // A new definition is caught too, by both paths.
    let xml = "<domain type='test'><name>sneaky</name><memory>65536</memory><os><type>hvm</type></os></domain>";
    let sneaky = other
        .define_domain_xml(xml)
        .expect("define behind the bridge's back");
    let sneaky_uuid = sneaky.uuid_string().expect("uuid");
    wait_event(&rx2, |e| {
        e.object_id == sneaky_uuid && e.action == EventAction::Defined
    });
    quiet.reconcile_now().expect("reconcile");
    wait_event(&rx, |e| {
        e.object_id == sneaky_uuid && e.action == EventAction::Defined
    });
    sneaky.undefine().expect("undefine");
    quiet.reconcile_now().expect("reconcile");
    let gone = wait_event(&rx, |e| e.object_id == sneaky_uuid);
    assert_eq!(
        (gone.action, gone.record),
        (EventAction::Undefined, Record::None)
    );
}
