//! The migration section: real QEMU guests (TCG) on three libvirt hosts of
//! this machine (`scripts/libvirt-hosts`, one agent each): live migration
//! time and the guest's downtime, without and with copied storage, an
//! evacuation of three guests, and full against linked clones. Needs the
//! environment of `scripts/qemu-setup`.

use std::fmt::Write as _;
use std::time::Instant;

use hostbus_client::protocol::commands::{VmMigrate, VmMigrateRequest};
use hostbus_client::protocol::types::{DiskSource, DiskSpec, MigrationRecord, VolumeSpec};
use hostbus_client::{EvacuateOptions, EvacuationOutcome, Targets};
use hostbus_tests::libvirt_hosts::IMAGES_POOL;
use hostbus_tests::qemu_cluster::{migrate_req, migration_of, Cluster};
use hostbus_tests::QemuHost;

use crate::report::{self, write_section};
use crate::Args;

/// One VM's migrations back and forth between m1 and m2, `rounds` times.
async fn back_and_forth(
    c: &Cluster,
    uuid: uuid::Uuid,
    rounds: usize,
    copy_storage: bool,
) -> Vec<MigrationRecord> {
    let mut out = Vec::new();
    for i in 0..rounds * 2 {
        let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let task = c
            .host(from)
            .submit::<VmMigrate>(VmMigrateRequest {
                copy_storage,
                ..migrate_req(uuid, to)
            })
            .await
            .expect("submit");
        let t = task.wait(|_| {}).await.expect("task");
        out.push(migration_of(&t));
    }
    out
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn spread(v: &[u64]) -> String {
    let (lo, hi) = (
        v.iter().min().copied().unwrap_or(0),
        v.iter().max().copied().unwrap_or(0),
    );
    format!("{} ({lo}–{hi})", median(v.to_vec()))
}

fn row(what: &str, ms: &[MigrationRecord]) -> String {
    let elapsed: Vec<u64> = ms.iter().map(|m| m.elapsed_ms).collect();
    let downtime: Vec<u64> = ms.iter().filter_map(|m| m.downtime_ms).collect();
    let mib: Vec<u64> = ms
        .iter()
        .filter_map(|m| m.data_bytes)
        .map(|b| b >> 20)
        .collect();
    format!(
        "| {what} | {} | {} | {} | {} |",
        ms.len(),
        spread(&elapsed),
        if downtime.is_empty() {
            "—".to_owned()
        } else {
            spread(&downtime)
        },
        if mib.is_empty() {
            "—".to_owned()
        } else {
            spread(&mib)
        },
    )
}

pub(crate) async fn bench(a: &Args) {
    let Some(q) = QemuHost::from_env().expect("the real-hypervisor environment") else {
        eprintln!("hostbus-bench migration: run `eval \"$(scripts/qemu-setup)\"` first");
        return;
    };
    let rounds = a.rounds.max(1);
    let c = Cluster::start(q, 3).await;

    // Live, shared storage (no disk): the guest's memory only.
    let (vm, _) = c.counting_guest(0, "hbb-live", vec![]).await;
    let live = back_and_forth(&c, vm.uuid, rounds, false).await;
    c.remove(0, vm.uuid).await;

    // Live with a 256 MiB disk copied, 64 MiB of it written.
    let disk = DiskSpec::new(
        "vda",
        DiskSource::NewVolume {
            pool: IMAGES_POOL.into(),
            capacity_bytes: 256 << 20,
        },
    );
    let (vm, log) = c.counting_guest(0, "hbb-disk", vec![disk]).await;
    c.type_on(
        0,
        "hbb-disk",
        "dd if=/dev/urandom of=/dev/vda bs=1M count=64 conv=fsync 2>/dev/null; echo filled-$((8*8))",
        &log,
        "filled-64",
    );
    let copied = back_and_forth(&c, vm.uuid, rounds, true).await;
    c.remove(0, vm.uuid).await;

    // Evacuation: three guests from m1 to m2 and m3, two at a time.
    for i in 1..=3 {
        c.counting_guest(0, &format!("hbb-evac{i}"), vec![]).await;
    }
    let started = Instant::now();
    let report = c
        .client
        .evacuate(
            "m1",
            Targets::Hosts(vec!["m2".into(), "m3".into()]),
            EvacuateOptions::default(),
            |_| {},
        )
        .await
        .expect("evacuate");
    let evacuation = started.elapsed();
    assert!(report.all_moved(), "{report:?}");
    let each: Vec<u64> = report
        .vms
        .iter()
        .filter_map(|v| match v.outcome {
            EvacuationOutcome::Moved { elapsed_ms, .. } => Some(elapsed_ms),
            EvacuationOutcome::Failed { .. } => None,
        })
        .collect();

    // Clones of a halted VM with a 256 MiB raw disk, 64 MiB written.
    c.host(1).enable().await.ok();
    c.host(1)
        .pool(IMAGES_POOL)
        .create_volume(VolumeSpec {
            name: "hbb-base.raw".into(),
            capacity_bytes: 256 << 20,
            allocation_bytes: 0,
            format: hostbus_client::protocol::types::DiskFormat::Raw,
        })
        .await
        .expect("volume");
    std::fs::write(
        c.virt(1).images_dir().join("hbb-base.raw"),
        vec![0x5a_u8; 64 << 20],
    )
    .expect("fill the base volume");
    let base = c
        .host(1)
        .define_vm(hostbus_client::protocol::types::VmSpec {
            disks: vec![DiskSpec::new(
                "vda",
                DiskSource::Volume(hostbus_client::protocol::types::VolumeRef {
                    pool: IMAGES_POOL.into(),
                    volume: "hbb-base.raw".into(),
                }),
            )],
            ..hostbus_client::protocol::types::VmSpec::new("hbb-base", 128 * 1024, 1)
        })
        .await
        .expect("define the base");
    let mut full = Vec::new();
    let mut linked = Vec::new();
    for i in 0..rounds {
        for (kind, out) in [(false, &mut full), (true, &mut linked)] {
            let name = format!("hbb-clone-{}-{i}", if kind { "l" } else { "f" });
            let t = Instant::now();
            let task = c
                .host(1)
                .vm(base.uuid)
                .clone_to(&name, kind, None)
                .await
                .expect("clone");
            let done = task.result().await.expect("clone task");
            out.push(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
            let _ = done;
            c.host(1)
                .vm_named(&name)
                .undefine(true)
                .await
                .expect("undefine the clone");
        }
    }

    let mut out = report::preamble(format_args!(
        "Three libvirt hosts on this machine (`scripts/libvirt-hosts`: one libvirtd each in a \
         mount namespace), an agent each, a private broker; 128 MiB guests under TCG (QEMU {}), \
         booted to a shell that counts on its console. Live migrations are peer to peer over the \
         hosts' unix sockets, back and forth {rounds} times each way; times are the task's \
         `elapsed_ms` (libvirt's job), downtime libvirt's measure on the destination, data the \
         bytes libvirt sent. `cargo run --release -p hostbus-tests --bin hostbus-bench -- \
         migration` (after `eval \"$(scripts/qemu-setup)\"`).",
        qemu_version()
    ));
    report::table(
        &mut out,
        "| migration | runs | time, ms: median (min–max) | downtime, ms | data, MiB |\n|---|---|---|---|---|",
        &[
            row("live, no disk (memory only)", &live),
            row(
                "live, 256 MiB disk (64 MiB written) copied",
                &copied,
            ),
        ],
    );
    let _ = writeln!(
        out,
        "\nEvacuation of three running guests from m1 to m2 and m3, two migrations at a time: \
         **{} ms** in all; each migration {} ms (median, min–max), to {:?}.\n",
        evacuation.as_millis(),
        spread(&each),
        report
            .vms
            .iter()
            .filter_map(|v| v.destination.clone())
            .collect::<Vec<_>>()
    );
    report::table(
        &mut out,
        "| clone of a halted VM, 256 MiB raw disk (64 MiB written) | runs | `vm.clone` task, ms: median (min–max) |\n|---|---|---|",
        &[
            format!("| full (a copy of the disk) | {} | {} |", full.len(), spread(&full)),
            format!(
                "| linked (a qcow2 overlay on it) | {} | {} |",
                linked.len(),
                spread(&linked)
            ),
        ],
    );
    println!("{out}");
    if a.write {
        write_section("migration", &out);
    }
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_default()
}
