//! What `hostctl` does on one host, as the suites that drive every
//! subcommand run it: the broker suite (`client.rs`) and the socket suite
//! (`socket.rs`, no broker) take the same tour of host `h1` on the shipped
//! node file `node-h1.xml` (web01 running, db01 and batch01 halted, pools
//! `default` and `iso`, networks `default` and another), each step with
//! `--output json` parsed back and checked. What differs between the two
//! (the fleet, `vm list` of several hosts, exit codes) stays in the suites.

use std::time::Duration;

use hostbus_client::protocol::commands::{VmDefine, VmDefineRequest};
use hostbus_client::Client;
use hostbus_testkit::small_vm;
use serde_json::Value;

use crate::hostctl::Hostctl;

/// `ping`, `host info`, `host caps` and `host stats` of `h1`.
pub fn host_facts(ctl: &Hostctl) {
    assert_eq!(ctl.json(&["ping", "h1"])["host"], "h1");
    assert_eq!(ctl.json(&["host", "info", "h1"])["host_id"], "h1");
    assert!(ctl.json(&["host", "caps", "h1"])["commands"]
        .as_array()
        .is_some_and(|c| c.len() > 40));
    assert_eq!(ctl.json(&["host", "stats", "h1"])["vms_total"], 3);
    // Placement: a disabled host says so, and why, until enabled again.
    let off = ctl.json(&["host", "disable", "h1", "--reason", "tour"]);
    assert_eq!(
        (&off["placement"]["enabled"], &off["placement"]["reason"]),
        (&serde_json::json!(false), &serde_json::json!("tour"))
    );
    assert_eq!(
        ctl.json(&["host", "enable", "h1"])["placement"]["enabled"],
        true
    );
    // A migration to the VM's own host is refused before anything moves.
    let out = ctl.run(&["vm", "migrate", "h1/web01", "--to", "h1"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("destination"), "{}", out.stderr);
}

/// `hosts`, `host snapshot` and `vm list --all` of a fleet of `hosts`
/// (each on a node file with three VMs): exactly these hosts, all alive,
/// every VM listed and no host missing.
pub fn fleet(ctl: &Hostctl, hosts: &[&str]) {
    let listed = ctl.json(&["hosts"]);
    let listed = listed.as_array().expect("hosts");
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|h| h["host_id"].as_str())
        .collect();
    assert_eq!(ids, hosts);
    assert!(
        listed.iter().all(|h| h["liveness"] == "alive"),
        "{listed:?}"
    );
    for h in hosts {
        let vms = ctl.json(&["host", "snapshot", h])["vms"].clone();
        assert_eq!(vms.as_array().map(Vec::len), Some(3), "{h}: {vms}");
    }
    let all = ctl.json(&["vm", "list", "--all"]);
    assert_eq!(
        all["vms"].as_array().map(Vec::len),
        Some(3 * hosts.len()),
        "{all}"
    );
    assert_eq!(all["missing"].as_array().map(Vec::len), Some(0), "{all}");
}

/// Every verb on h1's objects: its VMs and their lifecycle, a new VM and
/// its devices and snapshots, pools and volumes, networks.
pub fn objects(ctl: &Hostctl) {
    vms(ctl);
    vm_create_and_devices(ctl);
    templates_and_clones(ctl);
    storage(ctl);
    networks(ctl);
}

