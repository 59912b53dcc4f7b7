//! The agent binary, `hostbus-agent`, run as a real process.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::{blocking, free_port, signal_pid, tail_file, wait_child, Signal, TempDir};

/// Environment variable with the path of a prebuilt agent binary; when set,
/// the harness does not build one.
pub const AGENT_BIN_ENV: &str = "HOSTBUS_AGENT_BIN";

/// How long [`AgentProcess::restart`] and `Drop` wait for a graceful exit
/// before killing.
const GRACE: Duration = Duration::from_secs(10);

/// The guard beside each agent process: its standard input is a pipe from
/// the test process; when that closes because the test process died without
/// unwinding (SIGKILL, a timeout), the guard kills the agent, if the pid
/// still is an agent, and removes the agent's directory (`$1` pid, `$2`
/// binary name, `$3` directory). Otherwise the harness kills the guard
/// before it reads anything.
const GUARD: &str = r#"
read -r _ || true
grep -q -- "$2" "/proc/$1/cmdline" 2>/dev/null && kill -KILL "$1" 2>/dev/null
sleep 0.5
rm -rf -- "$3"
exit 0
"#;

/// The workspace root (the folder of the root `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The libvirt test-driver URI of a shipped node file:
/// `node_file_uri("h2")` is `test:///<workspace>/bridge/testdata/node-h2.xml`.
/// Files exist for `h1`, `h2` and `h3`; each connection to one has a private
/// state.
pub fn node_file_uri(name: &str) -> String {
    format!(
        "test://{}/bridge/testdata/node-{name}.xml",
        workspace_dir().display()
    )
}

/// The agent binary, built once per test process with
/// `$CARGO build -q -p hostbus-agent --bin hostbus-agent` into the target
/// directory of the running test (or taken from `HOSTBUS_AGENT_BIN`).
pub fn agent_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| blocking(build_agent))
        .clone()
        .map_err(|m| HarnessError::new(ErrorKind::Command, m))
}

fn build_agent() -> std::result::Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(AGENT_BIN_ENV) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{AGENT_BIN_ENV}={} is not a file", bin.display()))
        };
    }
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut profile_dir = exe
        .parent()
        .ok_or("the test binary has no folder")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => profile_dir
            .parent()
            .ok_or("the profile folder has no parent")?
            .to_path_buf(),
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-q",
        "-p",
        "hostbus-agent",
        "--bin",
        "hostbus-agent",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(workspace_dir())
    .stdin(Stdio::null());
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building hostbus-agent failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = target_dir.join(&profile).join("hostbus-agent");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cargo built hostbus-agent, but {} does not exist",
            bin.display()
        ))
    }
}

/// `cargo`, as the test or benchmark was started with (`$CARGO`), without
/// the `CARGO_*` variables cargo sets for the program it runs. Build
/// scripts (ring's, rustls's) rebuild when such a variable changes, so a
/// build started from inside `cargo test` or `cargo run` with them would
/// rebuild those crates, and the next outer cargo rebuild them back.
pub fn cargo() -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let keep = matches!(
            k.as_ref(),
            "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_TERM_COLOR" | "CARGO_BUILD_JOBS"
        );
        if (k.starts_with("CARGO_") && !keep) || k == "OUT_DIR" || k == "RUSTC_BOOTSTRAP" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Options of an agent process; made by [`AgentProcess::builder`].
///
/// Each option is passed as the agent's `HOSTBUS_*` environment variable,
/// so a test can override it with [`env`](Self::env), remove it with
/// [`env_remove`](Self::env_remove) (to let a config file show through), or
/// pass a flag with [`arg`](Self::arg), which wins over both.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    host_id: String,
    broker_urls: Vec<String>,
    labels: Vec<String>,
    libvirt_uri: String,
    concurrency: Option<usize>,
    heartbeat_interval: Option<Duration>,
    metrics: bool,
    journal_path: Option<PathBuf>,
    env: Vec<(String, Option<String>)>,
    args: Vec<OsString>,
    binary: Option<PathBuf>,
}

impl AgentBuilder {
    /// The host id of the agent.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The first broker URL the agent tries.
    pub fn first_broker_url(&self) -> &str {
        &self.broker_urls[0]
    }

