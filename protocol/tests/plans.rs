//! Facts of every command's plan that a catalogue line could get wrong
//! without failing to compile.

use hostbus_protocol::COMMANDS;
use hostbus_testkit::minimal_request;

/// Every change waits in the line of at least one object (the one its task
/// names first), so that changes to one object run one at a time; only
/// `task.cancel`, which reaches its task at once, and the host's placement
/// (`host.disable`, `host.enable`) wait in none. Reads wait
/// in none.
#[test]
fn every_change_waits_in_an_objects_line_and_no_read_does() {
    let mut missing = Vec::new();
    for c in COMMANDS {
        let Some(request) = minimal_request(c.name) else {
            missing.push(c.name);
            continue;
        };
        let plan = request.plan();
        let waits = !plan.lock_keys().is_empty();
        // host.disable and host.enable set one value of the host's.
        let expected =
            c.run.changes() && !matches!(c.name, "task.cancel" | "host.disable" | "host.enable");
        assert_eq!(waits, expected, "{}: {:?}", c.name, plan.targets);
    }
    assert!(missing.is_empty(), "no minimal request of {missing:?}");
}
