//! The Python SDK (`clients/python`, package `hostbus`) against real parts:
//! its own pytest suite runs against the quickstart cluster of
//! `broker-compose/cluster` (a private RabbitMQ node and agents h1, h2, h3
//! on libvirt's test driver, with the labels and node files of the
//! script's table), it type-checks with `mypy --strict`, and it installs
//! from its folder into a fresh virtual environment, where the README's
//! Python example runs against such a cluster.
//!
//! The tools come from a virtual environment that `scripts/test` makes
//! once, with pinned versions, and names in `HOSTBUS_TEST_PYTHON_SDK_VENV`;
//! without it the suite fails and says so.
//!
//! What the SDK's tests get, as environment variables (the fixtures of
//! `clients/python/tests/conftest.py` read them):
//!
//! | variable | value |
//! |---|---|
//! | `HOSTBUS_TEST_URL` | AMQP URL of the `guest` login, `admin` on every agent |
//! | `HOSTBUS_TEST_VIEWER_URL` | AMQP URL of the `viewer` login, `read-only` |
//! | `HOSTBUS_TEST_HOSTS` | `h1,h2,h3` |
//! | `HOSTBUS_TEST_SLOW_HOST` | `h3`, whose agent pauses 700 ms between the steps of an operation |
//! | `HOSTBUS_TEST_SOCKET` | h1's HTTP socket (docs/http.md); the tests run as root, `admin` there |
//! | `HOSTBUS_TEST_CTL` | the control script, [`CTL_SCRIPT`] |
//! | `HOSTBUS_TEST_HEARTBEAT_MS` | the agents' heartbeat interval, `1000` |
//!
//! The cluster is the SDK's to break: `ctl kill-agent` SIGKILLs an agent
//! for good, `ctl broker stop` stops the broker until `ctl broker start`;
//! the SDK's tests that do so live in a file named to sort last. Each test
//! here starts its own cluster, and those that do take turns. pytest must
//! report at least `HOSTBUS_TEST_PYTEST_MIN` tests passed (default: the whole suite's
//! 70, or 1 when `HOSTBUS_TEST_PYTEST_ARGS` picks part of it).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hostbus_tests::{
    signal_group, watch_online, workspace_dir, AgentProcess, HttpPeer, RabbitNode, Signal, TempDir,
    ONLINE_TIMEOUT,
};

/// The virtual environment with the pinned tools (pytest, mypy, pika,
/// msgpack, httpx) that `scripts/test` installs.
const VENV_ENV: &str = "HOSTBUS_TEST_PYTHON_SDK_VENV";
/// The fewest tests pytest must report passed (see [`pytest_min`]): an empty or
/// shrunken run must not pass.
const PYTEST_MIN_ENV: &str = "HOSTBUS_TEST_PYTEST_MIN";
/// The heading of the README section whose first ```` ```python ```` block
/// runs.
const README_SECTION: &str = "## Driving hostbus from Python";
/// Debian's interpreter: fresh virtual environments are made with it.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// The agents' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// The agents' roles: the admin login of the suites, and a read-only one.
/// The agents log in as [`AGENT`], not as `guest`: an agent serves the
/// host-to-host steps of a migration to its own login, and the SDK's tests
/// check that `guest`, an admin, may not send them.
const ROLES: &str = "guest=admin,viewer=read-only";
/// The agents' own broker login (user and password).
const AGENT: &str = "hostbus-agent";
/// The host whose agent pauses between the steps of multi-step operations
/// (`HOSTBUS_STEP_PAUSE_MS`), so that a test can cancel a task between them.
const SLOW_HOST: &str = "h3";
/// The pause, in milliseconds.
const STEP_PAUSE_MS: &str = "700";
/// The read-only login (user and password), added to the broker.
const VIEWER: &str = "viewer";
/// How long the SDK's pytest suite may take.
const PYTEST_LIMIT: Duration = Duration::from_secs(600);
/// How long mypy may take (a first run, without a cache, takes the most).
const MYPY_LIMIT: Duration = Duration::from_secs(300);
/// How long a `pip` step may take (it downloads from PyPI).
const PIP_LIMIT: Duration = Duration::from_secs(300);
/// How long the README's example may take.
const EXAMPLE_LIMIT: Duration = Duration::from_secs(120);

