//! `hostctl vm ...` and `hostctl snapshot ...`: VMs and their snapshots.

use std::time::Duration;

use hostbus_client::protocol::commands::{VmList, VmListRequest};
use hostbus_client::protocol::names::Target;
use hostbus_client::protocol::types::{
    BootSpec, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, NicModel, NicSpec, PowerState,
    Record, SnapshotRecord, VmRecord, VmSpec,
};
use hostbus_client::MigrateOptions;
use serde::Serialize;

use crate::args::At;
use crate::cli::{Lifecycle, MoveFlags, Output, SnapshotCmd, VmCmd, VmCreate};
use crate::output::{mib, table, task_outcome, Column, Ctx, Failure, Listed, Progress, Res};

/// `hostctl vm ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: VmCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        VmCmd::List {
            host,
            all,
            label,
            state,
        } => {
            let target = match (host, all, label, c.local_host()) {
                (Some(h), _, _, _) => Target::Host(h),
                (None, true, _, _) => Target::All,
                (None, false, Some(l), _) => Target::Group(l),
                // An agent's socket serves one host: that one.
                (None, false, None, Some(local)) => Target::Host(local.to_owned()),
                (None, false, None, None) => {
                    return Err(Failure::usage(
                        "say which hosts: --host H, --all or --label L",
                    ))
                }
            };
            list(ctx, target, state).await
        }
        VmCmd::Get { vm } => print_vm(ctx, &vm.on(c).get().await?),
        VmCmd::Console { vm } => {
            let rec = vm.on(c).get().await?;
            console(ctx, &vm.host, &rec)
        }
        VmCmd::Start { vm, paused } => {
            let handle = vm.on(c);
            let r = if paused {
                handle.start_paused().await?
            } else {
                handle.start().await?
            };
            print_state(ctx, &r)
        }
        VmCmd::Shutdown { vm, timeout, force } => {
            let r = vm
                .on(c)
                .shutdown(Duration::from_secs(u64::from(timeout)), force)
                .await?;
            print_state(ctx, &r)
        }
        VmCmd::Lifecycle(op) => lifecycle(ctx, op).await,
        VmCmd::Create(args) => create(ctx, *args).await,
        VmCmd::Delete { vm, remove_storage } => {
            vm.on(c).undefine(remove_storage).await?;
            ctx.deleted("vm", &vm.name)
        }
        VmCmd::SetMemory { vm, memory_kib } => {
            let r = vm.on(c).set_memory(memory_kib).await?;
            ctx.show(&r, |r| outln!("{} has {} MiB", r.name, r.memory_kib / 1024))
        }
        VmCmd::SetVcpus { vm, vcpus } => {
            let r = vm.on(c).set_vcpus(vcpus).await?;
            ctx.show(&r, |r| outln!("{} has {} vCPUs", r.name, r.vcpus))
        }
        VmCmd::AttachDisk { vm, disk, target } => {
            let spec = DiskSpec {
                target,
                source: disk.source,
                bus: DiskBus::Virtio,
                format: disk.format,
                read_only: false,
                device: DiskDevice::Disk,
            };
            print_vm(ctx, &vm.on(c).attach_disk(spec).await?)
        }
        VmCmd::DetachDisk { vm, target } => print_vm(ctx, &vm.on(c).detach_disk(&target).await?),
        VmCmd::AttachNic { vm, network, mac } => {
            let nic = NicSpec {
                network: Some(network),
                bridge: None,
                mac,
                model: NicModel::Virtio,
            };
            print_vm(ctx, &vm.on(c).attach_nic(nic).await?)
        }
        VmCmd::DetachNic { vm, mac } => print_vm(ctx, &vm.on(c).detach_nic(&mac).await?),
        VmCmd::Clone {
            vm,
            name,
            linked,
            pool,
        } => {
            let new = clone(&vm.on(c), &name, linked, pool.as_deref()).await?;
            print_vm(ctx, &new)
        }
        VmCmd::Migrate {
            vm,
            to,
            offline,
            how,
            detach,
        } => migrate(ctx, &vm, &to, how.options(offline), detach).await,
        VmCmd::Template { vm, off } => {
            let r = vm.on(c).set_template(!off).await?;
            ctx.show(&r, |r| {
                let what = if r.template {
                    "a template"
                } else {
                    "not a template"
                };
                outln!("{} is {what}", r.name)
            })
        }
        VmCmd::Stats { vm } => {
            let s = vm.on(c).stats().await?;
            ctx.show(&s, |s| {
                outln!(
                    "state: {}  cpu_time: {} ms  memory: {} MiB",
                    s.power_state,
                    s.cpu_time_ns / 1_000_000,
                    s.memory_kib / 1024
                );
                for b in &s.block {
                    outln!(
                        "disk {}: read {} B, written {} B",
                        b.target,
                        b.read_bytes,
                        b.write_bytes
                    );
                }
                for n in &s.net {
                    outln!("nic {}: rx {} B, tx {} B", n.mac, n.rx_bytes, n.tx_bytes);
                }
            })
        }
    }
}