/// `vm list --host h1` (with and without a state), `vm get` and every
/// lifecycle verb on h1's db01, each answered with the VM's new power
/// state; db01 ends halted.
fn vms(ctl: &Hostctl) {
    assert_eq!(ctl.json_len(&["vm", "list", "--host", "h1"]), Some(3));
    assert_eq!(
        ctl.json_len(&["vm", "list", "--host", "h1", "--state", "running"]),
        Some(1)
    );
    assert_eq!(
        ctl.json(&["vm", "get", "h1/web01"])["power_state"],
        "running"
    );
    let state = |args: &[&str]| power_state(ctl, args);
    assert_eq!(state(&["vm", "start", "h1/db01"]), "running");
    assert_eq!(state(&["vm", "pause", "h1/db01"]), "paused");
    assert_eq!(state(&["vm", "resume", "h1/db01"]), "running");
    assert_eq!(state(&["vm", "suspend", "h1/db01"]), "suspended");
    assert_eq!(state(&["vm", "resume", "h1/db01"]), "running");
    assert_eq!(state(&["vm", "reboot", "h1/db01"]), "running");
    assert_eq!(state(&["vm", "reset", "h1/db01"]), "running");
    assert_eq!(
        state(&["vm", "shutdown", "h1/db01", "--timeout", "5"]),
        "halted"
    );
    assert_eq!(state(&["vm", "start", "h1/db01", "--paused"]), "paused");
    assert_eq!(state(&["vm", "destroy", "h1/db01"]), "halted");
}

/// db01 (halted) as a template: it refuses to start (exit 4), a VM made
/// from it with `vm create --from-template` (linked, resized, started) is
/// an ordinary VM, `vm clone` copies it; the clones are deleted with their
/// storage and db01 is unmarked, as it was.
fn templates_and_clones(ctl: &Hostctl) {
    assert_eq!(ctl.json(&["vm", "template", "h1/db01"])["template"], true);
    assert_eq!(
        ctl.code(&["vm", "start", "h1/db01"]),
        4,
        "a template is not started"
    );
    let app = ctl.json(&[
        "vm",
        "create",
        "h1",
        "--from-template",
        "db01",
        "--name",
        "app02",
        "--linked",
        "--memory",
        "256",
        "--start",
    ]);
    assert_eq!(
        (&app["name"], &app["power_state"], &app["template"]),
        (&"app02".into(), &"running".into(), &false.into())
    );
    assert_eq!(app["memory_kib"], 262_144);
    let copy = ctl.json(&["vm", "clone", "h1/db01", "db01-copy"]);
    assert_eq!(copy["power_state"], "halted");
    assert_eq!(copy["disks"][0]["volume"]["volume"], "db01-copy-vda.qcow2");
    assert_eq!(power_state(ctl, &["vm", "destroy", "h1/app02"]), "halted");
    for vm in ["h1/app02", "h1/db01-copy"] {
        ctl.json(&["vm", "delete", vm, "--remove-storage"]);
    }
    assert_eq!(
        ctl.json(&["vm", "template", "h1/db01", "--off"])["template"],
        false
    );
}

/// The `power_state` of what `-o json args...` prints.
fn power_state(ctl: &Hostctl, args: &[&str]) -> String {
    ctl.json(args)["power_state"]
        .as_str()
        .expect("state")
        .to_owned()
}

