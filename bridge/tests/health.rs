//! A hypervisor that is not there yet: the bridge reports it down, answers
//! HOST_UNAVAILABLE, and connects on its own once it appears.

mod common;

use std::time::{Duration, Instant};

use common::run;
use hostbus_bridge::{Bridge, Config};
use hostbus_protocol::commands::{Empty, HostInfo, VmList, VmListRequest};
use hostbus_protocol::types::HealthStatus;
use hostbus_protocol::ErrorCode;

#[test]
fn an_unreachable_hypervisor_is_reported_and_reconnected() {
    let dir = std::env::temp_dir().join(format!("hostbus-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let node = dir.join("node.xml");
    let _ = std::fs::remove_file(&node);
    let b = Bridge::open(Config {
        uri: format!("test://{}", node.display()),
        reconcile_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .expect("open does not fail on an unreachable hypervisor");
    let h = b.health();
    assert_eq!((h.status, h.connected), (HealthStatus::Down, false));
    assert!(!h.message.is_empty());
    let err = run::<HostInfo>(&b, Empty {}).expect_err("down");
    assert_eq!(err.code, ErrorCode::HostUnavailable);
    assert!(err.is_retryable());

    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/node-h1.xml"),
        &node,
    )
    .expect("copy node");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.health().connected {
        assert!(Instant::now() < deadline, "never reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.health().status, HealthStatus::Ok);
    assert_eq!(
        run::<VmList>(&b, VmListRequest { power_state: None })
            .expect("list")
            .vms
            .len(),
        3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