/// `hostctl vm destroy|pause|resume|suspend|reboot|reset HOST/VM`.
async fn lifecycle(ctx: &Ctx, op: Lifecycle) -> Res<()> {
    let c = &ctx.client;
    let r = match op {
        Lifecycle::Destroy { vm } => vm.on(c).destroy().await?,
        Lifecycle::Pause { vm } => vm.on(c).pause().await?,
        Lifecycle::Resume { vm } => vm.on(c).resume().await?,
        Lifecycle::Suspend { vm } => vm.on(c).suspend().await?,
        Lifecycle::Reboot { vm } => vm.on(c).reboot().await?,
        Lifecycle::Reset { vm } => vm.on(c).reset().await?,
    };
    print_state(ctx, &r)
}

/// `<name> is <state>`.
fn print_state(ctx: &Ctx, r: &VmRecord) -> Res<()> {
    ctx.show(r, |r| outln!("{} is {}", r.name, r.power_state))
}

/// `hostctl vm list`: one host's VMs by a call, a group's or everyone's by
/// a broadcast that names the hosts that did not answer (exit 7).
async fn list(ctx: &Ctx, target: Target, power_state: Option<PowerState>) -> Res<()> {
    let c = &ctx.client;
    if let Target::Host(h) = &target {
        let vms = c.host(h).vms(power_state).await?;
        let rows: Vec<(String, VmRecord)> = vms.into_iter().map(|v| (h.clone(), v)).collect();
        return ctx.show(
            &rows
                .iter()
                .map(|(h, v)| serde_json::json!({"host": h, "vm": v}))
                .collect::<Vec<_>>(),
            |_| vm_rows(&rows),
        );
    }
    let b = c
        .broadcast::<VmList>(
            &target,
            VmListRequest { power_state },
            c.config().timeout.min(Duration::from_secs(5)),
        )
        .await?;
    let mut rows = Vec::new();
    let mut errors = serde_json::Map::new();
    for (h, r) in &b.replies {
        match r {
            Ok(list) => rows.extend(list.vms.iter().map(|v| (h.clone(), v.clone()))),
            Err(e) => {
                errors.insert(h.clone(), serde_json::Value::String(e.to_string()));
            }
        }
    }
    let json = serde_json::json!({
        "vms": rows.iter().map(|(h, v)| serde_json::json!({"host": h, "vm": v})).collect::<Vec<_>>(),
        "missing": b.missing,
        "errors": errors,
    });
    ctx.show(&json, |_| {
        vm_rows(&rows);
        for (h, e) in &errors {
            eprintln!("hostctl: {h}: {e}");
        }
    })?;
    if b.missing.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 7,
            message: format!("no answer from {}", b.missing.join(", ")),
        })
    }
}

fn vm_rows(vms: &[(String, VmRecord)]) {
    table(
        &["HOST", "NAME", "STATE", "VCPUS", "MEMORY_MIB", "UUID"],
        vms.iter()
            .map(|(h, v)| {
                vec![
                    h.clone(),
                    v.name.clone(),
                    v.power_state.to_string(),
                    v.vcpus.to_string(),
                    mib(v.memory_kib),
                    v.uuid.to_string(),
                ]
            })
            .collect(),
    );
}

