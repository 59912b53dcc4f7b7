//! Which RabbitMQ the harness starts, and what that version's nodes are
//! told beyond the common configuration.
//!
//! The suites run on RabbitMQ 3.10 (Debian 12's package) and on 4.0
//! (Debian 13's, through `scripts/rabbitmq4-root`'s wrappers in
//! `HOSTBUS_RABBITMQ_BIN_DIR`). A 4.x node denies every deprecated feature
//! (`deprecated_features.permit.<feature> = false`), so a suite that passes
//! on it shows that hostbus, and the tests themselves, use none of them; 3.10
//! knows no such keys and would refuse to boot with them, so the harness asks
//! `rabbitmqctl version` first (once per folder of programs and test
//! process; it boots no node and takes under a second).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::TempDir;

/// The deprecated features RabbitMQ 4.0.5 lists (`rabbitmqctl
/// list_deprecated_features`), each denied on 4.x test nodes.
/// `classic_queue_mirroring` is already removed in 4.0 (denying it changes
/// nothing); `amqp_address_v1` concerns AMQP 1.0 addresses only. A node
/// that lists a feature missing here fails its start (see
/// [`unknown_deprecated_features`]), so a newer RabbitMQ cannot quietly
/// permit one.
pub(super) const DEPRECATED_FEATURES: &[&str] = &[
    "amqp_address_v1",
    "classic_queue_mirroring",
    "global_qos",
    "queue_master_locator",
    "ram_node_type",
    "transient_nonexcl_queues",
];

/// A RabbitMQ release, as `rabbitmqctl version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RabbitVersion {
    /// `4` of 4.0.5.
    pub major: u32,
    /// `0` of 4.0.5.
    pub minor: u32,
    /// `5` of 4.0.5.
    pub patch: u32,
}

impl RabbitVersion {
    /// Reads `4.0.5` (a suffix after the numbers, such as `+rc.1`, is
    /// ignored; missing parts count as 0).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let end = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let mut parts = s[..end].split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// Whether this release has deprecated features to deny (4.0 and later).
    pub fn has_deprecated_features(self) -> bool {
        self.major >= 4
    }

    /// The `rabbitmq.conf` lines this release adds to the common ones.
    pub(super) fn config(self) -> String {
        if !self.has_deprecated_features() {
            return String::new();
        }
        DEPRECATED_FEATURES
            .iter()
            .map(|f| format!("deprecated_features.permit.{f} = false\n"))
            .collect()
    }
}

impl fmt::Display for RabbitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The release of the RabbitMQ in `bin_dir` (`None`: on `PATH`), asked once
/// per folder and test process.
pub(super) fn version_of(bin_dir: Option<&Path>) -> Result<RabbitVersion> {
    static KNOWN: Mutex<Vec<(Option<PathBuf>, RabbitVersion)>> = Mutex::new(Vec::new());
    let key = bin_dir.map(Path::to_path_buf);
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, v)) = known.iter().find(|(k, _)| *k == key) {
        return Ok(*v);
    }
    let v = ask_version(bin_dir)?;
    known.push((key, v));
    Ok(v)
}

fn ask_version(bin_dir: Option<&Path>) -> Result<RabbitVersion> {
    let program = bin_dir.map_or_else(|| PathBuf::from("rabbitmqctl"), |d| d.join("rabbitmqctl"));
    // Its own home: the CLI writes an Erlang cookie there.
    let home = TempDir::new("hostbus-rabbit-version")?;
    let mut cmd = Command::new(&program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RABBITMQ_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg("version")
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("RABBITMQ_CONF_ENV_FILE", home.join("no-rabbitmq-env.conf"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("cannot run {}", program.display()), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(RabbitVersion::parse) {
        Some(v) if out.status.success() => Ok(v),
        _ => Err(HarnessError::new(
            ErrorKind::Startup,
            format!(
                "`{} version` did not print a version ({}):\n{stdout}{}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
    }
}

/// The deprecated features in `listed` (the names `rabbitmqctl -q
/// list_deprecated_features name` prints, one a line, perhaps under a
/// header) that [`DEPRECATED_FEATURES`] does not deny.
pub(super) fn unknown_deprecated_features(listed: &str) -> Vec<String> {
    listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "name" && !DEPRECATED_FEATURES.contains(l))
        .map(str::to_owned)
        .collect()
}

/// The deprecated features a node's log says were asked for, in the order
/// of their first mention. RabbitMQ 4 logs `Deprecated features:
/// `<feature>`: Feature `<feature>` is deprecated. ...` when a client uses
/// one (at most once a day per feature and node): as an error when it is
/// denied, which refuses some (a transient non-exclusive queue: the
/// connection is closed) and quietly ignores others (a global QoS becomes a
/// per-consumer one), so only the log tells.
pub(super) fn deprecated_features_used(log: &str) -> Vec<String> {
    let mut used: Vec<String> = Vec::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("Deprecated features: `") else {
            continue;
        };
        let Some((feature, rest)) = rest.split_once('`') else {
            continue;
        };
        if rest.starts_with(": Feature `") && !used.iter().any(|u| u == feature) {
            used.push(feature.to_owned());
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_rabbitmqctl_prints_them() {
        let v = |major, minor, patch| RabbitVersion {
            major,
            minor,
            patch,
        };
        assert_eq!(RabbitVersion::parse("3.10.8\n"), Some(v(3, 10, 8)));
        assert_eq!(RabbitVersion::parse("4.0.5"), Some(v(4, 0, 5)));
        assert_eq!(RabbitVersion::parse("4.1.0+rc.1"), Some(v(4, 1, 0)));
        assert_eq!(RabbitVersion::parse("4.1"), Some(v(4, 1, 0)));
        assert_eq!(RabbitVersion::parse("Listing..."), None);
        assert!(v(3, 10, 8) < v(4, 0, 5));
        assert_eq!(v(3, 10, 8).config(), "");
        assert!(v(4, 0, 5)
            .config()
            .contains("deprecated_features.permit.transient_nonexcl_queues = false\n"));
    }

    #[test]
    fn uses_of_deprecated_features_are_read_from_the_log() {
        let log = "\
2025-01-01 10:00:00.000 [debug] <0.1.0> Deprecated features: `global_qos`: not permitted in configuration, overrides default
2025-01-01 10:00:01.000 [error] <0.2.0> Deprecated features: `global_qos`: Feature `global_qos` is deprecated.
2025-01-01 10:00:01.000 [error] <0.2.0> Its use is not permitted per the configuration (overriding the default, which is permitted):
2025-01-01 10:00:02.000 [error] <0.3.0> Deprecated features: `transient_nonexcl_queues`: Feature `transient_nonexcl_queues` is deprecated.
2025-01-01 10:00:03.000 [error] <0.2.0> Deprecated features: `global_qos`: Feature `global_qos` is deprecated.
";
        assert_eq!(
            deprecated_features_used(log),
            vec![
                "global_qos".to_owned(),
                "transient_nonexcl_queues".to_owned()
            ]
        );
        assert!(deprecated_features_used(
            "[info] <0.1.0> Ready to start client connection listeners"
        )
        .is_empty());
    }

    #[test]
    fn a_deprecated_feature_the_harness_does_not_deny_is_named() {
        assert_eq!(
            unknown_deprecated_features("name\nglobal_qos\nram_node_type\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            unknown_deprecated_features("global_qos\nsomething_new\n"),
            vec!["something_new".to_owned()]
        );
    }
}