/// The control script the SDK's tests call (`HOSTBUS_TEST_CTL`), run by
/// Debian's Python; its settings are `ctl.json` beside it (see
/// [`Cluster::write_ctl`]).
const CTL_SCRIPT: &str = r#"#!/usr/bin/python3
"""Control of the test cluster of tests/tests/python_sdk.rs, for the Python
SDK's tests (HOSTBUS_TEST_CTL). Its settings are ctl.json beside it.

usage: ctl kill-agent HOST          SIGKILL agent HOST; returns once it is dead
       ctl broker stop              stop the broker (`rabbitmqctl stop_app`);
                                    returns once its AMQP port refuses connections
       ctl broker start             start it again (`rabbitmqctl start_app`);
                                    returns once it answers AMQP
       ctl close-connections NAME   close, on the broker, every client connection
                                    whose `connection_name` client property
                                    contains NAME; prints how many (exit 3: none)

Exit status: 0 done, 1 failed (why, on stderr), 2 bad usage, 3 no connection
matched.
"""
import json, os, signal, socket, subprocess, sys, time

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ctl.json")) as f:
    CONF = json.load(f)
# What RabbitMQ 4.0.5 sometimes says when a start races its own check of
# deprecated features (tests/src/rabbit/node.rs); the start is tried again.
DENIAL_RACE = "failed_to_deny_deprecated_features"


def fail(message, status=1):
    print(f"ctl: {message}", file=sys.stderr)
    sys.exit(status)


def rabbitmqctl(*args):
    """rabbitmqctl on the cluster's node, as the harness runs it."""
    ctl = CONF["rabbitmqctl"]
    env = {k: v for k, v in os.environ.items() if k not in ctl["env_remove"]}
    env.update(ctl["env"])
    return subprocess.run([ctl["program"], *ctl["args"], *args], env=env,
                          cwd=ctl["cwd"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def rabbitmqctl_ok(*args):
    r = rabbitmqctl(*args)
    if r.returncode != 0:
        fail(f"`rabbitmqctl {' '.join(args)}` failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def answers_amqp():
    """Whether the AMQP port answers a protocol header with a method frame
    (connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", CONF["amqp_port"]), timeout=2) as s:
            s.settimeout(5)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def wait_until(done, seconds, what):
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            fail(f"{what}: not after {seconds} s")
        time.sleep(0.1)


def is_dead(pid):
    """Whether `pid` has exited (gone, or a zombie its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_agent(host):
    pid = CONF["agents"].get(host)
    if pid is None:
        fail(f"no agent {host!r}; the agents are {', '.join(CONF['agents'])}", 2)
    if not is_dead(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if CONF["agent_binary"].encode() not in f.read():
                fail(f"process {pid} is no longer agent {host}")
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: is_dead(pid), 10, f"agent {host} (pid {pid}) dying")


def broker_stop():
    rabbitmqctl_ok("stop_app")
    wait_until(lambda: not answers_amqp(), 30, "the AMQP port refusing connections")


def broker_start():
    for attempt in range(5):
        r = rabbitmqctl("start_app")
        if r.returncode == 0:
            break
        if DENIAL_RACE not in r.stdout + r.stderr or attempt == 4:
            fail(f"`rabbitmqctl start_app` failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        print(f"ctl: start_app refused with {DENIAL_RACE} (a RabbitMQ 4.0 race); again",
              file=sys.stderr)
    wait_until(answers_amqp, 60, "the broker answering AMQP")


def connection_name(properties):
    """`connection_name` of client properties as the JSON formatter prints
    them: [[key, type, value], ...]."""
    for entry in properties or []:
        if len(entry) == 3 and entry[0] == "connection_name" and isinstance(entry[2], str):
            return entry[2]
    return None


def close_connections(needle):
    # The JSON listing reads client properties exactly but prints pids as
    # `#PID<...>`, which close_connection does not take; the table prints
    # pids as it does. Both carry the connection's unique `name`
    # (`peer -> server` addresses). Same columns on RabbitMQ 3.10 and 4.0.
    listed = json.loads(rabbitmqctl_ok("-q", "list_connections", "name", "client_properties",
                                       "--formatter", "json") or "[]")
    names = {c["name"] for c in listed
             if needle in (connection_name(c.get("client_properties")) or "")}
    pids = {}
    for line in rabbitmqctl_ok("-q", "list_connections", "--no-table-headers",
                               "pid", "name").splitlines():
        pid, _, name = line.partition("\t")
        pids[name.strip()] = pid.strip()
    closed = 0
    for name in sorted(names):
        if name in pids:
            rabbitmqctl_ok("close_connection", pids[name],
                           f"closed by the test harness (ctl close-connections {needle})")
            closed += 1
    print(closed)
    if closed == 0:
        fail(f"no client connection's connection_name contains {needle!r}", 3)


def main(argv):
    match argv:
        case ["kill-agent", host]:
            kill_agent(host)
        case ["broker", "stop"]:
            broker_stop()
        case ["broker", "start"]:
            broker_start()
        case ["close-connections", needle] if needle:
            close_connections(needle)
        case _:
            print(__doc__, file=sys.stderr)
            sys.exit(2)


main(sys.argv[1:])
"#;

/// One host of the quickstart cluster.
#[derive(Debug)]
struct HostDecl {
    id: String,
    labels: Vec<String>,
    node_file: String,
}

/// The hosts of `broker-compose/cluster`'s table (`CLUSTER_TABLE`: host,
/// labels, node file, metrics port), so the SDK's tests see the cluster a
/// user of the README starts.
fn quickstart_hosts() -> Vec<HostDecl> {
    let path = workspace_dir().join("broker-compose/cluster");
    let script =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let rows = script
        .split_once("CLUSTER_TABLE='")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(rows, _)| rows)
        .unwrap_or_else(|| panic!("{} sets no CLUSTER_TABLE='...'", path.display()));
    let hosts: Vec<HostDecl> = rows
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols[..] {
                [] => None,
                [id, labels, node_file, _metrics] => Some(HostDecl {
                    id: id.to_owned(),
                    labels: labels.split(',').map(str::to_owned).collect(),
                    node_file: node_file.to_owned(),
                }),
                _ => panic!("a CLUSTER_TABLE row is `host labels node-file metrics-port`: {l:?}"),
            }
        })
        .collect();
    let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["h1", "h2", "h3"], "the quickstart hosts: {hosts:?}");
    hosts
}