/// One VM, every fact on its own line.
fn print_vm(ctx: &Ctx, vm: &VmRecord) -> Res<()> {
    ctx.show(vm, |v| {
        outln!("name:        {}", v.name);
        outln!("uuid:        {}", v.uuid);
        outln!("state:       {}", v.power_state);
        outln!(
            "memory:      {} MiB (max {} MiB)",
            v.memory_kib / 1024,
            v.max_memory_kib / 1024
        );
        outln!("vcpus:       {} (max {})", v.vcpus, v.max_vcpus);
        for d in &v.disks {
            let volume = d
                .volume
                .as_ref()
                .map(|r| format!(" ({}/{})", r.pool, r.volume))
                .unwrap_or_default();
            let kind = if d.device == DiskDevice::Cdrom {
                "cdrom:      "
            } else {
                "disk:       "
            };
            outln!(
                "{kind} {} {} {}{volume}{}",
                d.target,
                d.format,
                d.source_path.as_deref().unwrap_or("-"),
                if d.read_only { " read-only" } else { "" }
            );
        }
        for n in &v.nics {
            outln!(
                "nic:         {} {}",
                n.mac,
                n.network.as_deref().or(n.bridge.as_deref()).unwrap_or("-")
            );
        }
        if let Some(k) = &v.boot.kernel {
            outln!(
                "boot:        kernel {k}{}{}",
                v.boot
                    .initrd
                    .as_ref()
                    .map(|i| format!(" initrd {i}"))
                    .unwrap_or_default(),
                v.boot
                    .cmdline
                    .as_ref()
                    .map(|c| format!(" cmdline \"{c}\""))
                    .unwrap_or_default()
            );
        } else if !v.boot.order.is_empty() {
            let order: Vec<&str> = v.boot.order.iter().map(|b| b.as_str()).collect();
            outln!("boot:        {}", order.join(","));
        }
        if let Some(t) = &v.domain_type {
            outln!(
                "hypervisor:  {t}, cpu {}",
                v.cpu_mode.map_or("hypervisor default", |m| m.as_str())
            );
        }
        if let Some(c) = &v.console {
            outln!(
                "console:     {} pty {} log {}",
                c.guest_device,
                c.pty.as_deref().unwrap_or("-"),
                c.log_path.as_deref().unwrap_or("-")
            );
        }
        if v.template {
            outln!("template:    yes (cloned, not started)");
        }
        let ops: Vec<&str> = v.allowed_operations.iter().map(|o| o.as_str()).collect();
        outln!("allowed:     {}", ops.join(", "));
        outln!("generation:  {}", v.generation);
    })
}

/// `hostctl vm console`: the console's place on its host, and the command
/// that attaches to it there (consoles are not carried over the bus).
fn console(ctx: &Ctx, host: &str, vm: &VmRecord) -> Res<()> {
    #[derive(Serialize)]
    struct Console<'a> {
        host: &'a str,
        vm: &'a str,
        uuid: uuid::Uuid,
        power_state: PowerState,
        guest_device: Option<&'a str>,
        pty: Option<&'a str>,
        log_path: Option<&'a str>,
        attach: String,
        follow: Option<String>,
    }
    let c = vm
        .console
        .as_ref()
        .ok_or_else(|| Failure::refused(format!("vm {} has no serial console", vm.name)))?;
    let out = Console {
        host,
        vm: &vm.name,
        uuid: vm.uuid,
        power_state: vm.power_state,
        guest_device: Some(c.guest_device.as_str()),
        pty: c.pty.as_deref(),
        log_path: c.log_path.as_deref(),
        attach: format!("virsh -c qemu:///system console {}", vm.uuid),
        follow: c.log_path.as_ref().map(|p| format!("tail -F {p}")),
    };
    ctx.show(&out, |o| {
        outln!("host:        {}", o.host);
        outln!("vm:          {} ({})", o.vm, o.power_state);
        outln!("device:      {}", o.guest_device.unwrap_or("-"));
        outln!("pty:         {}", o.pty.unwrap_or("- (not running)"));
        outln!("log:         {}", o.log_path.unwrap_or("-"));
        outln!("attach:      {}   (on {}; Ctrl-] leaves)", o.attach, o.host);
        if let Some(f) = &o.follow {
            outln!("follow:      {f}   (on {})", o.host);
        }
    })
}

