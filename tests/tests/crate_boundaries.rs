//! Enforces the crate boundaries of DESIGN.md from `cargo metadata`: the
//! protocol is a leaf, the bridge knows no AMQP or async runtime, the client
//! never pulls in libvirt, the bridge or the agent, nor (being a library a
//! manager embeds) the CLI's crates; `hostctl` is a client like any other;
//! the test kit the protocol's and bridge's tests share is protocol types
//! only, and no source file is shared by a path include.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Package name → names of the packages it depends on (normal and build
/// dependencies, transitively; dev-dependencies do not ship and are skipped).
fn dependency_closure() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["metadata", "--format-version", "1", "--locked"];
    // Resolve for this machine only, so no crate of a foreign platform is fetched.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    if cfg!(target_os = "linux") {
        args.extend(["--filter-platform", platform.as_str()]);
    }
    let out = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");

    let mut names = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        names.insert(
            p["id"].as_str().expect("id").to_owned(),
            p["name"].as_str().expect("name").to_owned(),
        );
    }
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let id = node["id"].as_str().expect("id").to_owned();
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|k| k["kind"].as_str() != Some("dev"))
            })
            .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
            .collect();
        direct.insert(id, deps);
    }
    let mut closure = BTreeMap::new();
    for id in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.clone()];
        while let Some(cur) = stack.pop() {
            for d in direct.get(&cur).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        let dep_names = seen.iter().map(|d| names[d].clone()).collect();
        closure.insert(names[id].clone(), dep_names);
    }
    closure
}

fn assert_forbidden(closure: &BTreeMap<String, BTreeSet<String>>, krate: &str, forbidden: &[&str]) {
    let deps = closure
        .get(krate)
        .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
    let found: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "{krate} must not depend on {found:?} (see DESIGN.md, crate boundaries)"
    );
}

#[test]
fn protocol_is_a_leaf() {
    let c = dependency_closure();
    assert_forbidden(
        &c,
        "hostbus-protocol",
        &[
            "tokio",
            "hostbus-amqp",
            "lapin",
            "virt",
            "virt-sys",
            "hostbus-bridge",
            "hostbus-agent",
            "hostbus-client",
            "hostctl",
        ],
    );
}

/// The test kit is what the protocol's and the bridge's own tests take as a
/// dev-dependency: protocol types only. It depends on the protocol and on
/// nothing the protocol does not depend on itself, so no runtime, broker
/// client, libvirt or other crate of the workspace.
#[test]
fn testkit_is_a_leaf_over_the_protocol() {
    let c = dependency_closure();
    let (kit, protocol) = (&c["hostbus-testkit"], &c["hostbus-protocol"]);
    assert!(
        kit.contains("hostbus-protocol"),
        "the test kit builds protocol types"
    );
    let beyond: Vec<&String> = kit
        .iter()
        .filter(|d| *d != "hostbus-protocol" && !protocol.contains(*d))
        .collect();
    assert!(
        beyond.is_empty(),
        "hostbus-testkit depends on {beyond:?}, which hostbus-protocol does not"
    );
    assert_forbidden(&c, "hostbus-testkit", &["tokio", "lapin", "virt"]);
}

/// Code several crates' tests share lives in a crate (the test kit, the
/// harness), never in a file another crate includes by path: such a file
/// is compiled into each includer with its own lints, dead code and types.
#[test]
fn no_source_file_is_included_by_path() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Spelled in two pieces, so this file does not find itself.
    let include = ["#[", "path"].concat();
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a folder") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                // Third-party copies, build output and hidden folders.
                if !(name.starts_with('.') || name == "vendor" || name == "target") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).expect("read a source file");
                if text.lines().any(|l| l.trim_start().starts_with(&include)) {
                    found.push(path.strip_prefix(&root).unwrap_or(&path).to_owned());
                }
            }
        }
    }
    assert!(
        files > 100,
        "only {files} source files found under {root:?}"
    );
    assert!(found.is_empty(), "files with a path include: {found:?}");
}

#[test]
fn bridge_knows_no_amqp_and_no_async_runtime() {
    let c = dependency_closure();
    assert_forbidden(
        &c,
        "hostbus-bridge",
        &[
            "lapin",
            "hostbus-amqp",
            "amq-protocol",
            "tokio",
            "async-std",
            "hostbus-agent",
            "hostbus-client",
            "hostctl",
        ],
    );
}

#[test]
fn client_builds_without_libvirt() {
    let c = dependency_closure();
    assert_forbidden(
        &c,
        "hostbus-client",
        &[
            "virt",
            "virt-sys",
            "hostbus-bridge",
            "hostbus-agent",
            "hostctl",
        ],
    );
}

