//! The processes of a private node: how it is started, watched, stopped
//! and cleaned up.
//!
//! How a node runs (found out on Debian 12, RabbitMQ 3.10, Erlang 25):
//!
//! * `/usr/sbin/rabbitmq-server` is Debian's wrapper that switches to the
//!   `rabbitmq` user and `/var/lib/rabbitmq` when run as root; the harness
//!   runs the real script, `/usr/lib/rabbitmq/bin/rabbitmq-server`, as the
//!   current user instead (`HOSTBUS_RABBITMQ_BIN_DIR` overrides the folder;
//!   without that folder, `rabbitmq-server` and `rabbitmqctl` come from
//!   `PATH`).
//! * Every path the node writes goes to its own temporary directory:
//!   `RABBITMQ_MNESIA_BASE`, `RABBITMQ_LOG_BASE`, `RABBITMQ_PID_FILE`,
//!   `RABBITMQ_ENABLED_PLUGINS_FILE` (an empty list: no management plugin, no
//!   port 15672), `RABBITMQ_CONFIG_FILE`, and `HOME`, so the Erlang cookie is
//!   the node's own and `rabbitmqctl` run with the same `HOME` finds it.
//!   `RABBITMQ_CONF_ENV_FILE` points at a file that does not exist, so
//!   `/etc/rabbitmq/rabbitmq-env.conf` is not read.
//! * Ports: `RABBITMQ_NODE_PORT` (AMQP, on 127.0.0.1 only through
//!   `RABBITMQ_NODE_IP_ADDRESS`) and `RABBITMQ_DIST_PORT` (Erlang
//!   distribution, on 127.0.0.1 through `-kernel inet_dist_use_interface`),
//!   both picked free by [`free_port`](crate::free_port). `rabbitmqctl` listens on a
//!   fixed range (35672..35682) unless `RABBITMQ_CTL_DIST_PORT_MIN/MAX` say
//!   otherwise; the harness sets both to 0 (any free port). epmd (4369) is
//!   shared with any other Erlang node: the node starts it if needed, it
//!   outlives the node, and that is harmless. None of this touches a system
//!   RabbitMQ on 5672.
//! * The node name, `hostbus-test-<pid>-<n>@localhost` (short names), does
//!   not appear on the Erlang VM's command line (RabbitMQ passes it through
//!   the environment), so the harness adds `-hostbus_test_node <name>` to the
//!   VM's arguments: `pgrep -f <name>` then finds the node's processes.
//! * The node runs under a small `sh` watchdog, in its own process group,
//!   whose standard input is a pipe from the test process: when the test
//!   process dies without unwinding (SIGKILL, Ctrl-C), the pipe closes, the
//!   watchdog kills the node and removes its directory. No node outlives its
//!   test.
//! * The Erlang schedulers do not spin when idle (`+sbwt none`, RabbitMQ's
//!   advice for shared machines): test nodes share two cores with agents and
//!   other suites.
//! * A node is ready in about 5 to 10 s on two cores; a stop takes about 2 s.
//!
//! RabbitMQ 4.0 (Debian 13, Erlang 27) runs the same way through the
//! wrappers of `scripts/rabbitmq4-root` (a Debian 13 root entered with
//! `unshare --mount` and `--root`, in the caller's process group); the
//! harness asks `rabbitmqctl version` which release it starts and gives 4.x
//! nodes the settings that deny its deprecated features (`version.rs`).

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::url::percent_encode;
use super::version::{
    deprecated_features_used, unknown_deprecated_features, version_of, RabbitVersion,
};
use super::{TlsListener, RABBITMQ_BIN_DIR_ENV, START_TIMEOUT};
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::{
    block_on_fresh, free_port, group_alive, signal_group, tail_file, unique_name, wait_child,
    Signal, TempDir,
};

/// What RabbitMQ 4.0.5 says when it refuses to boot because its check that
/// a denied deprecated feature is unused failed (see
/// [`PrivateNode::spawn_and_wait`]).
pub(super) const DENIAL_RACE: &str = "failed_to_deny_deprecated_features";

/// How long a clean stop may take before the node is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's configuration file, on every version (a version adds its own
/// lines, [`RabbitVersion::config`]). `loopback_users = none` lets every
/// user, `guest` included, log in from any address; the disk limit is low
/// so a nearly full disk on a CI machine does not block publishers.
const CONFIG: &str = "\
loopback_users = none
disk_free_limit.absolute = 10MB
log.file.level = info
log.console = false
";

