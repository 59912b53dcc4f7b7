//! The docker-compose test cluster (`broker-compose/docker-compose.yml`,
//! and `broker-cluster.yml` on top of it) as a test drives it: through the
//! Docker CLI and Compose, v2 (`docker compose`) or v1 (`docker-compose`),
//! exactly as the README tells a user to. Each [`Compose`] brings its project
//! down with its volumes when dropped.
//!
//! Needs a Docker engine with the compose base images at hand:
//! `broker-compose/images` makes them (scripts/test runs it). Without an
//! engine, [`Compose::available`] says why; where the suite is required
//! (`HOSTBUS_TEST_DOCKER_REQUIRED` or `CI`), that is a failure.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent::workspace_dir;

/// Which Compose runs the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `docker compose` (the CLI plugin).
    V2,
    /// `docker-compose` 1.x, with BuildKit through the Docker CLI.
    V1,
}

/// The compose project the suite uses (`COMPOSE_PROJECT_NAME`; a user's
/// is the folder's name, `broker-compose`; Compose v1 refuses a `name:` in
/// the file).
pub const PROJECT: &str = "hostbus-test";

/// The broker's AMQP port on the host (docker-compose.yml's default).
pub const AMQP_PORT: u16 = 5682;

/// The host's URL of the compose broker's first node.
pub fn amqp_url(port: u16) -> String {
    format!("amqp://hostbus:hostbus@127.0.0.1:{port}/%2f")
}

/// One compose cluster: its files and the Compose that runs it.
pub struct Compose {
    flavour: Flavour,
    files: Vec<&'static str>,
    down_on_drop: bool,
}

/// The Docker client of the engine (the engine's own, when installed).
pub fn docker() -> Command {
    let bin = if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    Command::new(bin)
}

/// Runs `cmd` to its end within `timeout`, returning its output; panics with
/// what it printed when it does not end in time.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{what} did not end within {timeout:?}");
        }
    }
}

