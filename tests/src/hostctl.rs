//! `hostctl` as a test runs it: a fresh process every time, as an operator
//! or a script would.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::agent::workspace_dir;
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::blocking;

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

/// Runs `hostctl` against one broker URL, with no config file.
#[derive(Debug, Clone)]
pub struct Hostctl {
    url: String,
}

impl Hostctl {
    /// `hostctl` with `HOSTBUS_URL=url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// Runs `hostctl args...` and waits for it to exit.
    pub fn run(&self, args: &[&str]) -> CtlOutput {
        let bin = hostctl_binary().unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let out = blocking(|| {
            Command::new(bin)
                .args(args)
                .env("HOSTBUS_URL", &self.url)
                .env("HOSTCTL_CONFIG", "/nonexistent")
                .output()
        })
        .unwrap_or_else(|e| panic!("cannot run hostctl: {e}"));
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
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

    /// Runs with `-o json`, expects success, returns the parsed output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.json_with_code(0, args)
    }
}