/// A new VM app01 on h1, from `vm create --start` to `vm delete`: its
/// memory, vCPUs, statistics, console, snapshots, disks and NICs.
fn vm_create_and_devices(ctl: &Hostctl) {
    let vm = ctl.json(&[
        "vm",
        "create",
        "h1",
        "--name",
        "app01",
        "--memory",
        "512",
        "--vcpus",
        "2",
        "--disk",
        "default:1",
        "--network",
        "default",
        "--start",
    ]);
    assert_eq!(
        (vm["name"].as_str(), vm["power_state"].as_str()),
        (Some("app01"), Some("running"))
    );
    let got = ctl.json(&["vm", "get", "h1/app01"]);
    assert_eq!(
        (got["name"].as_str(), got["uuid"].as_str()),
        (Some("app01"), vm["uuid"].as_str())
    );
    assert_eq!(
        ctl.json(&["vm", "set-memory", "h1/app01", "256"])["memory_kib"],
        262_144
    );
    assert_eq!(ctl.json(&["vm", "set-vcpus", "h1/app01", "1"])["vcpus"], 1);
    assert!(ctl.json(&["vm", "stats", "h1/app01"])["cpu_time_ns"]
        .as_u64()
        .is_some());
    let console = ctl.json(&["vm", "console", "h1/app01"]);
    assert_eq!(
        (console["host"].as_str(), console["vm"].as_str()),
        (Some("h1"), Some("app01"))
    );
    // The node file's web01 has no serial device: refused (unsupported),
    // not exit 1, which scripts read as hostctl's own failure.
    assert_eq!(ctl.code(&["vm", "console", "h1/web01"]), 4);
    assert_eq!(
        ctl.json(&[
            "snapshot",
            "create",
            "h1/app01",
            "s1",
            "--description",
            "first"
        ])["name"],
        "s1"
    );
    assert_eq!(ctl.json_len(&["snapshot", "list", "h1/app01"]), Some(1));
    ctl.json(&["vm", "destroy", "h1/app01"]);
    assert_eq!(
        power_state(ctl, &["snapshot", "revert", "h1/app01", "s1"]),
        "running"
    );
    assert_eq!(
        ctl.json(&["snapshot", "delete", "h1/app01", "s1"])["deleted"],
        "s1"
    );
    ctl.json(&["vm", "destroy", "h1/app01"]);
    let disks = |vm: &Value| vm["disks"].as_array().map(Vec::len);
    let nics = |vm: &Value| vm["nics"].as_array().map(Vec::len);
    let attached = ctl.json(&[
        "vm",
        "attach-disk",
        "h1/app01",
        "default:1",
        "--target",
        "vdb",
    ]);
    assert_eq!(disks(&attached), Some(2), "{attached}");
    assert_eq!(
        disks(&ctl.json(&["vm", "detach-disk", "h1/app01", "vdb"])),
        Some(1)
    );
    // Detaching keeps the new volume (named after the VM and target).
    ctl.json(&["volume", "delete", "h1/default/app01-vdb.qcow2"]);
    let mac = "52:54:00:0a:0b:0c";
    let attached = ctl.json(&["vm", "attach-nic", "h1/app01", "default", "--mac", mac]);
    assert_eq!(nics(&attached), Some(2), "{attached}");
    assert_eq!(
        nics(&ctl.json(&["vm", "detach-nic", "h1/app01", mac])),
        Some(1)
    );
    assert_eq!(
        ctl.json(&["vm", "delete", "h1/app01", "--remove-storage"])["deleted"],
        "app01"
    );
    assert_eq!(ctl.code(&["vm", "get", "h1/app01"]), 3, "gone: not found");
}

/// Every `pool` and `volume` verb on h1.
fn storage(ctl: &Hostctl) {
    assert_eq!(ctl.json_len(&["pool", "list", "h1"]), Some(2));
    assert_eq!(ctl.json(&["pool", "get", "h1/default"])["name"], "default");
    assert_eq!(
        ctl.json(&[
            "pool",
            "create",
            "h1",
            "--name",
            "scratch",
            "--path",
            "/var/lib/hostbus/scratch"
        ])["state"],
        "inactive"
    );
    assert_eq!(
        ctl.json(&["pool", "start", "h1/scratch"])["state"],
        "running"
    );
    assert_eq!(
        ctl.json(&["pool", "refresh", "h1/scratch"])["name"],
        "scratch"
    );
    assert_eq!(
        ctl.json(&["pool", "stop", "h1/scratch"])["state"],
        "inactive"
    );
    ctl.json(&["pool", "delete", "h1/scratch"]);
    assert_eq!(ctl.json_len(&["volume", "list", "h1/default"]), Some(3));
    assert_eq!(
        ctl.json(&["volume", "create", "h1/iso", "v1", "--size", "1"])["capacity_bytes"],
        1u64 << 30
    );
    let resized = ctl.run(&["-o", "json", "volume", "resize", "h1/iso/v1", "--size", "2"]);
    assert!(
        resized.code == 0 || resized.code == 4,
        "resize: ok, or refused as unsupported: {}",
        resized.stderr
    );
    assert_eq!(
        ctl.json(&["volume", "clone", "h1/iso/v1", "v2"])["name"],
        "v2"
    );
    assert_eq!(
        ctl.json(&["volume", "get", "h1/iso/v2"])["capacity_bytes"],
        ctl.json(&["volume", "get", "h1/iso/v1"])["capacity_bytes"]
    );
    ctl.json(&["volume", "delete", "h1/iso/v2"]);
    assert_eq!(
        ctl.json(&["volume", "delete", "h1/iso/v1"])["deleted"],
        "v1"
    );
}

