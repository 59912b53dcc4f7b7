//! `hostctl` as a test runs it: a fresh process every time, as an operator
//! or a script would.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
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

/// Runs `hostctl` as a fresh process: against one broker URL (or none),
/// with no user config file. One runner for every suite; the builder
/// methods say where a suite needs something else.
#[derive(Debug, Clone)]
pub struct Hostctl {
    bin: Option<PathBuf>,
    url: Option<String>,
    config: String,
    removed: Vec<String>,
    logged: Option<(PathBuf, Duration)>,
}

impl Hostctl {
    /// `hostctl` with `HOSTBUS_URL=url` and `HOSTCTL_CONFIG=/nonexistent`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            bin: None,
            url: Some(url.into()),
            config: "/nonexistent".to_owned(),
            removed: Vec::new(),
            logged: None,
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

    /// Runs `hostctl args...` and waits for it to exit.
    pub fn run(&self, args: &[&str]) -> CtlOutput {
        let mut cmd = Command::new(self.binary_path());
        cmd.args(args).env("HOSTCTL_CONFIG", &self.config);
        if let Some(url) = &self.url {
            cmd.env("HOSTBUS_URL", url);
        }
        for key in &self.removed {
            cmd.env_remove(key);
        }
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
