//! `vm.migrate` refused, on libvirt's test driver (two simulated hosts,
//! two agents, one broker): each refusal is structured, comes from the
//! right place (the source, the destination over the bus, the fleet view)
//! and leaves everything as it was: the VM runs on its source, the
//! destination has nothing new. The migrations that happen are in
//! `qemu_migration.rs` (the test driver cannot migrate).

use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{VmMigrate, VmMigrateRequest};
use hostbus_client::protocol::types::{PowerState, TaskStatus, VmSpec};
use hostbus_client::protocol::ErrorCode;
use hostbus_client::{Client, ClientConfig, Host};
use hostbus_tests::sdk::{stop_and_see_gone, volume_names_of};
use hostbus_tests::{node_file_uri, watch_online, AgentProcess, RabbitNode};
use uuid::Uuid;

fn request(uuid: Uuid, to: &str) -> VmMigrateRequest {
    VmMigrateRequest {
        uuid,
        destination: to.into(),
        offline: false,
        copy_storage: false,
        bandwidth_mib_s: None,
        max_downtime_ms: None,
    }
}

/// Submits `req` on `host` and waits for the task's end: its error code,
/// or `None` when it succeeded.
async fn migrate(host: &Host, req: VmMigrateRequest) -> Option<(ErrorCode, String)> {
    let task = match host.submit::<VmMigrate>(req).await {
        Ok(t) => t,
        Err(e) => return Some((e.code().expect("a protocol error"), e.message().to_owned())),
    };
    let t = task.wait(|_| {}).await.expect("task");
    match t.status {
        TaskStatus::Success => None,
        _ => t.error.map(|e| (e.code, e.message)),
    }
}

async fn uuid_of(host: &Host, name: &str) -> Uuid {
    host.vm_named(name).get().await.expect("vm").uuid
}

