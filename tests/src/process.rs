//! Process and file helpers shared by the node and agent handles: temporary
//! directories, free ports, signals to processes and process groups, log
//! tails, and running blocking or async code from either kind of context.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{ErrorKind, HarnessError, Result};

/// A name unique among the processes of this machine and the objects of
/// this test process: `<prefix>-<pid>-<counter>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A directory under the system's temporary directory, removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<counter>`.
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        fs::create_dir_all(&path)
            .map_err(|e| HarnessError::io(format!("cannot create {}", path.display()), e))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A signal to send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: graceful shutdown.
    Term,
    /// `SIGINT`: interrupt (Ctrl-C).
    Int,
    /// `SIGKILL`: immediate death.
    Kill,
    /// `SIGHUP`.
    Hup,
    /// `SIGSTOP`: freeze the process.
    Stop,
    /// `SIGCONT`: resume a stopped process.
    Cont,
}

impl Signal {
    /// The signal's name without `SIG`, as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Kill => "KILL",
            Signal::Hup => "HUP",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Sends `signal` to the process `pid` with the `kill` command.
pub(crate) fn signal_pid(pid: u32, signal: Signal) -> Result<()> {
    run_kill(signal, &pid.to_string())
}

/// Sends `signal` to every process of the process group `pgid`.
pub fn signal_group(pgid: u32, signal: Signal) -> Result<()> {
    run_kill(signal, &format!("-{pgid}"))
}

fn run_kill(signal: Signal, target: &str) -> Result<()> {
    let out = Command::new("kill")
        .args(["-s", signal.name(), "--", target])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io("cannot run `kill`", e))?;
    succeeded(&out, || {
        format!("`kill -s {} -- {target}` failed", signal.name())
    })
}

/// `Ok` when the command that gave `out` exited 0, else a command error
/// `<what>: <its stderr>`.
pub(crate) fn succeeded(out: &std::process::Output, what: impl FnOnce() -> String) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::new(
            ErrorKind::Command,
            format!(
                "{}: {}",
                what(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: `state ppid
/// pgrp …`, so stat(5)'s field n is at index n − 3.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The resident memory of process `pid`, KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The names of the threads of process `pid` (`comm` of each task).
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim_end().to_owned())
        .collect()
}

/// The live processes (zombies count as dead) of the process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                let state = f.first().map(String::as_str);
                f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
                    && state != Some("Z")
                    && state != Some("X")
            })
        })
        .collect()
}

/// Whether any process of the process group `pgid` is alive (zombies count
/// as dead).
pub fn group_alive(pgid: u32) -> bool {
    !group_members(pgid).is_empty()
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // The child was already reaped: nothing left to wait for.
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port that is free now on every interface, outside the kernel's
/// ephemeral range (so no outgoing connection takes it before the server
/// binds it), and never handed out twice by this process.
///
/// Picked at random in 20000..32000, avoiding RabbitMQ's defaults.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static SEED: AtomicU64 = AtomicU64::new(0);
    const RESERVED: &[u16] = &[25672, 25673, 15672, 15692];
    let mut state = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            .unwrap_or_default();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let port = 20_000 + u16::try_from((r >> 33) % 12_000).unwrap_or(0);
        if RESERVED.contains(&port) || handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(HarnessError::new(
        ErrorKind::Io,
        "no free TCP port found in 20000..32000",
    ))
}

/// The last `lines` lines of a text file (at most the last 256 KiB are
/// read), or a note saying why there is nothing.
pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = file.seek(SeekFrom::Start(len - MAX));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Runs blocking `f` from any context: directly on a plain thread, through
/// `tokio::task::block_in_place` on a worker of a multi-threaded runtime (so
/// the runtime's other tasks keep running), and directly on a
/// current-thread runtime (which then stalls until `f` returns).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `future` to completion on a fresh current-thread runtime in a new
/// thread, so it works from synchronous code and from inside any runtime.
pub(crate) fn block_on_fresh<F>(future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("hostbus-tests-probe".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(future))
        })
        .map_err(|e| HarnessError::io("cannot spawn a thread", e))?;
    match thread.join() {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(HarnessError::io("cannot build a tokio runtime", e)),
        Err(_) => Err(HarnessError::new(
            ErrorKind::Io,
            "the helper thread panicked",
        )),
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr in files
/// `dir/<name>.stdout` and `.stderr` (not pipes: processes it leaves
/// running must not hold the caller's pipes), killing it after `timeout`.
/// Returns the status, stdout and stderr; panics when it did not finish.
pub fn run_logged(
    mut cmd: Command,
    dir: &Path,
    name: &str,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let out = fs::File::create(&out_path).expect("create stdout file");
    let err = fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}