    /// Adds another broker URL (the agent fails over between them).
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_urls.push(url.into());
        self
    }

    /// Adds a label (the agent then consumes `group.<label>`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.labels.push(label.into());
        self
    }

    /// Adds labels.
    pub fn labels<I: IntoIterator<Item = S>, S: Into<String>>(self, labels: I) -> Self {
        labels.into_iter().fold(self, Self::label)
    }

    /// The libvirt URI (default: [`node_file_uri`]`("h1")`).
    pub fn libvirt_uri(mut self, uri: impl Into<String>) -> Self {
        self.libvirt_uri = uri.into();
        self
    }

    /// How many commands run at once (default: the agent's).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// The heartbeat interval (default: the agent's own, 5 s, as in
    /// production; shorten it only where a test is about heartbeats).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Whether the agent serves metrics, on a free port of 127.0.0.1
    /// (default: yes; see [`AgentProcess::metrics_addr`]).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// The journal path (default: `journal` in the agent's temporary
    /// directory).
    pub fn journal_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal_path = Some(path.into());
        self
    }

    /// Sets an environment variable of the agent (after the builder's own,
    /// so it overrides them).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable, including one the builder sets.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(self, args: I) -> Self {
        args.into_iter().fold(self, Self::arg)
    }

    /// Runs this agent binary instead of the harness's (another build, to
    /// compare with).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Builds the agent if needed, makes the agent's temporary directory and
    /// starts the process. Does not wait for the agent to be ready: wait for
    /// its online event or heartbeat, or use [`AgentProcess::wait_for_log`].
    /// Panics when the agent cannot be started.
    pub fn start(self) -> AgentProcess {
        let host = self.host_id.clone();
        self.spawn()
            .unwrap_or_else(|e| panic!("cannot start agent {host}: {e}"))
    }

    /// Starts the agent (see [`start`](Self::start), which panics instead).
    pub fn spawn(self) -> Result<AgentProcess> {
        let bin = match &self.binary {
            Some(b) => b.clone(),
            None => agent_binary()?,
        };
        let dir = TempDir::new(&format!("hostbus-agent-{}", self.host_id))?;
        let journal_path = self
            .journal_path
            .clone()
            .unwrap_or_else(|| dir.join("journal"));
        let metrics_addr = if self.metrics {
            Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        } else {
            None
        };
        let mut agent = AgentProcess {
            log_path: dir.join("agent.log"),
            options: self,
            bin,
            journal_path,
            metrics_addr,
            spawns: 0,
            child: None,
            guard: None,
            dir,
        };
        agent.spawn_child()?;
        Ok(agent)
    }
}

/// A running (or exited) `hostbus-agent` process. Its standard output and
/// error go to a log file in its temporary directory
/// ([`log_tail`](Self::log_tail)), not to the test's output.
///
/// Dropping it kills the process and removes the directory (journal and
/// log included, unless the journal path was set elsewhere).
#[derive(Debug)]
pub struct AgentProcess {
    options: AgentBuilder,
    bin: PathBuf,
    journal_path: PathBuf,
    metrics_addr: Option<SocketAddr>,
    log_path: PathBuf,
    spawns: u32,
    child: Option<Child>,
    guard: Option<Child>,
    // Last: removed after the process is dead.
    dir: TempDir,
}

impl AgentProcess {
    /// Options for an agent with host id `host_id` and one broker URL.
    pub fn builder(host_id: &str, amqp_url: &str) -> AgentBuilder {
        AgentBuilder {
            host_id: host_id.to_owned(),
            broker_urls: vec![amqp_url.to_owned()],
            labels: Vec::new(),
            libvirt_uri: node_file_uri("h1"),
            concurrency: None,
            heartbeat_interval: None,
            metrics: true,
            journal_path: None,
            env: Vec::new(),
            args: Vec::new(),
            binary: None,
        }
    }

    /// Starts an agent with default options.
    pub fn spawn(host_id: &str, amqp_url: &str) -> Result<Self> {
        Self::builder(host_id, amqp_url).spawn()
    }