async fn state(host: &Host, name: &str) -> PowerState {
    host.vm_named(name).get().await.expect("vm").power_state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_migration_says_why_and_leaves_the_vm_running_at_home() {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let (_peer, mut online) = watch_online(&url).await;
    let _h1 = AgentProcess::builder("h1", &url)
        .env("HOSTBUS_MIGRATION_URI", "test:///h1-migration")
        .start();
    let mut h2p = AgentProcess::builder("h2", &url)
        .libvirt_uri(node_file_uri("h2"))
        .env("HOSTBUS_MIGRATION_URI", "test:///h2-migration")
        .start();
    online
        .take(2, Duration::from_secs(60))
        .await
        .expect("agents online");
    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let (h1, h2) = (client.host("h1"), client.host("h2"));
    let web01 = uuid_of(&h1, "web01").await;
    assert_eq!(state(&h1, "web01").await, PowerState::Running);

    // The destination says where it takes migrations from.
    let caps = h2.capabilities().await.expect("caps");
    assert_eq!(caps.migration_uri.as_deref(), Some("test:///h2-migration"));

    // To itself: refused by the source, before anything is asked.
    let (code, msg) = migrate(&h1, request(web01, "h1")).await.expect("refused");
    assert_eq!(code, ErrorCode::InvalidArgument, "{msg}");

    // A name the destination already has.
    h2.define_vm(VmSpec::new("web01", 256 * 1024, 1))
        .await
        .expect("a web01 on h2");
    let (code, msg) = migrate(&h1, request(web01, "h2")).await.expect("refused");
    assert_eq!(code, ErrorCode::AlreadyExists, "{msg}");
    assert!(msg.contains("destination h2 refused"), "{msg}");
    h2.vm_named("web01")
        .undefine(false)
        .await
        .expect("undefine");

    // More memory than the destination has free.
    let big = h1
        .define_vm(VmSpec::new("big01", 512 * 1024 * 1024, 1))
        .await
        .expect("define big01");
    h1.vm(big.uuid).start().await.expect("start big01");
    let (code, msg) = migrate(&h1, request(big.uuid, "h2"))
        .await
        .expect("refused");
    assert_eq!(code, ErrorCode::InsufficientResources, "{msg}");
    assert_eq!(state(&h1, "big01").await, PowerState::Running);

    // A disabled destination.
    let rec = h2
        .call::<hostbus_client::protocol::commands::HostDisable>(
            hostbus_client::protocol::commands::HostDisableRequest {
                reason: "new firmware".into(),
            },
        )
        .await
        .expect("disable");
    assert!(!rec.placement.enabled);
    let (code, msg) = migrate(&h1, request(web01, "h2")).await.expect("refused");
    assert_eq!(code, ErrorCode::HostDisabled, "{msg}");
    assert!(msg.contains("new firmware"), "{msg}");
    let rec = h2
        .call::<hostbus_client::protocol::commands::HostEnable>(
            hostbus_client::protocol::commands::Empty {},
        )
        .await
        .expect("enable");
    assert!(rec.placement.enabled);

    // Copied storage: the destination makes the volume, the test driver
    // cannot migrate, and the volume made for it is removed again.
    let before = volume_names_of(&h2, "default").await;
    let (code, msg) = migrate(
        &h1,
        VmMigrateRequest {
            copy_storage: true,
            ..request(web01, "h2")
        },
    )
    .await
    .expect("the test driver cannot migrate");
    assert_eq!(code, ErrorCode::OperationNotSupported, "{msg}");
    let after = volume_names_of(&h2, "default").await;
    assert_eq!(after, before, "the prepare's volume was removed");
    assert!(h2.vm(web01).get().await.is_err(), "web01 did not arrive");
    assert_eq!(state(&h1, "web01").await, PowerState::Running);

    // The destination's agent stops: refused at once from the fleet view,
    // not after the prepare's timeout.
    stop_and_see_gone(&client, &mut h2p).await;
    let t = Instant::now();
    let (code, msg) = migrate(&h1, request(web01, "h2")).await.expect("refused");
    assert_eq!(code, ErrorCode::PeerUnavailable, "{msg}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refused after {:?}",
        t.elapsed()
    );
    assert_eq!(state(&h1, "web01").await, PowerState::Running);
}

/// The host-to-host steps are the agents' own: a manager's login is
/// refused them whatever its role, a login with role `agent` (or the
/// agent's own) is served, and role `agent` grants nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_may_send_the_host_to_host_steps() {
    use hostbus_client::protocol::commands::{
        VmMigrateAbort, VmMigrateAbortRequest, VmMigratePrepare, VmMigratePrepareRequest, VmStart,
        VmStartRequest,
    };
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    node.add_user("mgr", "mgr-pw").expect("mgr");
    node.add_user("peer", "peer-pw").expect("peer");
    let (_peer, mut online) = watch_online(&url).await;
    let _h2 = AgentProcess::builder("h2", &url)
        .libvirt_uri(node_file_uri("h2"))
        .env("HOSTBUS_MIGRATION_URI", "test:///h2-migration")
        .env("HOSTBUS_ROLES", "guest=admin,mgr=admin,peer=agent")
        .start();
    online
        .take(1, Duration::from_secs(60))
        .await
        .expect("agent online");
    let as_user = |user: &str, pw: &str| {
        ClientConfig::new(url.replace("guest:guest", &format!("{user}:{pw}")))
    };
    let mgr = Client::connect(as_user("mgr", "mgr-pw"))
        .await
        .expect("mgr");
    let peer = Client::connect(as_user("peer", "peer-pw"))
        .await
        .expect("peer");
    let prepare = VmMigratePrepareRequest {
        uuid: Uuid::new_v4(),
        name: "visitor".into(),
        source: "h9".into(),
        task: Uuid::new_v4(),
        live: false,
        memory_kib: 1024,
        networks: vec![],
        pools: vec![],
        disks: vec![],
        generation: 1,
    };
    let e = mgr
        .host("h2")
        .call::<VmMigratePrepare>(prepare.clone())
        .await
        .expect_err("an admin is no agent");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    let ok = peer
        .host("h2")
        .call::<VmMigratePrepare>(prepare.clone())
        .await
        .expect("an agent's login prepares");
    assert_eq!(ok.migration_uri, "test:///h2-migration");
    peer.host("h2")
        .call::<VmMigrateAbort>(VmMigrateAbortRequest {
            uuid: prepare.uuid,
            name: prepare.name.clone(),
            created: ok.created,
        })
        .await
        .expect("and aborts");
    let api01 = peer
        .host("h2")
        .vm_named("api01")
        .get()
        .await
        .expect("role agent reads");
    let e = peer
        .host("h2")
        .call::<VmStart>(VmStartRequest {
            uuid: api01.uuid,
            paused: false,
        })
        .await
        .expect_err("role agent operates nothing");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
}