/// The virtual environment of `HOSTBUS_TEST_PYTHON_SDK_VENV`; panics, saying
/// what sets it, when it is unset or holds no Python.
fn venv() -> PathBuf {
    let Some(dir) = std::env::var_os(VENV_ENV).filter(|d| !d.is_empty()) else {
        panic!(
            "{VENV_ENV} is not set: it names the virtual environment with the Python SDK's \
             pinned test tools, which scripts/test makes (in \
             ${{CARGO_TARGET_DIR:-target}}/python-sdk-venv) and exports; run scripts/test, or \
             make it as scripts/test does and export {VENV_ENV}=<its absolute path>"
        );
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("bin/python").is_file(),
        "{VENV_ENV}={} holds no bin/python; scripts/test makes it",
        dir.display()
    );
    dir
}

/// How many tests the whole suite has at least (72 when this was written):
/// a run that passes fewer lost some on the way (a file that stopped being
/// collected, a test skipped for good).
const FULL_SUITE_MIN: u32 = 70;

/// `HOSTBUS_TEST_PYTEST_MIN`; by default [`FULL_SUITE_MIN`], or 1 when
/// `HOSTBUS_TEST_PYTEST_ARGS` picks part of the suite.
fn pytest_min() -> u32 {
    match std::env::var(PYTEST_MIN_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{PYTEST_MIN_ENV}={v:?} is not a number")),
        _ if std::env::var_os("HOSTBUS_TEST_PYTEST_ARGS").is_some_and(|a| !a.is_empty()) => 1,
        _ => FULL_SUITE_MIN,
    }
}

