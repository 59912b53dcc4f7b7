//! The test cluster in `broker-compose/`: `broker-compose/cluster up` starts
//! a private RabbitMQ node and three agents that `hostctl` drives, `cluster
//! down` leaves nothing running, and `docker-compose.yml` declares the same
//! hosts (ids, labels, node files, heartbeat interval) as the script.
//!
//! The compose file is read with serde_norway (a maintained serde YAML
//! parser; cross-checked against PyYAML when `python3 -c 'import yaml'`
//! works), JSON with serde_json.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostbus_tests::{run_logged, Hostctl};
use serde_json::Value;

/// The repository root.
fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn script() -> PathBuf {
    repo().join("broker-compose/cluster")
}

// ------------------------------------------------------------ the script's table

/// One agent of the cluster, as the script or the compose file declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HostDecl {
    id: String,
    labels: Vec<String>,
    /// File name in `bridge/testdata/`.
    node_file: String,
    heartbeat_interval_ms: u64,
}

/// The cluster table of `broker-compose/cluster`: the lines between its
/// `cluster table: begin` and `cluster table: end` markers.
fn script_table() -> Vec<HostDecl> {
    let text = fs::read_to_string(script()).expect("read broker-compose/cluster");
    let begin = text
        .find("# ---- cluster table: begin ----")
        .expect("the script has a `cluster table: begin` marker");
    let end = text
        .find("# ---- cluster table: end ----")
        .expect("the script has a `cluster table: end` marker");
    let table = &text[begin..end];
    let heartbeat: u64 = table
        .lines()
        .find_map(|l| l.trim().strip_prefix("HEARTBEAT_INTERVAL_MS="))
        .expect("the table sets HEARTBEAT_INTERVAL_MS")
        .trim()
        .parse()
        .expect("HEARTBEAT_INTERVAL_MS is a number");
    let rows_start = table
        .find("CLUSTER_TABLE='")
        .expect("the table sets CLUSTER_TABLE")
        + 15;
    let rows_len = table[rows_start..]
        .find('\'')
        .expect("CLUSTER_TABLE is closed");
    let hosts: Vec<HostDecl> = table[rows_start..rows_start + rows_len]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(
                cols.len(),
                4,
                "a table row is `host labels node-file metrics-port`: {l:?}"
            );
            HostDecl {
                id: cols[0].to_owned(),
                labels: cols[1].split(',').map(str::to_owned).collect(),
                node_file: cols[2].to_owned(),
                heartbeat_interval_ms: heartbeat,
            }
        })
        .collect();
    assert_eq!(hosts.len(), 3, "the script declares three hosts: {hosts:?}");
    hosts
}

// ------------------------------------------------------------ processes

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Processes (pid, command line) whose command line contains one of `needles`.
fn processes_mentioning(needles: &[&str]) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmdline.contains(n)) {
            found.push((pid, cmdline));
        }
    }
    found
}

// ------------------------------------------------------------ the cluster

/// A cluster started by `broker-compose/cluster up` in its own temporary
/// run directory and ports. Dropping it runs `cluster down` (also when an
/// assertion failed), and removes the temporary directory unless the test
/// is panicking (the script's logs stay for the failure report).
struct Cluster {
    /// Temporary folder: the run directory and the script's output.
    base: PathBuf,
    run_dir: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    metrics_ports: Vec<u16>,
    down_done: bool,
}