/// The `index`th drive letter after `first` (`vd` + `a`, `hd` + `c`).
fn target(prefix: &str, first: u8, index: usize, what: &str) -> Res<String> {
    let letter = u8::try_from(index)
        .ok()
        .and_then(|n| first.checked_add(n))
        .ok_or_else(|| Failure::usage(format!("too many {what}")))?;
    Ok(format!("{prefix}{}", letter as char))
}

/// `vm.clone` of `source` to `name` as a task, waited for with a progress
/// bar; the new VM's record.
async fn clone(
    source: &hostbus_client::Vm,
    name: &str,
    linked: bool,
    pool: Option<&str>,
) -> Res<VmRecord> {
    let task = source.clone_to(name, linked, pool).await?;
    let bar = Progress::new("vm.clone");
    let t = task.wait(|t| bar.update(t)).await?;
    bar.done();
    task_outcome(&t)?;
    match t.result {
        Some(Record::Vm(vm)) => Ok(vm),
        other => Err(Failure::other(format!("unexpected task result {other:?}"))),
    }
}

/// `hostctl vm migrate`: submits `vm.migrate` to the VM's host; with
/// `detach` prints the task, else waits for it with a progress bar (none
/// with `--output json`) and prints the move.
async fn migrate(
    ctx: &Ctx,
    vm: &At<crate::args::Vm>,
    to: &str,
    opts: MigrateOptions,
    detach: bool,
) -> Res<()> {
    let task = vm.on(&ctx.client).migrate(to, opts).await?;
    if detach {
        let t = task.get().await?;
        return ctx.show(&t, |t| {
            outln!(
                "migrating {} to {to}: task {} on {} (hostctl task wait {} {})",
                vm.name,
                t.id,
                vm.host,
                vm.host,
                t.id
            )
        });
    }
    let bar = match ctx.output {
        Output::Json => Progress::hidden(),
        Output::Table => Progress::new("vm.migrate"),
    };
    let t = task.wait(|t| bar.update(t)).await?;
    bar.done();
    task_outcome(&t)?;
    let m = match t.result {
        Some(Record::Migration(m)) => m,
        other => return Err(Failure::other(format!("unexpected task result {other:?}"))),
    };
    ctx.show(&m, |m| {
        let downtime = m
            .downtime_ms
            .map(|d| format!(" (downtime {d} ms)"))
            .unwrap_or_default();
        outln!(
            "moved {} from {} to {} in {} ms{downtime}",
            m.vm.name,
            m.source,
            m.host,
            m.elapsed_ms
        )
    })?;
    if m.host != m.destination {
        return Err(Failure::other(format!(
            "{} is on {}, not {}: the migration was interrupted",
            m.vm.name, m.host, m.destination
        )));
    }
    Ok(())
}

impl MoveFlags {
    /// The SDK's options, live unless `offline`.
    pub(crate) fn options(self, offline: bool) -> MigrateOptions {
        MigrateOptions {
            offline,
            copy_storage: self.copy_storage,
            bandwidth_mib_s: self.bandwidth_mib_s,
            max_downtime_ms: self.max_downtime_ms,
        }
    }
}

/// `hostctl vm create --from-template`: clones the template, then sets
/// memory and vCPUs if given and starts the clone if asked.
async fn create_from_template(ctx: &Ctx, args: VmCreate, template: &str) -> Res<()> {
    let hh = ctx.client.host(&args.host);
    let mut vm = clone(&hh.vm_key(template), &args.name, args.linked, None).await?;
    let handle = hh.vm(vm.uuid);
    if let Some(kib) = args.memory_kib.filter(|k| *k != vm.memory_kib) {
        vm = handle.set_memory(kib).await?;
    }
    if let Some(n) = args.vcpus.filter(|n| *n != vm.vcpus) {
        vm = handle.set_vcpus(n).await?;
    }
    if args.start {
        vm = handle.start().await?;
    }
    print_vm(ctx, &vm)
}