/// Every `network` verb on h1.
fn networks(ctl: &Hostctl) {
    assert_eq!(ctl.json_len(&["network", "list", "h1"]), Some(2));
    assert_eq!(
        ctl.json(&["network", "get", "h1/default"])["forward"],
        "nat"
    );
    let net = ctl.json(&[
        "network",
        "create",
        "h1",
        "--name",
        "lab",
        "--bridge",
        "virbr9",
        "--ip",
        "192.168.150.1/24",
        "--dhcp",
        "192.168.150.10-192.168.150.99",
    ]);
    assert_eq!(net["ip"]["prefix"], 24);
    assert_eq!(ctl.json(&["network", "start", "h1/lab"])["active"], true);
    assert_eq!(ctl.json(&["network", "stop", "h1/lab"])["active"], false);
    assert_eq!(ctl.json(&["network", "delete", "h1/lab"])["deleted"], "lab");
}

/// Every `task` verb on a task `client` starts on h1 (defining VM task01,
/// removed after).
pub async fn tasks(ctl: &Hostctl, client: &Client) {
    let spec = small_vm("task01", &["vda"]);
    let task = client
        .submit::<VmDefine>("h1", VmDefineRequest { spec })
        .await
        .expect("submit");
    let id = task.id.to_string();
    let waited = ctl.json(&["task", "wait", "h1", &id]);
    assert_eq!(
        (waited["status"].as_str(), waited["command"].as_str()),
        (Some("success"), Some("vm.define"))
    );
    assert_eq!(ctl.json(&["task", "get", "h1", &id])["progress"], 100);
    assert!(ctl
        .json(&["task", "list", "h1"])
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["id"] == id.as_str())));
    assert_eq!(
        ctl.code(&["task", "cancel", "h1", &id]),
        4,
        "a finished task cannot be cancelled"
    );
    assert_eq!(
        ctl.json(&["vm", "get", "h1/task01"])["power_state"],
        "halted"
    );
    ctl.json(&["vm", "delete", "h1/task01", "--remove-storage"]);
}

/// `hostctl events h1.vm.* --count 1` started first, then `vm start
/// h1/batch01` by another hostctl: the event the follower printed (its
/// host, class, action and record checked).
pub async fn event_of_a_change(ctl: &Hostctl) -> Value {
    let follower = ctl.spawn(&[
        "-o",
        "json",
        "events",
        "h1.vm.*",
        "--count",
        "1",
        "--duration-ms",
        "20000",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(power_state(ctl, &["vm", "start", "h1/batch01"]), "running");
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .expect("join")
        .expect("events output");
    let line = out.stdout.split(|b| *b == b'\n').next().unwrap_or_default();
    let ev: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "no event JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        (
            ev["host_id"].as_str(),
            ev["class"].as_str(),
            ev["action"].as_str()
        ),
        (Some("h1"), Some("vm"), Some("started")),
        "{ev}"
    );
    assert_eq!(ev["record"]["vm"]["name"], "batch01", "{ev}");
    ev
}

/// `schema` and `completions`, which need no connection.
pub fn without_connection(ctl: &Hostctl) {
    let schema: Value = serde_json::from_str(&ctl.run(&["schema"]).stdout).expect("schema JSON");
    assert!(schema["commands"].as_array().is_some_and(|c| c.len() > 40));
    let completions = ctl.run(&["completions", "bash"]);
    assert!(completions.code == 0 && completions.stdout.contains("hostctl"));
}
