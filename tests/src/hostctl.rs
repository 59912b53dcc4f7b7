//! `hostctl` as a test runs it: a fresh process every time, as an operator
//! or a script would; and hostctl's verbs, so that a suite can say which
//! it did not run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::agent::workspace_dir;
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::{blocking, run_logged};

/// The `hostctl` binary, built once per test process next to the agent.
pub fn hostctl_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        blocking(|| {
            let agent = crate::agent::agent_binary().map_err(|e| e.to_string())?;
            let mut cmd = crate::agent::cargo();
            cmd.args(["build", "-q", "-p", "hostctl", "--bin", "hostctl"])
                .current_dir(workspace_dir());
            // The same target folder and profile as the agent the harness built.
            if let Some(profile_dir) = agent.parent() {
                if let (Some(target), Some(profile)) = (
                    profile_dir.parent(),
                    profile_dir.file_name().and_then(|n| n.to_str()),
                ) {
                    cmd.arg("--target-dir").arg(target);
                    if profile != "debug" {
                        cmd.args(["--profile", profile]);
                    }
                }
            }
            let status = cmd
                .status()
                .map_err(|e| format!("cannot run cargo build for hostctl: {e}"))?;
            if !status.success() {
                return Err("building hostctl failed".to_owned());
            }
            Ok(agent.with_file_name("hostctl"))
        })
    })
    .clone()
    .map_err(|m| HarnessError::new(ErrorKind::Command, m))
}

/// What one `hostctl` run did.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran, start to exit.
    pub elapsed: Duration,
}

/// Runs `hostctl` as a fresh process: against one broker URL (or none, or
/// a local agent's socket), with no user config file. One runner for every
/// suite; the builder methods say where a suite needs something else.
/// Clones share what [`recording`](Self::recording) notes.
#[derive(Debug, Clone)]
pub struct Hostctl {
    bin: Option<PathBuf>,
    url: Option<String>,
    /// Arguments before the command's own (`--socket PATH`).
    global: Vec<String>,
    config: String,
    removed: Vec<String>,
    logged: Option<(PathBuf, Duration)>,
    /// The arguments of every run, when recording.
    ran: Option<Arc<Mutex<Vec<Vec<String>>>>>,
}