    fn spawn_child(&mut self) -> Result<()> {
        self.spawns += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io("cannot open the agent's log", e))?;
        let _ = writeln!(
            log,
            "=== hostbus-tests: start #{} of hostbus-agent {} ===",
            self.spawns, self.options.host_id
        );
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("cannot open the agent's log", e))?;

        let o = &self.options;
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOSTBUS_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOSTBUS_HOST_ID", &o.host_id)
            .env("HOSTBUS_BROKER_URLS", o.broker_urls.join(","))
            .env("HOSTBUS_LIBVIRT_URI", &o.libvirt_uri)
            .env("HOSTBUS_JOURNAL_PATH", &self.journal_path)
            .env(
                "HOSTBUS_METRICS_ADDR",
                self.metrics_addr
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            );
        if let Some(interval) = o.heartbeat_interval {
            cmd.env(
                "HOSTBUS_HEARTBEAT_INTERVAL_MS",
                interval.as_millis().to_string(),
            );
        }
        if !o.labels.is_empty() {
            cmd.env("HOSTBUS_LABELS", o.labels.join(","));
        }
        if let Some(n) = o.concurrency {
            cmd.env("HOSTBUS_CONCURRENCY", n.to_string());
        }
        for (key, value) in &o.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.args(&o.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("cannot start {}", self.bin.display()), e))?;
        self.guard = spawn_guard(child.id(), &self.bin, self.dir.path());
        self.child = Some(child);
        Ok(())
    }

    /// The host id.
    pub fn host_id(&self) -> &str {
        &self.options.host_id
    }

    /// The process id of the current (or last) process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The journal path (kept across [`restart`](Self::restart)).
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// The agent's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The metrics address the agent was told to serve on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The agent's metrics page (OpenMetrics text, headers included). Panics
    /// when the agent serves no metrics or does not answer: a test asking
    /// for them cannot go on without.
    pub fn metrics_text(&self) -> String {
        use std::io::Read;
        let addr = self.metrics_addr.expect("metrics enabled");
        let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    }

    /// Sends `signal` to the process. An error if it has exited.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        let pid = self.running_pid(signal)?;
        signal_pid(pid, signal)
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Signal::Term)
    }

    /// Sends SIGINT.
    pub fn interrupt(&mut self) -> Result<()> {
        self.signal(Signal::Int)
    }

    /// Kills the process (SIGKILL) and reaps it. Does nothing if it has
    /// exited.
    pub fn kill(&mut self) -> Result<()> {
        blocking(|| {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    child
                        .kill()
                        .map_err(|e| HarnessError::io("cannot kill the agent", e))?;
                }
                let _ = wait_child(child, GRACE);
            }
            Ok(())
        })
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`
    /// if it still runs. Once it has exited, returns the same status again.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        blocking(|| wait_child(child, timeout))
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Starts the agent again with the same options, journal and metrics
    /// address. A process that still runs gets SIGTERM first, and SIGKILL
    /// if it has not exited 10 s later; to restart after a crash, call
    /// [`kill`](Self::kill) first.
    pub fn restart(&mut self) -> Result<()> {
        blocking(|| self.stop_gracefully())?;
        stop_guard(&mut self.guard);
        self.spawn_child()
    }

    fn stop_gracefully(&mut self) -> Result<()> {
        if self.is_running() {
            let _ = self.terminate();
            if self.wait_exit(GRACE).is_none() {
                self.kill()?;
            }
        }
        Ok(())
    }

    /// The whole log (every start of the process).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Asserts that the log contains `needle` (showing its last 20 lines
    /// when not).
    pub fn assert_logged(&self, needle: &str) {
        assert!(self.log().contains(needle), "{}", self.log_tail(20));
    }

    /// The last `lines` lines of the log, headed by the log's path.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} (last {lines} lines) ---\n{}",
            self.log_path.display(),
            tail_file(&self.log_path, lines)
        )
    }

    /// What the agent logged since its start number `n` (1 the first;
    /// [`restart`](Self::restart) makes the next), empty before it.
    pub fn log_since_start(&self, n: u32) -> String {
        let log = self.log();
        let marker = format!("=== hostbus-tests: start #{n} ");
        log.find(&marker)
            .map_or_else(String::new, |i| log[i..].to_owned())
    }

    /// Waits up to `timeout` until the log of the current start contains
    /// `needle`. An error, with the log's tail, on timeout or when the
    /// process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let marker = format!("=== hostbus-tests: start #{} ", self.spawns);
        blocking(|| {
            let deadline = Instant::now() + timeout;
            loop {
                let log = self.log();
                let current = log.rfind(&marker).map_or(log.as_str(), |i| &log[i..]);
                if current.contains(needle) {
                    return Ok(());
                }
                if !self.is_running() {
                    return Err(HarnessError::new(
                        ErrorKind::Startup,
                        format!(
                            "agent {} exited before logging {needle:?}\n{}",
                            self.options.host_id,
                            self.log_tail(40)
                        ),
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(HarnessError::new(
                        ErrorKind::Timeout,
                        format!(
                            "agent {} did not log {needle:?} within {timeout:?}\n{}",
                            self.options.host_id,
                            self.log_tail(40)
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }

    fn running_pid(&mut self, signal: Signal) -> Result<u32> {
        if !self.is_running() {
            return Err(HarnessError::new(
                ErrorKind::Io,
                format!(
                    "cannot send {signal} to agent {}: it is not running",
                    self.options.host_id
                ),
            ));
        }
        self.pid()
            .ok_or_else(|| HarnessError::new(ErrorKind::Io, "the agent was never started"))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            blocking(|| {
                let _ = child.kill();
                let _ = wait_child(child, GRACE);
            });
        }
        stop_guard(&mut self.guard);
    }
}

/// Starts the guard of agent `pid` (best effort: without a guard, only a
/// test process that dies without unwinding leaks the agent).
fn spawn_guard(pid: u32, bin: &Path, dir: &Path) -> Option<Child> {
    let name = bin.file_name()?.to_string_lossy().into_owned();
    Command::new("sh")
        .arg("-c")
        .arg(GUARD)
        .arg("hostbus-agent-guard")
        .arg(pid.to_string())
        .arg(name)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

fn stop_guard(guard: &mut Option<Child>) {
    if let Some(mut g) = guard.take() {
        let _ = g.kill();
        let _ = g.wait();
    }
}

/// The value of metric line `name` (labels included, in the order the
/// agent prints them) in a metrics page, 0 when absent. Panics on a value
/// that is not a number: a page the helper misreads must not pass for 0.
pub fn metric(text: &str, name: &str) -> u64 {
    let Some(v) = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
    else {
        return 0;
    };
    let n: f64 = v
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{name}` has no numeric value: {v:?}"));
    n as u64
}

/// `hostbus_commands_total` of one command and outcome in a metrics page.
pub fn commands_total(text: &str, command: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("hostbus_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}}"),
    )
}