/// `hostctl vm create`: defines the VM as a task (its new volumes take
/// time), with a progress bar, and starts it if asked.
async fn create(ctx: &Ctx, args: VmCreate) -> Res<()> {
    if let Some(template) = args.from_template.clone() {
        return create_from_template(ctx, args, &template).await;
    }
    let VmCreate {
        host,
        name,
        memory_kib,
        vcpus,
        disks,
        cdroms,
        boot,
        kernel,
        initrd,
        cmdline,
        cpu_mode,
        networks,
        description,
        start,
        from_template: _,
        linked: _,
    } = args;
    let memory_kib =
        memory_kib.ok_or_else(|| Failure::usage("--memory is required without --from-template"))?;
    let vcpus = vcpus.unwrap_or(1);
    let mut drives = Vec::with_capacity(disks.len() + cdroms.len());
    for (i, d) in disks.into_iter().enumerate() {
        drives.push(DiskSpec {
            format: d.format,
            ..DiskSpec::new(target("vd", b'a', i, "disks")?, d.source)
        });
    }
    for (i, source) in cdroms.into_iter().enumerate() {
        // IDE: every machine type has it; hdc is the secondary master.
        drives.push(cdrom(target("hd", b'c', i, "cdroms")?, source));
    }
    let spec = VmSpec {
        description: description.unwrap_or_default(),
        disks: drives,
        nics: networks.into_iter().map(NicSpec::on_network).collect(),
        boot: BootSpec {
            order: boot.into_iter().map(Into::into).collect(),
            kernel,
            initrd,
            cmdline,
        },
        cpu_mode: cpu_mode.map(Into::into),
        ..VmSpec::new(name, memory_kib, vcpus)
    };
    let hh = ctx.client.host(&host);
    let task = hh.define_vm_async(spec).await?;
    let bar = Progress::new("vm.define");
    let t = task.wait(|t| bar.update(t)).await?;
    bar.done();
    task_outcome(&t)?;
    let mut vm = match t.result {
        Some(Record::Vm(vm)) => vm,
        other => return Err(Failure::other(format!("unexpected task result {other:?}"))),
    };
    if start {
        vm = hh.vm(vm.uuid).start().await?;
    }
    print_vm(ctx, &vm)
}

/// A read-only raw CD-ROM drive on IDE.
fn cdrom(target: String, source: DiskSource) -> DiskSpec {
    DiskSpec {
        bus: DiskBus::Ide,
        format: Some(DiskFormat::Raw),
        read_only: true,
        device: DiskDevice::Cdrom,
        ..DiskSpec::new(target, source)
    }
}

/// `hostctl snapshot ...`.
pub(crate) async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        SnapshotCmd::List { vm } => ctx.list(&vm.on(c).snapshots().await?),
        SnapshotCmd::Create {
            vm,
            name,
            description,
        } => {
            let s = vm.on(c).snapshot(&name, &description).await?;
            ctx.show(&s, |s| {
                outln!(
                    "snapshot {} of {} taken ({})",
                    s.name,
                    vm.name,
                    s.vm_power_state
                )
            })
        }
        SnapshotCmd::Revert { vm, name } => {
            let r = vm.on(c).revert(&name).await?;
            ctx.show(&r, |r| {
                outln!("{} reverted to {name}: {}", r.name, r.power_state)
            })
        }
        SnapshotCmd::Delete { vm, name } => {
            vm.on(c).delete_snapshot(&name).await?;
            ctx.deleted("snapshot", &name)
        }
    }
}

/// What `hostctl snapshot list` prints.
impl Listed for SnapshotRecord {
    const COLUMNS: &'static [Column<'static, Self>] = &[
        ("NAME", &|s| s.name.clone()),
        ("VM_STATE", &|s| s.vm_power_state.to_string()),
        ("CURRENT", &|s| s.current.to_string()),
        ("PARENT", &|s| s.parent.clone().unwrap_or_default()),
        ("DESCRIPTION", &|s| s.description.clone()),
    ];
}
