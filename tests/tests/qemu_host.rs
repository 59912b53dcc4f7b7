//! The real hypervisor's host (QEMU under TCG, libvirtd) through a real
//! agent: networks defined, started and stopped; a host without `qemu-img`
//! says which volumes it can create; `scripts/qemu-setup` starts a virtlogd
//! that answers when only a decoy of its name runs.
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

use hostbus_client::protocol::types::{DiskFormat, ForwardMode, NetworkSpec, VolumeSpec};
use hostbus_client::protocol::ErrorCode;
use hostbus_tests::qemu_bench::{volume_names, Bench, MIB, TURNS};
use hostbus_tests::{nat_network, QemuHost, QEMU_PREFIX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_defined_started_and_stopped() {
    let Some((_turn, b)) = Bench::turn(120_000).await else {
        return;
    };
    let host = b.host();
    let nat = format!("{QEMU_PREFIX}nat");
    let n = host
        .define_network(nat_network(
            &nat,
            "hbqbr0",
            "10.203.77.1",
            ("10.203.77.100", "10.203.77.199"),
        ))
        .await
        .expect("define a NAT network");
    assert!(!n.active);
    let net = host.network(&nat);
    let n = net.start().await.expect("start");
    assert!(n.active);
    assert_eq!(n.bridge.as_deref(), Some("hbqbr0"));
    let n = net.stop().await.expect("stop");
    assert!(!n.active);
    net.undefine().await.expect("undefine");

    // A network on an existing host bridge is defined without the stp and
    // delay libvirt refuses for it.
    let bridged = format!("{QEMU_PREFIX}lan");
    let n = host
        .define_network(NetworkSpec {
            name: bridged.clone(),
            bridge: Some("hbqlan0".into()),
            forward: ForwardMode::Bridge,
            ip: None,
            autostart: false,
        })
        .await
        .expect("define a bridge network");
    assert_eq!(n.forward, ForwardMode::Bridge);
    host.network(&bridged).undefine().await.expect("undefine");
}

/// A hypervisor host without `qemu-img` (Debian's `qemu-utils`, only a
/// recommendation of QEMU's packages) says so in its capabilities and
/// refuses a qcow2 volume with a structured error naming the package, not
/// `INTERNAL`; it still creates raw volumes. The agent is started with a
/// `PATH` where no `qemu-img` is, as on such a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_qemu_img_says_which_volumes_it_can_create() {
    let _turn = TURNS.lock().await;
    let Some(b) = Bench::start(120_000).await else {
        return;
    };
    let caps = b.host().capabilities().await.expect("capabilities");
    assert_eq!(caps.volume_formats, [DiskFormat::Raw, DiskFormat::Qcow2]);
    drop(b);

    let Some(b) = Bench::start_with(120_000, &[("PATH", "/nonexistent")]).await else {
        return;
    };
    let caps = b.host().capabilities().await.expect("capabilities");
    assert_eq!(caps.volume_formats, [DiskFormat::Raw]);
    let pool = format!("{QEMU_PREFIX}noimg");
    b.pool(&pool).await;
    let p = b.host().pool(&pool);
    let vol = |name: &str, format| VolumeSpec {
        name: name.into(),
        capacity_bytes: 8 * MIB,
        allocation_bytes: 0,
        format,
    };
    let e = p
        .create_volume(vol("disk.qcow2", DiskFormat::Qcow2))
        .await
        .expect_err("no qemu-img for qcow2");
    assert_eq!(e.code(), Some(ErrorCode::OperationNotSupported), "{e}");
    assert!(
        e.param("reason").is_some_and(|r| r.contains("qemu-utils")),
        "{e}"
    );
    assert_eq!(volume_names(&p).await, Vec::<String>::new());
    let raw = p
        .create_volume(vol("disk.raw", DiskFormat::Raw))
        .await
        .expect("a raw volume needs no qemu-img");
    assert_eq!(raw.format, DiskFormat::Raw);
    p.delete_volume("disk.raw").await.expect("delete");
}

/// Whether virtlogd answers on its admin socket.
fn virtlogd_answers() -> bool {
    std::process::Command::new("virt-admin")
        .args(["-q", "-c", "virtlogd:///system", "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `scripts/qemu-setup` starts a daemon the suite needs when it does not
/// answer on its socket, whatever runs under its name: in a chroot, the
/// surrounding machine's virtlogd made it skip starting one, and every
/// `vm.start` then failed with `HOST_UNAVAILABLE: Failed to connect socket
/// to '/run/libvirt/virtlogd-sock'`. Here a decoy named `virtlogd` runs
/// while the real one is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_starts_virtlogd_when_only_a_decoy_of_its_name_runs() {
    let _turn = TURNS.lock().await;
    let Some(q) = QemuHost::from_env().expect("the real-hypervisor environment") else {
        return;
    };
    let pkill = std::process::Command::new("pkill")
        .args(["-x", "virtlogd"])
        .status()
        .expect("pkill");
    assert!(pkill.success(), "no virtlogd was running");
    let end = Instant::now() + Duration::from_secs(10);
    while virtlogd_answers() {
        assert!(Instant::now() < end, "virtlogd does not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = hostbus_tests::TempDir::new("decoy").expect("a folder");
    let decoy_bin = dir.join("virtlogd");
    std::fs::copy("/bin/sleep", &decoy_bin).expect("copy sleep");
    let mut decoy = std::process::Command::new(&decoy_bin)
        .arg("120")
        .spawn()
        .expect("the decoy");
    let started = q.start_libvirtd();
    let answers = virtlogd_answers();
    let _ = decoy.kill();
    let _ = decoy.wait();
    started.expect("scripts/qemu-setup start-libvirtd");
    assert!(answers, "virtlogd does not answer after scripts/qemu-setup");
}

/// `scripts/qemu-setup stop-libvirtd` ends a libvirtd that outlives its
/// SIGTERM: in CI a libvirtd still shutting down 10 s after SIGTERM made
/// the stop fail ("did not stop") and the start after it fail ("Unable to
/// obtain pidfile"), and every later real-hypervisor test with them. Here a
/// process that ignores SIGTERM stands in for it, found through its own
/// pidfile, so the real daemon is not touched.
#[test]
fn the_setup_kills_a_libvirtd_that_outlives_its_sigterm() {
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("systemd stops libvirtd here: nothing to check");
        return;
    }
    let dir = hostbus_tests::TempDir::new("stubborn").expect("a folder");
    // An ignored signal stays ignored across exec.
    let mut stubborn = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 120"])
        .spawn()
        .expect("a process that ignores SIGTERM");
    let pidfile = dir.join("libvirtd.pid");
    std::fs::write(&pidfile, stubborn.id().to_string()).expect("pidfile");
    let started = Instant::now();
    let out = std::process::Command::new(hostbus_tests::workspace_dir().join("scripts/qemu-setup"))
        .arg("stop-libvirtd")
        .env("HOSTBUS_LIBVIRTD_PIDFILE", &pidfile)
        .env("HOSTBUS_LIBVIRTD_STOP_GRACE_S", "1")
        .output()
        .expect("run scripts/qemu-setup");
    let end = Instant::now() + Duration::from_secs(2);
    let mut ended = stubborn.try_wait().expect("wait");
    while ended.is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        ended = stubborn.try_wait().expect("wait");
    }
    if ended.is_none() {
        let _ = stubborn.kill();
        let _ = stubborn.wait();
    }
    assert!(
        out.status.success(),
        "stop-libvirtd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        ended.and_then(|s| s.signal()),
        Some(9),
        "the process was not killed"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGKILL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
