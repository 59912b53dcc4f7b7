//! The real hypervisor of the `tests/tests/qemu_*.rs` suites: libvirtd with
//! QEMU and a tiny guest, as `scripts/qemu-setup` prepares them.
//!
//! The suite runs when `scripts/qemu-setup`'s variables are set
//! ([`QEMU_URI_ENV`], [`QEMU_HOME_ENV`], [`QEMU_KERNEL_ENV`],
//! [`QEMU_INITRD_ENV`]; `scripts/test` sets them). Without them it is not
//! run, and says so, unless [`QEMU_REQUIRED_ENV`] or `CI` is set: then a
//! missing environment is a failure, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::workspace_dir;
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::blocking;

/// The libvirt URI of the real hypervisor (`qemu:///system`).
pub const QEMU_URI_ENV: &str = "HOSTBUS_QEMU_URI";
/// A directory reachable by QEMU for the suite's storage pools.
pub const QEMU_HOME_ENV: &str = "HOSTBUS_QEMU_HOME";
/// The guest's kernel.
pub const QEMU_KERNEL_ENV: &str = "HOSTBUS_QEMU_KERNEL";
/// The guest's initramfs.
pub const QEMU_INITRD_ENV: &str = "HOSTBUS_QEMU_INITRD";
/// Set (to anything) to make a missing environment a failure.
pub const QEMU_REQUIRED_ENV: &str = "HOSTBUS_QEMU_REQUIRED";

/// The prefix of every libvirt object the suite makes, so leftovers of an
/// interrupted run can be found and removed.
pub const QEMU_PREFIX: &str = "hbq-";

/// The real hypervisor and the guest.
#[derive(Debug, Clone)]
pub struct QemuHost {
    /// libvirt URI.
    pub uri: String,
    /// Directory for the suite's pools.
    pub home: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
}