impl Cluster {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tag = format!("{}-{nanos:x}", std::process::id());
        let base = std::env::temp_dir().join(format!("hostbus-cluster-test-{tag}"));
        fs::create_dir_all(&base).expect("create the test folder");
        let ports = free_ports(5);
        Self {
            run_dir: base.join("run"),
            base,
            node: format!("hostbus-cluster-test-{tag}@localhost"),
            amqp_port: ports[0],
            dist_port: ports[1],
            metrics_ports: ports[2..].to_vec(),
            down_done: false,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Runs `broker-compose/cluster <args>`; returns (status, stdout, stderr).
    fn script(&self, args: &[&str], name: &str, timeout: Duration) -> (ExitStatus, String, String) {
        let mut cmd = Command::new(script());
        cmd.args(args)
            .current_dir(repo())
            .env("HOSTBUS_RUN_DIR", &self.run_dir)
            .env("HOSTBUS_AMQP_PORT", self.amqp_port.to_string())
            .env("HOSTBUS_DIST_PORT", self.dist_port.to_string())
            .env("HOSTBUS_NODE_NAME", &self.node)
            .env(
                "HOSTBUS_METRICS_PORTS",
                self.metrics_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        run_logged(cmd, &self.base, name, timeout)
    }

    fn down(&mut self) -> (ExitStatus, String, String) {
        self.down_done = true;
        self.script(&["down"], "down", Duration::from_secs(180))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down_done {
            let (status, out, err) = self.down();
            eprintln!("cleanup: `cluster down` exited {status}\n{out}{err}");
        }
        if std::thread::panicking() {
            eprintln!(
                "the cluster's logs and the script's output stay in {}",
                self.base.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

/// The value of `export NAME=value` (or `export NAME="value"`) in `text`.
fn exported(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&format!("export {name}="))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

/// Hosts of `vm list` JSON rows (`{"host": .., "vm": {..}}`).
fn rows_hosts(rows: &Value) -> BTreeSet<String> {
    rows.as_array()
        .expect("rows are an array")
        .iter()
        .map(|r| r["host"].as_str().expect("row host").to_owned())
        .collect()
}

#[test]
fn cluster_script_runs_end_to_end() {
    let table = script_table();
    let ids: BTreeSet<String> = table.iter().map(|h| h.id.clone()).collect();
    let mut cluster = Cluster::new();

    // up: builds, starts the broker and the agents, waits until they serve.
    let started = Instant::now();
    let (status, out, err) = cluster.script(&["up"], "up", Duration::from_secs(900));
    assert!(
        status.success(),
        "cluster up failed ({status}):\n{out}\n{err}"
    );
    eprintln!("cluster up took {:?}", started.elapsed());
    let url = exported(&out, "HOSTBUS_URL").expect("up prints `export HOSTBUS_URL=...`");
    assert_eq!(url, cluster.url(), "up's URL:\n{out}");
    let path = exported(&out, "PATH").expect("up prints `export PATH=...` for hostctl");
    let bin_dir = path.split(':').next().expect("a folder").to_owned();
    for example in [
        "hostctl hosts",
        "hostctl vm list --all",
        "hostctl vm start h1/db01",
    ] {
        assert!(out.contains(example), "up shows `{example}`:\n{out}");
    }
    // hostctl as `cluster up` installed it, with HOSTBUS_URL (as `cluster
    // env` prints it) and no user config.
    let bin = Path::new(&bin_dir).join("hostctl");
    assert!(bin.is_file(), "{} exists", bin.display());
    let hostctl = Hostctl::new(url)
        .binary(bin)
        .config("/dev/null")
        .env_remove("HOSTBUS_OUTPUT")
        .env_remove("HOSTBUS_TIMEOUT_MS")
        .logged(&cluster.base, Duration::from_secs(60));

    // env and status agree.
    let (status, out, _) = cluster.script(&["env"], "env", Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(out.trim(), format!("export HOSTBUS_URL={}", cluster.url()));
    let (status, out, err) = cluster.script(&["status"], "status", Duration::from_secs(60));
    assert!(status.success(), "status while up ({status}):\n{out}{err}");
    for id in &ids {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("running")),
            "status shows {id} running:\n{out}"
        );
    }

    // up again: already up, nothing restarted.
    let (status, out, err) = cluster.script(&["up"], "up-again", Duration::from_secs(300));
    assert!(status.success(), "second up ({status}):\n{out}{err}");
    assert!(out.contains("already up"), "second up says so:\n{out}");

    // hosts: all three alive, with the table's labels (asked again while a
    // listening window missed some heartbeat).
    let deadline = Instant::now() + Duration::from_secs(60);
    let hosts = loop {
        let hosts = hostctl.json(&["hosts"]);
        let alive: BTreeSet<String> = hosts
            .as_array()
            .expect("hosts is an array")
            .iter()
            .filter(|h| h["liveness"] == "alive")
            .map(|h| h["host_id"].as_str().expect("host_id").to_owned())
            .collect();
        if alive == ids {
            break hosts;
        }
        assert!(
            Instant::now() < deadline,
            "hosts never showed {ids:?} alive; last answer: {hosts:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for decl in &table {
        let h = hosts
            .as_array()
            .expect("array")
            .iter()
            .find(|h| h["host_id"] == decl.id.as_str())
            .expect("host listed");
        let labels: Vec<&str> = h["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|l| l.as_str().expect("label"))
            .collect();
        assert_eq!(labels, decl.labels, "labels of {}", decl.id);
        assert_eq!(h["health"]["status"], "ok", "health of {}: {h:#}", decl.id);
    }

    // vm list --all: VMs from all three hosts, none missing.
    let list = hostctl.json(&["vm", "list", "--all"]);
    assert_eq!(list["missing"], serde_json::json!([]), "{list:#}");
    assert_eq!(rows_hosts(&list["vms"]), ids, "{list:#}");

    // Label groups route to the right hosts.
    for (label, expected) in [("rack-a", &["h1", "h2"][..]), ("gpu", &["h1"][..])] {
        let l = hostctl.json(&["vm", "list", "--label", label]);
        let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(rows_hosts(&l["vms"]), expected, "--label {label}: {l:#}");
    }

    // Start a halted VM on each host and check its state.
    for id in &ids {
        let vm = list["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .find(|r| r["host"] == id.as_str() && r["vm"]["power_state"] == "halted")
            .unwrap_or_else(|| panic!("{id} has a halted VM: {list:#}"));
        let target = format!("{id}/{}", vm["vm"]["name"].as_str().expect("VM name"));
        let out = hostctl.run(&["vm", "start", &target]);
        assert_eq!(
            out.code, 0,
            "vm start {target}:\n{}{}",
            out.stdout, out.stderr
        );
        let got = hostctl.json(&["vm", "get", &target]);
        assert_eq!(
            got["power_state"], "running",
            "{target} after start: {got:#}"
        );
    }

    // The compose file's health check passes against each agent's metrics.
    for (decl, port) in table.iter().zip(&cluster.metrics_ports) {
        let cmd = {
            let mut c = Command::new(repo().join("broker-compose/agent-healthcheck"));
            c.arg(format!("127.0.0.1:{port}"));
            c
        };
        let (status, out, err) =
            run_logged(cmd, &cluster.base, "healthcheck", Duration::from_secs(30));
        assert!(
            status.success(),
            "agent-healthcheck of {} ({status}):\n{out}{err}",
            decl.id
        );
    }

    // down: stops everything, removes the run directory, leaves nothing.
    let started = Instant::now();
    let (status, out, err) = cluster.down();
    assert!(
        status.success(),
        "cluster down failed ({status}):\n{out}{err}"
    );
    eprintln!("cluster down took {:?}", started.elapsed());
    assert!(!cluster.run_dir.exists(), "down removed the run directory");
    let run_dir = cluster.run_dir.display().to_string();
    let left = processes_mentioning(&[&run_dir, &cluster.node]);
    assert!(left.is_empty(), "processes left after down: {left:#?}");
    let (status, out, _) = cluster.script(&["status"], "status-after", Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "status after down:\n{out}");
    let (status, out, _) = cluster.script(&["down"], "down-again", Duration::from_secs(60));
    assert!(status.success(), "a second down is harmless:\n{out}");
}

// ------------------------------------------------------------ the compose file

/// A YAML document as JSON: parsed by serde_norway, merge keys (`<<: *name`)
/// applied (explicit keys win over merged ones). Duplicate keys, tabs and
/// anything else that is not YAML fail the parse.
fn read_yaml(text: &str) -> Value {
    let mut doc: serde_norway::Value = serde_norway::from_str(text).expect("valid YAML");
    doc.apply_merge().expect("merge keys merge mappings");
    serde_json::to_value(doc).expect("YAML with string keys reads as JSON")
}

/// The compose file, parsed by PyYAML, when python3 with PyYAML is here.
fn pyyaml(path: &Path) -> Option<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import yaml,json,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "PyYAML not available, cross-check skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("PyYAML printed JSON"))
}

/// A mapping of the document; panics naming `what` when it is something else.
fn map<'y>(v: &'y Value, what: &str) -> &'y serde_json::Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, found {v:?}"))
}

/// A scalar as written: strings, numbers and booleans, as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn env_of<'y>(service: &'y Value, name: &str) -> &'y serde_json::Map<String, Value> {
    map(
        service
            .get("environment")
            .unwrap_or_else(|| panic!("service {name} has an environment mapping")),
        name,
    )
}

fn env_str(env: &serde_json::Map<String, Value>, key: &str, service: &str) -> String {
    env.get(key)
        .and_then(scalar)
        .unwrap_or_else(|| panic!("service {service} sets {key}"))
}

#[test]
fn compose_file_matches_the_script() {
    let dir = repo().join("broker-compose");
    let path = dir.join("docker-compose.yml");
    let text = fs::read_to_string(&path).expect("read docker-compose.yml");
    let doc = read_yaml(&text);
    match pyyaml(&path) {
        Some(reference) => assert_eq!(doc, reference, "the YAML parser agrees with PyYAML"),
        None => eprintln!("checked with serde_norway only"),
    }
    let services = map(doc.get("services").expect("services"), "services");
    let str_at = |v: Option<&Value>| v.and_then(scalar);

    // The broker: RabbitMQ with the management plugin and a health check,
    // and a user that may log in from other containers.
    let rabbit = services.get("rabbitmq").expect("a rabbitmq service");
    // RabbitMQ 4 by default; another image through a variable
    // (broker-compose/images names local ones in .env).
    assert_eq!(
        str_at(rabbit.get("image")).as_deref(),
        Some("${HOSTBUS_RABBITMQ_IMAGE:-rabbitmq:4-management}")
    );
    let test = rabbit
        .get("healthcheck")
        .and_then(|h| h.get("test"))
        .expect("rabbitmq has a health check");
    assert_eq!(
        test,
        &serde_json::json!(["CMD", "rabbitmq-diagnostics", "-q", "ping"])
    );
    let renv = env_of(rabbit, "rabbitmq");
    let user = env_str(renv, "RABBITMQ_DEFAULT_USER", "rabbitmq");
    let pass = env_str(renv, "RABBITMQ_DEFAULT_PASS", "rabbitmq");
    assert_ne!(user, "guest", "guest may only log in from localhost");
    let broker_url = format!("amqp://{user}:{pass}@rabbitmq:5672/%2f");

    // The agents: every service that sets HOSTBUS_HOST_ID.
    let dockerfile = fs::read_to_string(dir.join("Dockerfile")).expect("read the Dockerfile");
    let mut agents = Vec::new();
    for (name, service) in services {
        let Some(env) = service.get("environment").map(|e| map(e, name)) else {
            continue;
        };
        let Some(id) = str_at(env.get("HOSTBUS_HOST_ID")) else {
            continue;
        };
        assert_eq!(name, &id, "agent services are named after their host");
        assert_eq!(env_str(env, "HOSTBUS_BROKER_URLS", name), broker_url);
        // hostctl logs in as the broker's user: without a role there, every
        // command was PERMISSION_DENIED (found by the compose suite).
        assert_eq!(
            env_str(env, "HOSTBUS_ROLES", name),
            format!("{user}=admin"),
            "{name} gives the broker's user a role"
        );
        assert_eq!(env_str(env, "HOSTBUS_METRICS_ADDR", name), "0.0.0.0:9187");
        let uri = env_str(env, "HOSTBUS_LIBVIRT_URI", name);
        let node_file = uri
            .strip_prefix("test:///etc/hostbus/")
            .unwrap_or_else(|| panic!("{name}: {uri} is a node file in /etc/hostbus/"));
        assert!(
            repo().join("bridge/testdata").join(node_file).is_file(),
            "{name}: bridge/testdata/{node_file} exists"
        );
        assert!(
            dockerfile.lines().any(|l| l.starts_with("COPY")
                && l.contains(&format!("bridge/testdata/{node_file}"))
                && l.trim_end().ends_with("/etc/hostbus/")),
            "the Dockerfile copies {node_file} to /etc/hostbus/"
        );
        let build = service.get("build").expect("agents are built");
        assert_eq!(str_at(build.get("context")).as_deref(), Some(".."));
        assert_eq!(
            str_at(build.get("dockerfile")).as_deref(),
            Some("broker-compose/Dockerfile")
        );
        // The base images are build arguments the Dockerfile declares,
        // from variables defaulting to the official images.
        for (arg, default) in [
            ("RUST_IMAGE", "rust:1-bookworm"),
            ("DEBIAN_IMAGE", "debian:bookworm-slim"),
        ] {
            let var = format!("HOSTBUS_{arg}");
            assert_eq!(
                str_at(build.get("args").and_then(|a| a.get(arg))).as_deref(),
                Some(format!("${{{var}:-{default}}}").as_str()),
                "{name}: build argument {arg}"
            );
            assert!(
                dockerfile
                    .lines()
                    .any(|l| l.trim() == format!("ARG {arg}={default}")),
                "the Dockerfile declares ARG {arg}={default}"
            );
        }
        assert_eq!(
            str_at(
                service
                    .get("depends_on")
                    .and_then(|d| d.get("rabbitmq"))
                    .and_then(|r| r.get("condition"))
            )
            .as_deref(),
            Some("service_healthy"),
            "{name} waits for a healthy broker"
        );
        assert!(
            service
                .get("healthcheck")
                .and_then(|h| h.get("test"))
                .is_some(),
            "{name} has a health check"
        );
        agents.push(HostDecl {
            id: id.clone(),
            labels: env_str(env, "HOSTBUS_LABELS", name)
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect(),
            node_file: node_file.to_owned(),
            heartbeat_interval_ms: env_str(env, "HOSTBUS_HEARTBEAT_INTERVAL_MS", name)
                .parse()
                .expect("a number"),
        });
    }
    let mut script = script_table();
    agents.sort();
    script.sort();
    assert_eq!(
        agents, script,
        "docker-compose.yml and broker-compose/cluster declare the same hosts"
    );

    // hostctl: on demand (a profile), from the same image, with HOSTBUS_URL.
    let hostctl = services.get("hostctl").expect("a hostctl service");
    assert!(
        hostctl.get("profiles").is_some(),
        "hostctl is not started by `up`"
    );
    assert_eq!(
        hostctl.get("entrypoint"),
        Some(&serde_json::json!(["hostctl"]))
    );
    assert_eq!(
        env_str(env_of(hostctl, "hostctl"), "HOSTBUS_URL", "hostctl"),
        broker_url
    );
    assert_eq!(
        hostctl.get("image"),
        services.get("h1").and_then(|h| h.get("image")),
        "hostctl runs the agents' image"
    );
}

/// The broker-cluster profile (`broker-cluster.yml`, on top of
/// docker-compose.yml): three RabbitMQ nodes whose host names are the nodes
/// `rabbitmq/cluster.conf` names, one cookie, every agent and hostctl given
/// every node, agents started once every node is healthy. (The compose suite
/// runs it; this checks what it cannot see: that nothing was left out.)
#[test]
fn broker_cluster_profile_gives_every_node_to_every_agent() {
    let dir = repo().join("broker-compose");
    let path = dir.join("broker-cluster.yml");
    let doc = read_yaml(&fs::read_to_string(&path).expect("read broker-cluster.yml"));
    if let Some(reference) = pyyaml(&path) {
        assert_eq!(doc, reference, "the YAML parser agrees with PyYAML");
    }
    let base = read_yaml(&fs::read_to_string(dir.join("docker-compose.yml")).expect("read"));
    let services = map(doc.get("services").expect("services"), "services");
    let conf = fs::read_to_string(dir.join("rabbitmq/cluster.conf")).expect("cluster.conf");
    let mut nodes: Vec<String> = conf
        .lines()
        .filter_map(|l| l.split_once("cluster_formation.classic_config.nodes."))
        .filter_map(|(_, rest)| rest.split_once('=').map(|(_, n)| n.trim().to_owned()))
        .collect();
    nodes.sort();
    assert_eq!(nodes.len(), 3, "three nodes in cluster.conf: {nodes:?}");
    let mut cookies = BTreeSet::new();
    let mut urls = Vec::new();
    for node in &nodes {
        let host = node.strip_prefix("rabbit@").expect("rabbit@<host>");
        let svc = services
            .get(host)
            .unwrap_or_else(|| panic!("a service for node {node}"));
        // The first node's host name and image come from docker-compose.yml.
        let hostname = svc
            .get("hostname")
            .or_else(|| base["services"][host].get("hostname"))
            .and_then(scalar);
        assert_eq!(hostname.as_deref(), Some(host), "{host}'s host name");
        let env = env_of(svc, host);
        cookies.insert(env_str(env, "RABBITMQ_ERLANG_COOKIE", host));
        assert!(
            env_str(env, "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", host).contains("-setcookie"),
            "{host} is given the cookie"
        );
        let mounts = svc
            .get("volumes")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(
            mounts.contains("./rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/"),
            "{host} reads cluster.conf: {mounts}"
        );
        let test = svc
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .map(Value::to_string)
            .unwrap_or_default();
        assert!(test.contains("await_online_nodes 3"), "{host}: {test}");
        urls.push(format!("amqp://hostbus:hostbus@{host}:5672/%2f"));
    }
    assert_eq!(cookies.len(), 1, "one Erlang cookie: {cookies:?}");
    let all = urls.join(",");
    let base_services = map(base.get("services").expect("services"), "services");
    for (name, svc) in base_services {
        let is_agent = svc
            .get("environment")
            .and_then(|e| e.get("HOSTBUS_HOST_ID"))
            .is_some();
        if !is_agent {
            continue;
        }
        let over = services
            .get(name)
            .unwrap_or_else(|| panic!("broker-cluster.yml overrides agent {name}"));
        assert_eq!(
            env_str(env_of(over, name), "HOSTBUS_BROKER_URLS", name),
            all,
            "{name} is given every node"
        );
        for node in &nodes {
            let host = node.trim_start_matches("rabbit@");
            assert_eq!(
                over["depends_on"][host]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {host}"
            );
        }
    }
    assert_eq!(
        env_str(
            env_of(&services["hostctl"], "hostctl"),
            "HOSTBUS_URL",
            "hostctl"
        ),
        all
    );
}

/// The parser reads the YAML the compose file uses as the old std-only
/// reader did: anchors, merge keys (explicit keys win), comments, quotes,
/// flow sequences, empty values, sequences at their key's indentation.
#[test]
fn yaml_reader_handles_the_subset() {
    let doc = read_yaml(
        "\
# comment
base: &b
  a: 1
  list:
    - x
    - 'y # not a comment'
svc:
  <<: *b
  a: 2 # explicit wins
  flow: [\"CMD\", 'two', three]
  empty:
  seq:
  - same-indent
",
    );
    let svc = doc.get("svc").expect("svc");
    assert_eq!(svc.get("a"), Some(&serde_json::json!(2)));
    assert_eq!(
        svc.get("list"),
        Some(&serde_json::json!(["x", "y # not a comment"]))
    );
    assert_eq!(
        svc.get("flow"),
        Some(&serde_json::json!(["CMD", "two", "three"]))
    );
    assert_eq!(svc.get("empty"), Some(&Value::Null));
    assert_eq!(svc.get("seq"), Some(&serde_json::json!(["same-indent"])));
}
