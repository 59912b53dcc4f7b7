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

use hostbus_tests::libvirt_hosts::LibvirtHosts;
use hostbus_tests::qemu_bench::{BOOTED, TURNS};
use hostbus_tests::{type_on_serial, wait_for_text, QemuHost};

/// What the counting guest prints before each number.
const COUNT: &str = "hb-count ";

/// Starts a counter on the guest's console, once however often it is typed:
/// `hb-count 1`, `hb-count 2`, ... one a second.
const START_COUNTING: &str = "[ -e /tmp/counting ] || { touch /tmp/counting; n=0; \
     while :; do n=$((n+1)); echo hb-count $n; sleep 1; done & }";

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

/// The counter's numbers in the console log, in order (the typed line's
/// echo, `echo hb-count $n`, is no number).
fn counts(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(COUNT)?.1.trim().parse().ok())
        .collect()
}

fn last_count(log: &Path) -> u64 {
    counts(log).last().copied().unwrap_or(0)
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