/// The watchdog. `$0` names the node (so `pgrep -f <node>` finds it too),
/// `$1...` is the server command. Standard input is a pipe from the test
/// process; its end means the test process died without unwinding. Then a
/// cleanup process in a new session kills the watchdog's whole process group
/// at once (a TERM to a booting node can be lost) and removes the node's
/// directory. `$$` is the watchdog's pid, the group's id.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" 3<&- &
node=$!
(
    read -r _ <&3 || true
    if command -v setsid >/dev/null 2>&1; then
        exec setsid sh -c 'kill -KILL "-$2"; sleep 1; rm -rf -- "$1"' \
            hostbus-rabbit-cleanup "$HOSTBUS_NODE_DIR" "$$" </dev/null >/dev/null 2>&1
    fi
    rm -rf -- "$HOSTBUS_NODE_DIR"
    kill -KILL 0
) &
reader=$!
exec 3<&- 0</dev/null
wait "$node"
status=$?
kill "$reader" 2>/dev/null
exit $status
"#;

#[derive(Debug)]
pub(super) struct PrivateNode {
    pub(super) name: String,
    pub(super) port: u16,
    dist_port: u16,
    /// A TLS listener and its port, when asked for.
    pub(super) tls: Option<(TlsListener, u16)>,
    bin_dir: Option<PathBuf>,
    pub(super) version: RabbitVersion,
    /// How many of the deprecated features the log names a test has
    /// already taken (see [`RabbitNode::take_deprecated_feature_uses`]).
    pub(super) deprecated_uses_taken: usize,
    pub(super) child: Option<Child>,
    // Last: removed after the node is dead.
    pub(super) dir: TempDir,
}