impl Hostctl {
    /// `hostctl` with `HOSTBUS_URL=url` and `HOSTCTL_CONFIG=/dev/null` (an
    /// empty configuration; a named file must exist) and no
    /// `HOSTBUS_SOCKET`, which would win over the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            bin: None,
            url: Some(url.into()),
            global: Vec::new(),
            config: "/dev/null".to_owned(),
            removed: vec!["HOSTBUS_SOCKET".to_owned()],
            logged: None,
            ran: None,
        }
    }

    /// `hostctl` with no broker in its environment: `HOSTBUS_URL` and the
    /// TLS variables (`HOSTBUS_CA_FILE`, `HOSTBUS_CERT_FILE`,
    /// `HOSTBUS_KEY_FILE`) removed, so only its arguments count.
    pub fn without_url() -> Self {
        Self {
            url: None,
            ..Self::new("")
        }
        .env_remove("HOSTBUS_URL")
        .env_remove("HOSTBUS_CA_FILE")
        .env_remove("HOSTBUS_CERT_FILE")
        .env_remove("HOSTBUS_KEY_FILE")
    }

    /// `hostctl --socket path ...`: one host through its agent's socket,
    /// with no broker in the environment (as [`without_url`](Self::without_url)).
    pub fn socket(path: &Path) -> Self {
        Self {
            global: vec!["--socket".to_owned(), path.display().to_string()],
            ..Self::without_url()
        }
    }

    /// Runs the binary at `path` instead of the one the harness builds.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// The binary this runner runs.
    pub fn binary_path(&self) -> PathBuf {
        self.bin
            .clone()
            .unwrap_or_else(|| hostctl_binary().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Sets `HOSTCTL_CONFIG` to `path`.
    pub fn config(mut self, path: impl Into<String>) -> Self {
        self.config = path.into();
        self
    }

    /// Removes `key` from hostctl's environment.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.removed.push(key.into());
        self
    }

    /// Writes stdout and stderr to files in `dir` instead of pipes (see
    /// [`run_logged`](crate::run_logged)) and kills hostctl after `timeout`.
    pub fn logged(mut self, dir: impl Into<PathBuf>, timeout: Duration) -> Self {
        self.logged = Some((dir.into(), timeout));
        self
    }

    /// Notes the arguments of every run from now on (this runner's and its
    /// clones'), for [`verbs_not_run`](Self::verbs_not_run).
    pub fn recording(mut self) -> Self {
        self.ran = Some(Arc::default());
        self
    }

    /// The hostctl verbs (see [`hostctl_verbs`]) no recorded run used.
    pub fn verbs_not_run(&self) -> Vec<String> {
        let ran = self
            .ran
            .as_ref()
            .expect("a recording runner")
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let verbs = hostctl_verbs();
        let used: BTreeSet<&str> = ran.iter().filter_map(|a| verb_of(verbs, a)).collect();
        verbs
            .iter()
            .filter(|v| !used.contains(v.as_str()))
            .cloned()
            .collect()
    }

    /// Fails unless the recorded runs used every hostctl verb; `how` says
    /// how this suite runs them (`through --socket`).
    pub fn assert_every_verb_run(&self, how: &str) {
        let not_run = self.verbs_not_run();
        assert!(
            not_run.is_empty(),
            "hostctl subcommands this suite does not run {how}: {not_run:?}"
        );
    }

    /// The command for `hostctl args...`, noted when recording.
    fn command(&self, args: &[&str]) -> Command {
        if let Some(ran) = &self.ran {
            ran.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(args.iter().map(|a| (*a).to_owned()).collect());
        }
        let mut cmd = Command::new(self.binary_path());
        cmd.args(&self.global)
            .args(args)
            .env("HOSTCTL_CONFIG", &self.config);
        if let Some(url) = &self.url {
            cmd.env("HOSTBUS_URL", url);
        }
        for key in &self.removed {
            cmd.env_remove(key);
        }
        cmd
    }

    /// Starts `hostctl args...` in the background, its output piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start hostctl: {e}"))
    }

    /// Runs `hostctl args...` and waits for it to exit.
    pub fn run(&self, args: &[&str]) -> CtlOutput {
        let mut cmd = self.command(args);
        let started = Instant::now();
        let (code, stdout, stderr) = match &self.logged {
            Some((dir, timeout)) => {
                let (status, out, err) = blocking(|| run_logged(cmd, dir, "hostctl", *timeout));
                (status.code().unwrap_or(-1), out, err)
            }
            None => {
                let out =
                    blocking(|| cmd.output()).unwrap_or_else(|e| panic!("cannot run hostctl: {e}"));
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        };
        CtlOutput {
            code,
            stdout,
            stderr,
            elapsed: started.elapsed(),
        }
    }

    /// Runs `hostctl args...`; its exit code.
    pub fn code(&self, args: &[&str]) -> i32 {
        self.run(args).code
    }

    /// Runs with `-o json`, expects exit `code`, returns the parsed output.
    pub fn json_with_code(&self, code: i32, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.code, code,
            "hostctl {args:?} exited {}: {}{}",
            out.code, out.stderr, out.stdout
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("hostctl {args:?}: not JSON ({e}): {}", out.stdout))
    }

    /// How many rows `-o json args...` lists (`None`: not a list).
    pub fn json_len(&self, args: &[&str]) -> Option<usize> {
        self.json(args).as_array().map(Vec::len)
    }

    /// Runs with `-o json`, expects success, returns the parsed output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.json_with_code(0, args)
    }
}

/// hostctl's verbs (`hosts`, `vm start`, `admin setup`, ...): every path of
/// subcommands from the root of its command tree to a leaf, read once from
/// its `--help` (the `Commands:` section of each level).
pub fn hostctl_verbs() -> &'static BTreeSet<String> {
    fn walk(ctl: &Hostctl, path: &mut Vec<String>, out: &mut BTreeSet<String>) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = ctl.run(&args);
        assert_eq!(help.code, 0, "hostctl {args:?}: {}", help.stderr);
        let subs: Vec<String> = help
            .stdout
            .lines()
            .skip_while(|l| l.trim_end() != "Commands:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            // `  name   what it does`; deeper lines continue a description.
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| *w != "help")
            .map(str::to_owned)
            .collect();
        if subs.is_empty() {
            out.insert(path.join(" "));
        }
        for s in subs {
            path.push(s);
            walk(ctl, path, out);
            path.pop();
        }
    }
    static VERBS: OnceLock<BTreeSet<String>> = OnceLock::new();
    VERBS.get_or_init(|| {
        let mut out = BTreeSet::new();
        walk(&Hostctl::without_url(), &mut Vec::new(), &mut out);
        out
    })
}

/// The verb a run's arguments name: the longest one at the first place
/// where one starts (after options such as `-o json`).
fn verb_of<'a>(verbs: &'a BTreeSet<String>, args: &[String]) -> Option<&'a str> {
    (0..args.len()).find_map(|start| {
        (start + 1..=args.len())
            .rev()
            .find_map(|end| verbs.get(&args[start..end].join(" ")))
            .map(String::as_str)
    })
}