/// The first ```` ```python ```` block of section `heading` of the
/// markdown file `path`, verbatim.
fn python_block(path: &Path, heading: &str) -> String {
    let doc =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "{} has no section {heading:?}",
        path.display()
    );
    let block: Vec<&str> = lines
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| l.trim_end() != "```python")
        .skip(1)
        .take_while(|l| l.trim_end() != "```")
        .collect();
    assert!(
        !block.is_empty(),
        "section {heading:?} of {} has no ```python block",
        path.display()
    );
    block.join("\n") + "\n"
}

/// One cluster at a time: each is a RabbitMQ node and three agents on two
/// cores, and the SDK's tests time what they break.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The quickstart cluster on a private RabbitMQ node, with h1's HTTP
/// socket and the control script in a folder of its own.
struct Cluster {
    agents: Vec<AgentProcess>,
    node: RabbitNode,
    socket: PathBuf,
    ctl: PathBuf,
    // Last: removed after the processes are gone.
    dir: TempDir,
}

impl Cluster {
    /// Starts the node, adds the viewer login, starts the agents and waits
    /// until each is online and h1's socket answers.
    fn start() -> Self {
        let started = Instant::now();
        let node = RabbitNode::start_private().expect("rabbit");
        node.add_user(VIEWER, VIEWER).expect("the viewer login");
        node.add_user(AGENT, AGENT).expect("the agents' login");
        let agent_url = node.url_for(AGENT, AGENT);
        let dir = TempDir::new("hostbus-python-sdk").expect("temporary directory");
        let socket = dir.join("h1.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let agents = runtime.block_on(async {
            let (peer, mut online) = watch_online(&node.amqp_url()).await;
            let mut agents = Vec::new();
            for host in quickstart_hosts() {
                let mut agent = AgentProcess::builder(&host.id, &agent_url)
                    .labels(&host.labels)
                    .libvirt_uri(format!(
                        "test://{}/bridge/testdata/{}",
                        workspace_dir().display(),
                        host.node_file
                    ))
                    .heartbeat_interval(HEARTBEAT)
                    .env("HOSTBUS_ROLES", ROLES);
                if host.id == "h1" {
                    agent = agent.arg("--http-socket").arg(&socket);
                }
                if host.id == SLOW_HOST {
                    agent = agent.env("HOSTBUS_STEP_PAUSE_MS", STEP_PAUSE_MS);
                }
                agents.push(agent.start());
            }
            let logs = |agents: &[AgentProcess]| -> String {
                agents.iter().map(|a| a.log_tail(30) + "\n").collect()
            };
            let mut waiting: BTreeSet<&str> = agents.iter().map(AgentProcess::host_id).collect();
            while !waiting.is_empty() {
                let r = online.next(ONLINE_TIMEOUT).await.unwrap_or_else(|e| {
                    panic!("{e}; still not online: {waiting:?}\n{}", logs(&agents))
                });
                if let Some(host) = r.routing_key.strip_suffix(".agent.online") {
                    waiting.remove(host);
                }
            }
            let _ = peer.close().await;
            if let Err(e) = HttpPeer::wait(&socket, ONLINE_TIMEOUT).await {
                panic!("h1's socket: {e}\n{}", logs(&agents));
            }
            agents
        });
        let mut cluster = Self {
            agents,
            node,
            socket,
            ctl: dir.join("ctl"),
            dir,
        };
        cluster.write_ctl();
        println!(
            "cluster of {} agents up in {:.1} s",
            cluster.agents.len(),
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    /// Writes the control script and its settings: how the harness runs
    /// `rabbitmqctl` on the node, the AMQP port, the agents' pids.
    fn write_ctl(&mut self) {
        let rabbitmqctl = self.node.ctl_command().expect("rabbitmqctl");
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        let mut env = serde_json::Map::new();
        let mut env_remove = Vec::new();
        for (key, value) in rabbitmqctl.get_envs() {
            match value {
                Some(v) => {
                    env.insert(text(key), text(v).into());
                }
                None => env_remove.push(text(key)),
            }
        }
        let agents: serde_json::Map<String, serde_json::Value> = self
            .agents
            .iter()
            .map(|a| {
                (
                    a.host_id().to_owned(),
                    a.pid().expect("a started agent").into(),
                )
            })
            .collect();
        let settings = serde_json::json!({
            "rabbitmqctl": {
                "program": text(rabbitmqctl.get_program()),
                "args": rabbitmqctl.get_args().map(text).collect::<Vec<_>>(),
                "cwd": rabbitmqctl.get_current_dir().map(|d| text(d.as_os_str())),
                "env": env,
                "env_remove": env_remove,
            },
            "amqp_port": self.node.port(),
            "agent_binary": "hostbus-agent",
            "agents": agents,
        });
        let json = serde_json::to_string_pretty(&settings).expect("settings");
        fs::write(self.dir.join("ctl.json"), json).expect("write ctl.json");
        fs::write(&self.ctl, CTL_SCRIPT).expect("write ctl");
        fs::set_permissions(&self.ctl, fs::Permissions::from_mode(0o755)).expect("chmod ctl");
    }

    /// The environment of the SDK's tests (see the module's table).
    fn test_env(&self) -> Vec<(&'static str, String)> {
        let hosts: Vec<&str> = self.agents.iter().map(AgentProcess::host_id).collect();
        vec![
            ("HOSTBUS_TEST_URL", self.node.amqp_url()),
            ("HOSTBUS_TEST_VIEWER_URL", self.node.url_for(VIEWER, VIEWER)),
            ("HOSTBUS_TEST_HOSTS", hosts.join(",")),
            ("HOSTBUS_TEST_SLOW_HOST", SLOW_HOST.to_owned()),
            ("HOSTBUS_TEST_SOCKET", self.socket.display().to_string()),
            ("HOSTBUS_TEST_CTL", self.ctl.display().to_string()),
            (
                "HOSTBUS_TEST_HEARTBEAT_MS",
                HEARTBEAT.as_millis().to_string(),
            ),
        ]
    }

    /// The tails of the agents' logs and of the node's, for a failure.
    fn logs(&self) -> String {
        let mut out: String = self.agents.iter().map(|a| a.log_tail(30) + "\n").collect();
        out.push_str(&self.node.log_tail(20));
        out
    }
}

/// `program` with stdin closed, without the `HOSTBUS_*` and `PYTHON*`
/// variables of the test's own environment, and writing no bytecode (the
/// source tree stays as it is).
fn python_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("HOSTBUS_") || k.starts_with("PYTHON") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1").stdin(Stdio::null());
    cmd
}