/// Standard output and error of `out`, for messages.
pub fn printed(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Compose {
    /// Whether this machine can run the compose suite: a Docker engine that
    /// answers (the images are built by `up --build`, from the base images
    /// `broker-compose/images` made). `Err` says what is missing.
    pub fn available() -> Result<(), String> {
        let info = docker()
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !info.is_ok_and(|s| s.success()) {
            return Err("no Docker engine answers (broker-compose/images starts one)".into());
        }
        Ok(())
    }

    /// Whether a missing Docker engine fails the suite instead of skipping it.
    pub fn required() -> bool {
        std::env::var_os("HOSTBUS_TEST_DOCKER_REQUIRED").is_some()
            || std::env::var_os("CI").is_some()
    }

    /// The one-broker cluster of docker-compose.yml.
    pub fn single(flavour: Flavour) -> Self {
        Self {
            flavour,
            files: vec!["docker-compose.yml"],
            down_on_drop: true,
        }
    }

    /// The broker-cluster profile: docker-compose.yml and broker-cluster.yml.
    pub fn broker_cluster() -> Self {
        Self {
            flavour: Flavour::V2,
            files: vec!["docker-compose.yml", "broker-cluster.yml"],
            down_on_drop: true,
        }
    }

    /// The folder the compose files are in.
    pub fn dir() -> PathBuf {
        workspace_dir().join("broker-compose")
    }

    /// `docker compose -f ... <args>` (or `docker-compose`), in the compose
    /// folder, so `.env` there applies as it does for a user.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.flavour {
            Flavour::V2 => {
                let mut c = docker();
                c.arg("compose");
                c
            }
            Flavour::V1 => {
                let mut c = Command::new("docker-compose");
                // v1 builds with BuildKit only through the Docker CLI.
                c.env("DOCKER_BUILDKIT", "1")
                    .env("COMPOSE_DOCKER_CLI_BUILD", "1");
                c
            }
        };
        for f in &self.files {
            cmd.args(["-f", f]);
        }
        cmd.env("COMPOSE_PROJECT_NAME", PROJECT);
        cmd.args(args).current_dir(Self::dir());
        cmd
    }

    /// Runs a compose command; panics with its output when it fails.
    pub fn run(&self, args: &[&str], timeout: Duration) -> String {
        let out = run_within(self.command(args), timeout);
        assert!(
            out.status.success(),
            "{:?} {args:?} failed: {}",
            self.flavour,
            printed(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a compose command and returns its whole output, failed or not.
    pub fn output(&self, args: &[&str], timeout: Duration) -> Output {
        run_within(self.command(args), timeout)
    }

    /// `up -d --build`, then (v2) `--wait` until every service is healthy,
    /// or (v1, which has no --wait) until every container's health check
    /// passes. Returns how long it took.
    pub fn up(&self) -> Duration {
        let t = Instant::now();
        match self.flavour {
            Flavour::V2 => {
                self.run(&["up", "-d", "--build", "--wait"], Duration::from_secs(900));
            }
            Flavour::V1 => {
                self.run(&["up", "-d", "--build"], Duration::from_secs(900));
                self.wait_healthy(Duration::from_secs(180));
            }
        }
        t.elapsed()
    }

    /// Waits until every running container of the project is healthy.
    pub fn wait_healthy(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let states: Vec<(String, String)> = self
                .containers()
                .into_iter()
                .map(|id| {
                    let h = inspect(
                        &id,
                        "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                    );
                    let mut it = h.split_whitespace();
                    (
                        it.next().unwrap_or_default().to_owned(),
                        it.next().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            if !states.is_empty() && states.iter().all(|(_, s)| s == "healthy") {
                return;
            }
            assert!(
                Instant::now() < end,
                "containers not healthy within {timeout:?}: {states:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// `down -v --remove-orphans`.
    pub fn down(&self) {
        self.run(
            &["down", "-v", "--remove-orphans", "--timeout", "20"],
            Duration::from_secs(180),
        );
    }

    /// The ids of the project's containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        ps(&[])
    }

    /// The id of the container of `service` (its first replica).
    pub fn container(&self, service: &str) -> String {
        ps(&[&format!("label=com.docker.compose.service={service}")])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no container for service {service}"))
    }

    /// The project's default network.
    pub fn network(&self) -> String {
        format!("{PROJECT}_default")
    }

    /// Everything of the project Docker still has: containers, volumes and
    /// networks labelled with its name, one line each.
    pub fn leftovers() -> Vec<String> {
        let label = format!("label=com.docker.compose.project={PROJECT}");
        let mut left = Vec::new();
        for (kind, args) in [
            (
                "container",
                vec!["ps", "-a", "--format", "{{.Names}}", "--filter"],
            ),
            ("volume", vec!["volume", "ls", "-q", "--filter"]),
            (
                "network",
                vec!["network", "ls", "--format", "{{.Name}}", "--filter"],
            ),
        ] {
            let mut c = docker();
            c.args(&args).arg(&label);
            let out = run_within(c, Duration::from_secs(30));
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if !l.trim().is_empty() {
                    left.push(format!("{kind} {}", l.trim()));
                }
            }
        }
        left
    }

    /// A Docker command on one service's container (`kill`, `start`,
    /// `stop`, `network disconnect ...`): panics when it fails.
    pub fn docker_on(&self, service: &str, args: &[&str]) {
        let id = self.container(service);
        let mut c = docker();
        c.args(args).arg(&id);
        let out = run_within(c, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "docker {args:?} {service}: {}",
            printed(&out)
        );
    }

    /// Cuts `service` off the project's network (its address goes away).
    pub fn disconnect(&self, service: &str) {
        let net = self.network();
        self.docker_on(service, &["network", "disconnect", &net]);
    }

    /// Puts `service` back on the project's network.
    pub fn connect(&self, service: &str) {
        let net = self.network();
        self.docker_on(service, &["network", "connect", &net]);
    }

    /// What `service` printed (`docker logs`), stdout and stderr.
    pub fn logs(&self, service: &str) -> String {
        let id = self.container(service);
        let mut c = docker();
        c.args(["logs", &id]);
        let out = run_within(c, Duration::from_secs(60));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs `args` in `service`'s running container (`docker exec`).
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        let id = self.container(service);
        let mut c = docker();
        c.arg("exec").arg(&id).args(args);
        run_within(c, Duration::from_secs(120))
    }

    /// Leaves the project running when this is dropped (for inspection).
    pub fn keep(mut self) {
        self.down_on_drop = false;
    }
}

/// The ids of the project's containers, running or not, that match every
/// `docker ps` filter in `filters` too.
fn ps(filters: &[&str]) -> Vec<String> {
    let mut c = docker();
    c.args(["ps", "-aq", "--filter"])
        .arg(format!("label=com.docker.compose.project={PROJECT}"));
    for f in filters {
        c.args(["--filter", f]);
    }
    let out = run_within(c, Duration::from_secs(30));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `docker inspect -f format id`, trimmed.
pub fn inspect(id: &str, format: &str) -> String {
    let mut c = docker();
    c.args(["inspect", "-f", format, id]);
    let out = run_within(c, Duration::from_secs(30));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.down_on_drop {
            // Never panics: a drop may run while a test unwinds.
            let _ = self
                .command(&["down", "-v", "--remove-orphans", "--timeout", "10"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