#[test]
fn the_sdk_carries_no_cli_crates() {
    let c = dependency_closure();
    assert_forbidden(
        &c,
        "hostbus-client",
        &[
            "clap",
            "clap_complete",
            "anyhow",
            "tracing-subscriber",
            "toml",
        ],
    );
}

#[test]
fn hostctl_is_a_client_of_the_bus_only() {
    let c = dependency_closure();
    assert_forbidden(
        &c,
        "hostctl",
        &["virt", "virt-sys", "hostbus-bridge", "hostbus-agent"],
    );
}

#[test]
fn agent_does_not_depend_on_the_cli() {
    // The agent reaches other hosts (a migration's prepare) through the
    // client SDK, like any manager; the CLI is never part of it, and the
    // SDK never of the bridge's side.
    let c = dependency_closure();
    assert_forbidden(&c, "hostbus-agent", &["hostctl"]);
    assert_forbidden(&c, "hostbus-client", &["hostbus-agent", "hostbus-bridge"]);
}

/// The HTTP binding is thin (docs/http.md): its modules reach the host
/// only through the dispatcher the bus binding uses too, and know neither
/// the bridge, libvirt nor AMQP. Every `crate::` path they use is one of
/// the shared pieces (dispatch, the event feed, roles, settings).
#[test]
fn the_http_binding_holds_no_host_logic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/http");
    let allowed = [
        "crate::auth",
        "crate::config",
        "crate::dispatch",
        "crate::feed",
    ];
    let mut files = 0;
    let mut dispatches = false;
    for entry in std::fs::read_dir(&dir).expect("agent/src/http") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        files += 1;
        for forbidden in [
            "hostbus_bridge",
            "virt::",
            "lapin",
            "hostbus_amqp",
            "spawn_blocking",
            // No AMQP envelope built only for the dispatcher to parse back,
            // and no decoding of its own reply to learn the status.
            "AmqpProperties",
            "Envelope::",
            "decode::<Reply",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} mentions {forbidden}: the binding must go through the dispatcher",
                path.display()
            );
        }
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let module = module.trim_end_matches(':');
            assert!(
                allowed
                    .iter()
                    .any(|a| module == *a || module.starts_with(&format!("{a}::"))),
                "{} uses {module}: only {allowed:?} are shared with the binding",
                path.display()
            );
        }
        dispatches |= text.contains(".dispatcher") && text.contains(".handle(");
    }
    assert!(files >= 3, "the binding's modules are in agent/src/http");
    assert!(
        dispatches,
        "the binding runs commands through Dispatcher::handle"
    );
}

/// The dispatcher is the seam between the bindings and the bridge: it
/// takes a typed request and returns a typed answer, and knows no
/// binding's wire (no AMQP property, reply address, ack or dead-letter
/// queue; no HTTP).
#[test]
fn the_dispatcher_knows_no_bindings_wire() {
    let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let mut files = vec![agent.join("dispatch.rs")];
    for entry in std::fs::read_dir(agent.join("dispatch")).expect("agent/src/dispatch") {
        files.push(entry.expect("entry").path());
    }
    assert!(files.len() >= 2, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        for forbidden in [
            "lapin",
            "hostbus_amqp",
            "AmqpProperties",
            "Envelope::",
            "reply_to",
            "dead_letter",
            "axum",
            "StatusCode",
            "HostSnapshot",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} mentions {forbidden}: the dispatcher takes a typed request and knows no binding's wire nor any one command",
                path.display()
            );
        }
    }
}

/// The client's modules import each other in one direction, as
/// ARCHITECTURE.md draws them (a module and its submodules count as one;
/// `lib.rs`, which only re-exports, is left out): a cycle is a module that
/// should be split or a piece that belongs lower down.
#[test]
fn the_clients_modules_import_each_other_in_one_direction() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut read = |module: &str, path: &std::path::Path| {
        let text = std::fs::read_to_string(path).expect("read");
        for (at, _) in text.match_indices("crate::") {
            let used: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !used.is_empty() && used != module {
                edges.entry(module.to_owned()).or_default().insert(used);
            }
        }
    };
    for entry in std::fs::read_dir(&src).expect("client/src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_dir() {
            for sub in std::fs::read_dir(&path).expect("a module folder") {
                read(&name, &sub.expect("entry").path());
            }
        } else if name != "lib" {
            read(&name, &path);
        }
    }
    assert!(edges.len() > 5, "{edges:?}");
    // Depth-first search for a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("the client's modules import in a cycle: {:?}", &path[at..]);
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}