impl QemuHost {
    /// The environment `scripts/qemu-setup` exported; `Ok(None)` (after
    /// printing why) when it is absent and not required.
    pub fn from_env() -> Result<Option<Self>> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            var(QEMU_URI_ENV),
            var(QEMU_HOME_ENV),
            var(QEMU_KERNEL_ENV),
            var(QEMU_INITRD_ENV),
        ) {
            (Some(uri), Some(home), Some(kernel), Some(initrd)) => {
                let host = Self {
                    uri,
                    home: home.into(),
                    kernel: kernel.into(),
                    initrd: initrd.into(),
                };
                for f in [&host.kernel, &host.initrd] {
                    if !f.is_file() {
                        return Err(HarnessError::new(
                            ErrorKind::Startup,
                            format!("{} does not exist: run scripts/qemu-setup", f.display()),
                        ));
                    }
                }
                Ok(Some(host))
            }
            _ if var(QEMU_REQUIRED_ENV).is_some() || var("CI").is_some() => Err(HarnessError::new(
                ErrorKind::Startup,
                format!(
                    "the real-hypervisor suite is required here ({QEMU_REQUIRED_ENV} or CI is set) \
                     but {QEMU_URI_ENV}, {QEMU_HOME_ENV}, {QEMU_KERNEL_ENV} and {QEMU_INITRD_ENV} \
                     are not all set: run `eval \"$(scripts/qemu-setup)\"` first (scripts/test does)"
                ),
            )),
            _ => {
                eprintln!(
                    "real-hypervisor suite not run: {QEMU_URI_ENV} and the other variables of \
                     scripts/qemu-setup are not set (scripts/test sets them; \
                     `eval \"$(scripts/qemu-setup)\"` does it by hand)"
                );
                Ok(None)
            }
        }
    }

    /// Runs `virsh -c <uri> <args>`; its standard output.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        virsh(&self.uri, args)
    }

    /// Names of libvirt objects of a kind (`list --all --name`,
    /// `pool-list --all --name`, `net-list --all --name`) with the suite's prefix.
    fn ours(&self, list: &[&str]) -> Vec<String> {
        self.virsh(list)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(QEMU_PREFIX))
            .map(str::to_owned)
            .collect()
    }

    /// Removes every domain (with its snapshots and managed save), pool
    /// (with its volumes) and network whose name has the suite's prefix,
    /// and their console logs.
    pub fn remove_leftovers(&self) {
        for d in self.ours(&["list", "--all", "--name"]) {
            let _ = self.virsh(&["destroy", &d]);
            let _ = self.virsh(&[
                "undefine",
                &d,
                "--managed-save",
                "--snapshots-metadata",
                "--nvram",
            ]);
            let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{d}-serial0.log"));
        }
        for p in self.ours(&["pool-list", "--all", "--name"]) {
            let _ = self.virsh(&["pool-destroy", &p]);
            let _ = self.virsh(&["pool-delete", &p]);
            let _ = self.virsh(&["pool-undefine", &p]);
        }
        for n in self.ours(&["net-list", "--all", "--name"]) {
            let _ = self.virsh(&["net-destroy", &n]);
            let _ = self.virsh(&["net-undefine", &n]);
        }
        if let Ok(entries) = std::fs::read_dir(self.home.join("pools")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(QEMU_PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// A directory for a pool named `name` (under `<home>/pools`).
    pub fn pool_dir(&self, name: &str) -> PathBuf {
        self.home.join("pools").join(name)
    }

    /// Stops libvirtd (`scripts/qemu-setup stop-libvirtd`); guests keep running.
    pub fn stop_libvirtd(&self) -> Result<()> {
        self.setup("stop-libvirtd")
    }

    /// Starts libvirtd again and waits until it answers.
    pub fn start_libvirtd(&self) -> Result<()> {
        self.setup("start-libvirtd")
    }

    fn setup(&self, what: &str) -> Result<()> {
        let script = workspace_dir().join("scripts/qemu-setup");
        let out = blocking(|| {
            Command::new(&script)
                .arg(what)
                .stdin(Stdio::null())
                .output()
        })
        .map_err(|e| HarnessError::io(format!("cannot run {}", script.display()), e))?;
        crate::process::succeeded(&out, || format!("scripts/qemu-setup {what}"))
    }
}

/// Runs `virsh -q -c <uri> <args>`; its standard output. Shared by
/// [`QemuHost`] and the hosts of [`crate::libvirt_hosts`].
pub(crate) fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let out = blocking(|| {
        Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
    })
    .map_err(|e| HarnessError::io("cannot run virsh", e))?;
    if !out.status.success() {
        return Err(HarnessError::new(
            ErrorKind::Command,
            format!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Types `line` on a guest's serial console through its host pty `pty`
/// until the console's log `log` shows `expect` (at most `within`). QEMU
/// notices a reader of its pty only on a timer (about a second), so the pty
/// stays open and the line is repeated every two seconds until then: a
/// line that must run once guards itself.
pub fn type_on_serial(
    pty: &Path,
    line: &str,
    log: &Path,
    expect: &str,
    within: Duration,
) -> Result<()> {
    use std::io::Write;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pty)
        .map_err(|e| HarnessError::io(format!("cannot open {}", pty.display()), e))?;
    let deadline = Instant::now() + within;
    loop {
        tty.write_all(format!("{line}\r").as_bytes())
            .map_err(|e| HarnessError::io(format!("cannot type on {}", pty.display()), e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_for_text(log, expect, 1, left.min(Duration::from_secs(2))) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(HarnessError::with_source(
                    ErrorKind::Timeout,
                    format!(
                        "typing {line:?} on {} did not bring {expect:?}",
                        pty.display()
                    ),
                    e,
                ))
            }
            Err(_) => {}
        }
    }
}

/// Waits up to `timeout` until the file at `path` contains `needle` at
/// least `times` times; the file's content.
pub fn wait_for_text(path: &Path, needle: &str, times: usize, timeout: Duration) -> Result<String> {
    blocking(|| {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.matches(needle).count() >= times {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                let tail: String = text
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(HarnessError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} did not show {needle:?} {times} time(s) within {timeout:?}; it ends with:\n{tail}",
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}
