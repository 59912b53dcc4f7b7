//! Independent libvirt "hosts" on this one machine, between which real QEMU
//! guests migrate: `scripts/libvirt-hosts` runs N libvirtd daemons, each in
//! a mount namespace of its own (its own `/etc/libvirt`, `/run/libvirt`,
//! `/var/lib/libvirt`, ...), its own host UUID and migration ports, and a
//! directory pool [`IMAGES_POOL`] at the same path on each, holding each
//! host's own files. The machine's libvirtd (`scripts/qemu-setup`) keeps
//! running beside them, untouched.
//!
//! Needs root and what `scripts/qemu-setup` installs; a suite gates on
//! [`crate::QemuHost::from_env`] first and takes
//! [`crate::qemu_bench::TURNS`], as the other real-hypervisor suites do.
//!
//! ```no_run
//! use hostbus_tests::libvirt_hosts::LibvirtHosts;
//!
//! # fn example() -> hostbus_tests::Result<()> {
//! let hosts = LibvirtHosts::start(2)?;
//! let (a, b) = (&hosts.hosts()[0], &hosts.hosts()[1]);
//! // ... a guest `vm1` defined and started on `a`, then:
//! a.virsh(&["migrate", "--live", "--p2p", "--persistent", "--undefinesource", "vm1", &b.uri])?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::agent::workspace_dir;
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::{blocking, succeeded};

/// Where the hosts live (default `/var/lib/hostbus-hosts`): a folder QEMU
/// reaches, not under `/tmp`.
pub const LIBVIRT_HOSTS_DIR_ENV: &str = "HOSTBUS_LIBVIRT_HOSTS_DIR";

/// The directory pool every host has, at `/var/lib/libvirt/images` as the
/// host sees it ([`VirtHost::images_dir`] from outside).
pub const IMAGES_POOL: &str = "hbh-images";

/// Hosts `hbh1`..`hbhN`, started by [`start`](Self::start); dropping them
/// stops them (`scripts/libvirt-hosts stop`: their domains are destroyed
/// and undefined, their daemons and QEMUs ended).
#[derive(Debug)]
pub struct LibvirtHosts {
    hosts: Vec<VirtHost>,
    shared: PathBuf,
}

/// One of the hosts: a libvirtd in a mount namespace of its own.
#[derive(Debug, Clone)]
pub struct VirtHost {
    /// `hbh<i>`.
    pub name: String,
    /// Its URI, `qemu+unix:///system?socket=<dir>/run/libvirt-sock`, for
    /// clients and for the other hosts (peer-to-peer migration).
    pub uri: String,
    /// Its folder, under which its namespace's libvirt folders are bound
    /// (`etc`, `run`, `lib`, `cache`, `log`).
    pub dir: PathBuf,
}

impl LibvirtHosts {
    /// Stops what an earlier run left, then starts `n` hosts and waits
    /// until each answers. A start that fails stops what it started.
    pub fn start(n: usize) -> Result<Self> {
        script(&["start", &n.to_string()])
            .and_then(|out| Self::parse(&out, n))
            .map_err(|e| {
                if let Err(stop) = script(&["stop"]) {
                    eprintln!("cannot stop the libvirt hosts: {stop}");
                }
                HarnessError::with_source(
                    ErrorKind::Startup,
                    format!("{n} libvirt hosts did not start"),
                    e,
                )
            })
    }

    /// The hosts `scripts/libvirt-hosts start n` printed, one a line:
    /// `<name> <uri> <dir>`.
    fn parse(out: &str, n: usize) -> Result<Self> {
        let hosts = out
            .lines()
            .map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
                [name, uri, dir] => Ok(VirtHost {
                    name: name.to_owned(),
                    uri: uri.to_owned(),
                    dir: dir.into(),
                }),
                _ => Err(HarnessError::new(
                    ErrorKind::Startup,
                    format!("scripts/libvirt-hosts printed {l:?}, not `<name> <uri> <dir>`"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        match hosts.first().and_then(|h| h.dir.parent()) {
            Some(root) if hosts.len() == n => Ok(Self {
                shared: root.join("shared"),
                hosts,
            }),
            _ => Err(HarnessError::new(
                ErrorKind::Startup,
                format!(
                    "scripts/libvirt-hosts printed {} hosts, not {n}",
                    hosts.len()
                ),
            )),
        }
    }

    /// The hosts, `hbh1` first.
    pub fn hosts(&self) -> &[VirtHost] {
        &self.hosts
    }

    /// A folder outside every host's namespace that all of them see at the
    /// same path (console logs, files to share), emptied by each start.
    pub fn shared_dir(&self) -> &Path {
        &self.shared
    }
}

impl Drop for LibvirtHosts {
    fn drop(&mut self) {
        if let Err(e) = script(&["stop"]) {
            eprintln!("cannot stop the libvirt hosts: {e}");
        }
    }
}

impl VirtHost {
    /// The host's `/var/lib/libvirt/images` (its [`IMAGES_POOL`]) as seen
    /// from outside its namespace.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("lib/images")
    }

    /// Runs `virsh -c <uri> <args>`; its standard output.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        crate::qemu::virsh(&self.uri, args)
    }

    /// Stops the host's libvirtd (SIGTERM, SIGKILL after a grace); its
    /// guests keep running.
    pub fn kill_libvirtd(&self) -> Result<()> {
        script(&["kill", &self.name]).map(drop)
    }

    /// Starts the host's libvirtd again (unless it runs) and waits until it
    /// answers; it finds its running guests again.
    pub fn start_libvirtd(&self) -> Result<()> {
        script(&["start-one", &self.name]).map(drop)
    }
}

/// Runs `scripts/libvirt-hosts <args>`; its standard output.
fn script(args: &[&str]) -> Result<String> {
    let path = workspace_dir().join("scripts/libvirt-hosts");
    let out = blocking(|| Command::new(&path).args(args).stdin(Stdio::null()).output())
        .map_err(|e| HarnessError::io(format!("cannot run {}", path.display()), e))?;
    succeeded(&out, || format!("scripts/libvirt-hosts {}", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