/// How a program run by [`run`] ended, and what it printed.
struct Run {
    what: String,
    /// `None`: killed at its time limit.
    status: Option<ExitStatus>,
    /// Standard output and error, interleaved as written.
    output: String,
    took: Duration,
}

impl Run {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics with the output unless the program exited 0.
    fn expect_success(&self, context: impl FnOnce() -> String) {
        if !self.success() {
            let ended = self.status.map_or_else(
                || format!("was killed after {:.0} s", self.took.as_secs_f64()),
                |s| format!("failed ({s})"),
            );
            panic!(
                "{} {ended}; it printed:\n{}\n{}",
                self.what,
                self.output,
                context()
            );
        }
    }
}

/// Runs `cmd` in a process group of its own, its standard output and error
/// into the file `log` (not pipes: nothing it leaves running can hold
/// them) and echoed as they come (shown with `--nocapture`, or when the
/// test fails); after `limit` the whole group is killed.
fn run(what: &str, cmd: &mut Command, log: &Path, limit: Duration) -> Run {
    let file = fs::File::create(log).expect("create the log");
    let file2 = file.try_clone().expect("clone the log");
    let started = Instant::now();
    println!("--- {what} ---");
    let mut child = cmd
        .stdout(file)
        .stderr(file2)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut reader = fs::File::open(log).expect("open the log");
    let echo = |reader: &mut fs::File| {
        let mut new = Vec::new();
        let _ = reader.read_to_end(&mut new);
        if !new.is_empty() {
            print!("{}", String::from_utf8_lossy(&new));
            let _ = std::io::stdout().flush();
        }
    };
    let status = loop {
        echo(&mut reader);
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = signal_group(child.id(), Signal::Kill);
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    echo(&mut reader);
    println!(
        "--- {what}: {status:?} after {:.1} s ---",
        started.elapsed().as_secs_f64()
    );
    Run {
        what: what.to_owned(),
        status,
        output: fs::read_to_string(log).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// The counts of pytest's summary line (`3 passed, 1 skipped in 0.52s`,
/// perhaps between `=` signs): the last line that is only `<n> <outcome>`
/// parts before ` in <time>`.
fn pytest_summary(output: &str) -> Option<Vec<(u32, String)>> {
    output.lines().rev().find_map(|line| {
        let line = line.trim().trim_matches('=').trim();
        let (counts, time) = line.rsplit_once(" in ")?;
        if !time.ends_with('s') {
            return None;
        }
        counts
            .split(", ")
            .map(|part| {
                let (n, outcome) = part.split_once(' ')?;
                let word = !outcome.is_empty() && outcome.chars().all(|c| c.is_ascii_lowercase());
                word.then_some((n.parse().ok()?, outcome.to_owned()))
            })
            .collect()
    })
}

/// How many tests pytest's summary says passed (0 when it names none).
fn pytest_passed(output: &str) -> Option<u32> {
    pytest_summary(output).map(|counts| {
        counts
            .iter()
            .filter(|(_, outcome)| outcome == "passed")
            .map(|(n, _)| n)
            .sum()
    })
}

/// Copies the package's folder, without what builds and tools leave in
/// it, so that pip builds in the copy and writes nothing (`build/`,
/// `*.egg-info`) into the source tree.
fn copy_package(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy's folder");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("a folder entry");
        let name = entry.file_name();
        let n = name.to_string_lossy();
        let leftover = matches!(
            n.as_ref(),
            "__pycache__" | ".mypy_cache" | ".pytest_cache" | "build" | "dist" | ".venv"
        ) || n.ends_with(".egg-info");
        if leftover {
            continue;
        }
        let kind = entry.file_type().expect("a file type");
        if kind.is_dir() {
            copy_package(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            fs::copy(entry.path(), to.join(&name)).expect("copy a file");
        }
    }
}

#[test]
fn the_python_sdk_passes_its_tests_against_real_agents() {
    let venv = venv();
    let min = pytest_min();
    let _turn = turn();
    let cluster = Cluster::start();
    let ws = workspace_dir();
    let mut cmd = python_command(&venv.join("bin/python"));
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "clients/python/tests",
    ])
    // To run part of the suite by hand: HOSTBUS_TEST_PYTEST_ARGS="-k socket".
    .args(
        std::env::var("HOSTBUS_TEST_PYTEST_ARGS")
            .unwrap_or_default()
            .split_whitespace(),
    )
    .current_dir(&ws)
    .env("PYTHONPATH", ws.join("clients/python"))
    .envs(cluster.test_env());
    let pytest = run(
        "pytest clients/python/tests",
        &mut cmd,
        &cluster.dir.join("pytest.log"),
        PYTEST_LIMIT,
    );
    pytest.expect_success(|| cluster.logs());
    let passed = pytest_passed(&pytest.output)
        .unwrap_or_else(|| panic!("pytest printed no summary line:\n{}", pytest.output));
    assert!(
        passed >= min,
        "pytest passed {passed} tests, fewer than {min} ({PYTEST_MIN_ENV}):\n{}",
        pytest.output
    );
    println!(
        "pytest: {passed} passed in {:.1} s",
        pytest.took.as_secs_f64()
    );
}

#[test]
fn the_python_sdk_type_checks_strictly() {
    let venv = venv();
    let package = workspace_dir().join("clients/python");
    assert!(
        package.join("pyproject.toml").is_file(),
        "{} has no pyproject.toml, whose [tool.mypy] names the files to check",
        package.display()
    );
    let dir = TempDir::new("hostbus-python-mypy").expect("temporary directory");
    let mut cmd = python_command(&venv.join("bin/python"));
    // --strict beside the package's own `strict = true`: strict whatever
    // the configuration says; the cache goes to the temporary folder.
    cmd.args(["-m", "mypy", "--strict"])
        .current_dir(&package)
        .env("MYPY_CACHE_DIR", dir.join("mypy-cache"));
    let mypy = run("mypy --strict", &mut cmd, &dir.join("mypy.log"), MYPY_LIMIT);
    mypy.expect_success(String::new);
}

#[test]
fn the_python_package_installs_into_a_fresh_venv_and_the_readme_example_runs() {
    let example = python_block(&workspace_dir().join("README.md"), README_SECTION);
    let dir = TempDir::new("hostbus-python-package").expect("temporary directory");
    let source = dir.join("source");
    copy_package(&workspace_dir().join("clients/python"), &source);

    // A fresh environment, and the package from its folder, with its
    // dependencies from PyPI.
    let fresh = dir.join("venv");
    let python = fresh.join("bin/python");
    run(
        "python3 -m venv",
        Command::new(SYSTEM_PYTHON)
            .args(["-m", "venv"])
            .arg(&fresh)
            .stdin(Stdio::null()),
        &dir.join("venv.log"),
        PIP_LIMIT,
    )
    .expect_success(String::new);
    let pip = |what: &str, args: &[&str], log: &str| {
        let mut cmd = python_command(&python);
        cmd.args(["-m", "pip", "--disable-pip-version-check"])
            .args(args)
            .current_dir(dir.path());
        run(what, &mut cmd, &dir.join(log), PIP_LIMIT).expect_success(String::new);
    };
    let source_arg = source.display().to_string();
    pip(
        "pip install clients/python",
        &["install", &source_arg],
        "pip-install.log",
    );
    let wheels = dir.join("wheels");
    let wheels_arg = wheels.display().to_string();
    pip(
        "pip wheel clients/python",
        &["wheel", "--no-deps", "-w", &wheels_arg, &source_arg],
        "pip-wheel.log",
    );
    let built: Vec<String> = fs::read_dir(&wheels)
        .expect("the wheel folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        built
            .iter()
            .any(|w| w.starts_with("hostbus-") && w.ends_with(".whl")),
        "pip wheel built no hostbus-*.whl: {built:?}"
    );
    // The package imported from the environment, not a source tree.
    let mut cmd = python_command(&python);
    cmd.args(["-c", "import hostbus; print(hostbus.__file__)"])
        .current_dir(dir.path());
    let import = run(
        "import hostbus",
        &mut cmd,
        &dir.join("import.log"),
        PIP_LIMIT,
    );
    import.expect_success(String::new);
    assert!(
        import
            .output
            .trim()
            .starts_with(&fresh.display().to_string()),
        "hostbus is imported from {}, not from the fresh environment {}",
        import.output.trim(),
        fresh.display()
    );

    // The README's example against the cluster, as printed.
    let _turn = turn();
    let cluster = Cluster::start();
    let script = dir.join("readme_example.py");
    fs::write(&script, &example).expect("write the example");
    let mut cmd = python_command(&python);
    cmd.arg(&script)
        .current_dir(dir.path())
        .env("HOSTBUS_URL", cluster.node.amqp_url());
    let ran = run(
        "the README's Python example",
        &mut cmd,
        &dir.join("example.log"),
        EXAMPLE_LIMIT,
    );
    ran.expect_success(|| cluster.logs());
    assert!(
        ran.output.contains("web01"),
        "the README's example does not print h1's VM web01:\n{}",
        ran.output
    );
}

#[test]
fn pytest_summaries_are_read_and_an_empty_run_passes_none() {
    assert_eq!(pytest_passed("....\n4 passed in 0.52s\n"), Some(4));
    assert_eq!(
        pytest_passed("F.\n=== 1 failed, 12 passed, 2 skipped, 1 warning in 3.01s ===\n"),
        Some(12)
    );
    assert_eq!(pytest_passed("2 failed, 1 error in 1.00s"), Some(0));
    assert_eq!(pytest_passed("\nno tests ran in 0.01s\n"), None);
    assert_eq!(pytest_passed("collected 0 items\n"), None);
    assert_eq!(
        pytest_passed("3 passed in 1.0s\nlog: went in 2s\n"),
        Some(3),
        "a later line that is no summary is skipped"
    );
}