impl PrivateNode {
    pub(super) fn start_with(tls: Option<TlsListener>, cookie: Option<&str>) -> Result<Self> {
        let dir = TempDir::new("hostbus-rabbit")?;
        let name = format!("{}@localhost", unique_name("hostbus-test"));
        for sub in ["home", "mnesia", "log"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| HarnessError::io(format!("cannot create {sub} directory"), e))?;
        }
        if let Some(cookie) = cookie {
            // Nodes of one cluster share the Erlang cookie; it must be
            // readable by its owner only.
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("home").join(".erlang.cookie");
            write_file(&path, cookie)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o400))
                .map_err(|e| HarnessError::io("cannot protect the Erlang cookie", e))?;
        }
        write_file(&dir.join("enabled_plugins"), "[].\n")?;
        let bin_dir = std::env::var_os(RABBITMQ_BIN_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
                debian.join("rabbitmq-server").exists().then_some(debian)
            });
        let version = version_of(bin_dir.as_deref())?;
        let tls = match tls {
            Some(t) => Some((t, free_port()?)),
            None => None,
        };
        let mut node = Self {
            name,
            port: free_port()?,
            dist_port: free_port()?,
            tls,
            bin_dir,
            version,
            deprecated_uses_taken: 0,
            child: None,
            dir,
        };
        // A port found free can be taken by another process before the node
        // binds it; the node then exits at once. Try other ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match node.spawn_and_wait() {
                Err(e) if e.kind() == ErrorKind::Startup && attempts < 3 => {
                    node.port = free_port()?;
                    node.dist_port = free_port()?;
                    if let Some((_, port)) = node.tls.as_mut() {
                        *port = free_port()?;
                    }
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        if let Err(e) = node.check_deprecated_features() {
            node.kill();
            return Err(e);
        }
        Ok(node)
    }

    /// On a release with deprecated features, checks (once per folder of
    /// programs and test process) that the node lists none the harness does
    /// not deny: a newer RabbitMQ's new deprecation must be added to
    /// [`DEPRECATED_FEATURES`](super::version::DEPRECATED_FEATURES), not
    /// permitted unseen.
    fn check_deprecated_features(&self) -> Result<()> {
        static CHECKED: Mutex<Vec<Option<PathBuf>>> = Mutex::new(Vec::new());
        if !self.version.has_deprecated_features()
            || CHECKED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&self.bin_dir)
        {
            return Ok(());
        }
        let listed = self.ctl(&["-q", "list_deprecated_features", "name"])?;
        let unknown = unknown_deprecated_features(&listed);
        if !unknown.is_empty() {
            return Err(HarnessError::new(
                ErrorKind::Startup,
                format!(
                    "RabbitMQ {} lists deprecated features the harness does not deny: {}; \
                     add them to DEPRECATED_FEATURES in tests/src/rabbit/version.rs",
                    self.version,
                    unknown.join(", ")
                ),
            ));
        }
        CHECKED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.bin_dir.clone());
        Ok(())
    }

    pub(super) fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `program` (from the RabbitMQ folder) with the node's environment.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.program(program));
        self.set_env(&mut cmd);
        cmd
    }

    /// Gives `cmd` the node's environment (and removes every inherited
    /// variable that starts with `RABBITMQ_`).
    fn set_env(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                cmd.env_remove(key);
            }
        }
        let d = self.dir.path();
        cmd.current_dir(d)
            .env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_USE_LONGNAME", "false")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MIN", "0")
            .env("RABBITMQ_CTL_DIST_PORT_MAX", "0")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("no-rabbitmq-env.conf"))
            .stdin(Stdio::null());
    }

    /// Starts the node and waits until it is ready.
    ///
    /// A RabbitMQ 4.0.5 node that denies `transient_nonexcl_queues` checks at
    /// boot that no transient non-exclusive queue exists; on a node with
    /// data (restarted, or just joined to a cluster) that check can run
    /// before Mnesia has loaded its `rabbit_queue` table, fail (`{aborted,
    /// {no_exists, [rabbit_queue, ...]}}`, logged as "Feature flags: error
    /// while running: rabbit_amqqueue:are_transient_nonexcl_used"), and
    /// 4.0.5 counts a failed check as a use: the boot ends with
    /// [`DENIAL_RACE`]. A race in the broker (seen on restarts and, on a
    /// loaded machine, in 4 of 6 cluster joins), not a use by hostbus (that
    /// would be refused, logged, and fail the test): such a boot is tried
    /// again, twice at most, and says so on stderr.
    pub(super) fn spawn_and_wait(&mut self) -> Result<()> {
        let mut refused = 0;
        loop {
            let log_before = fs::metadata(self.log_file()).map_or(0, |m| m.len());
            match self.spawn_once() {
                Err(e)
                    if e.kind() == ErrorKind::Startup
                        && refused < 2
                        && self.log_since(log_before).contains(DENIAL_RACE) =>
                {
                    refused += 1;
                    eprintln!(
                        "hostbus-tests: RabbitMQ {} node {} failed to boot with \
                         {DENIAL_RACE} (a RabbitMQ 4.0 boot race); starting it again",
                        self.version, self.name
                    );
                }
                result => return result,
            }
        }
    }

    /// The node's log from byte `offset` on.
    fn log_since(&self, offset: u64) -> String {
        let log = fs::read(self.log_file()).unwrap_or_default();
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[from..]).into_owned()
    }

    fn spawn_once(&mut self) -> Result<()> {
        let mut config = CONFIG.to_owned();
        config.push_str(&self.version.config());
        if let Some((tls, port)) = &self.tls {
            config.push_str(&tls.config(*port));
        }
        write_file(&self.dir.join("rabbitmq.conf"), &config)?;
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .map_err(|e| HarnessError::io("cannot open the node's console log", e))?;
        let console2 = console
            .try_clone()
            .map_err(|e| HarnessError::io("cannot open the node's console log", e))?;
        let server = self.program("rabbitmq-server");
        let mut cmd = Command::new("sh");
        self.set_env(&mut cmd);
        cmd.env("HOSTBUS_NODE_DIR", self.dir.path())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                // Schedulers that sleep when idle instead of spinning: test
                // nodes share two cores with agents and other suites, and a
                // spinning VM would show (and take) CPU it does not use.
                format!(
                    "-hostbus_test_node {} -kernel inet_dist_use_interface {{127,0,0,1}} +sbwt none +sbwtdcpu none +sbwtdio none",
                    self.name
                ),
            )
            .arg("-c")
            .arg(WATCHDOG)
            .arg(format!("hostbus-rabbit-watchdog:{}", self.name))
            .arg(&server)
            .stdin(Stdio::piped())
            .stdout(console)
            .stderr(console2)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            HarnessError::io(format!("cannot run {} under sh", server.display()), e)
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
        let url = self.url_for("guest", "guest");
        let mut last_error = String::from("the AMQP port never accepted a connection");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::new(
                        ErrorKind::Startup,
                        format!(
                            "RabbitMQ node {} exited ({status}) before it was ready\n{}",
                            self.name,
                            self.log_tail(40)
                        ),
                    ));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(HarnessError::new(
                    ErrorKind::Timeout,
                    format!(
                        "RabbitMQ node {} was not ready after {:?} ({last_error})\n{}",
                        self.name,
                        START_TIMEOUT,
                        self.log_tail(40)
                    ),
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                match probe(&url) {
                    Ok(()) => match self.tls.as_ref().map(|(_, p)| *p) {
                        None => return Ok(()),
                        Some(port) => {
                            let tls_addr =
                                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                            if TcpStream::connect_timeout(&tls_addr, Duration::from_millis(500))
                                .is_ok()
                            {
                                return Ok(());
                            }
                            last_error = format!("the TLS port {port} does not accept connections");
                        }
                    },
                    Err(e) => last_error = e,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// `rabbitmqctl -n <node>`, with the node's environment.
    pub(super) fn ctl_command(&self) -> Command {
        let mut cmd = self.command("rabbitmqctl");
        cmd.arg("-n").arg(&self.name);
        cmd
    }

    pub(super) fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ctl_command()
            .args(args)
            .output()
            .map_err(|e| HarnessError::io("cannot run rabbitmqctl", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HarnessError::new(
                ErrorKind::Command,
                format!(
                    "`rabbitmqctl -n {} {}` failed ({}):\n{}{}",
                    self.name,
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ))
        }
    }

    pub(super) fn stop(&mut self) -> Result<()> {
        if !self.is_running() {
            self.child = None;
            return Ok(());
        }
        let ctl = self.ctl(&["stop"]);
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pgid = child.id();
        if ctl.is_err() {
            let _ = signal_group(pgid, Signal::Term);
        }
        let exited = wait_child(child, STOP_TIMEOUT);
        if exited.is_none() {
            let _ = signal_group(pgid, Signal::Kill);
            let _ = wait_child(child, Duration::from_secs(5));
        }
        self.child = None;
        wait_group_gone(pgid, Duration::from_secs(5));
        match (ctl, exited) {
            (_, Some(_)) => Ok(()),
            (Err(e), None) => Err(e),
            (Ok(_), None) => Err(HarnessError::new(
                ErrorKind::Timeout,
                format!(
                    "RabbitMQ node {} did not exit within {STOP_TIMEOUT:?} of `rabbitmqctl stop`; killed\n{}",
                    self.name,
                    self.log_tail(20)
                ),
            )),
        }
    }

    /// Kills the whole process group at once and reaps the watchdog: for
    /// Drop and failed starts, when the data is thrown away anyway.
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id();
            let _ = signal_group(pgid, Signal::Kill);
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
            wait_group_gone(pgid, Duration::from_secs(5));
        }
    }

    /// The deprecated features the node's log says were asked for.
    pub(super) fn deprecated_feature_uses(&self) -> Vec<String> {
        let log = fs::read(self.log_file()).unwrap_or_default();
        deprecated_features_used(&String::from_utf8_lossy(&log))
    }

    /// The node's own log file.
    pub(super) fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.name))
    }

    pub(super) fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} (last {lines} lines) ---\n{}\n--- console ---\n{}",
            self.log_file().display(),
            tail_file(&self.log_file(), lines),
            tail_file(&self.dir.join("console.log"), lines)
        )
    }
}

/// Waits until no process of the group is left (the Erlang VM may take a
/// moment to die after its parent shell).
fn wait_group_gone(pgid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if group_alive(pgid) {
        let _ = signal_group(pgid, Signal::Kill);
    }
}

/// One AMQP connection attempt with `url`, closed at once.
fn probe(url: &str) -> std::result::Result<(), String> {
    let url = url.to_owned();
    let attempt = async move {
        let connect = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "probe".into()).await;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("AMQP connection failed: {e}")),
            Err(_) => Err("AMQP connection timed out".to_owned()),
        }
    };
    block_on_fresh(attempt).map_err(|e| e.to_string())?
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| HarnessError::io(format!("cannot write {}", path.display()), e))
}
