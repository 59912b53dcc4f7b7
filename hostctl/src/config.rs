//! Settings: a flag wins over the `HOSTBUS_*` environment, which wins over
//! the config file, which wins over the defaults. A value hostctl cannot
//! use, wherever it comes from, is a usage error (exit 2) naming where it
//! came from, never replaced by a default; an empty variable is unset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostbus_client::ClientConfig;

use crate::cli::{Cli, Output};
use crate::output::{Failure, Res};

/// The config file (`--config`, `HOSTCTL_CONFIG`, or
/// `~/.config/hostbus/hostctl.toml`): TOML, every key optional.
#[derive(serde::Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    urls: Option<Vec<String>>,
    socket: Option<PathBuf>,
    timeout_ms: Option<u64>,
    output: Option<Output>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl FileConfig {
    /// Reads the file named by `--config`/`HOSTCTL_CONFIG`, which must
    /// exist, or else the default one, which need not.
    fn read(named: Option<PathBuf>) -> Res<Self> {
        let explicit = named.is_some();
        let Some(path) = named.or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/hostbus/hostctl.toml"))
        }) else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(Failure::usage(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn parse(path: &Path, text: &str) -> Res<Self> {
        toml::from_str(text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    }
}

/// The client configuration and output format `cli` asks for.
pub(crate) fn load(cli: &Cli) -> Res<(ClientConfig, Output)> {
    let named = match cli.config.clone() {
        Some(p) => Some(p),
        None => env_value("HOSTCTL_CONFIG", |v| Ok(PathBuf::from(v)))?,
    };
    let file = FileConfig::read(named)?;
    // A local agent's socket instead of the broker; a --url flag wins over
    // a socket from the environment or the file.
    let socket = cli.socket.clone().or_else(|| {
        if cli.urls.is_empty() {
            std::env::var_os("HOSTBUS_SOCKET")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .or(file.socket.clone())
        } else {
            None
        }
    });
    let urls = if !cli.urls.is_empty() {
        cli.urls.clone()
    } else if let Ok(v) = std::env::var("HOSTBUS_URL") {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        file.urls
            .unwrap_or_else(|| vec!["amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()])
    };
    let timeout_ms = match cli.timeout_ms {
        Some(t) => Some(t),
        None => env_value("HOSTBUS_TIMEOUT_MS", |v| {
            v.parse::<u64>()
                .map_err(|e| format!("not a number of milliseconds ({e})"))
        })?,
    };
    let timeout_ms = timeout_ms.or(file.timeout_ms).unwrap_or(10_000);
    let output = match cli.output {
        Some(o) => Some(o),
        None => env_value("HOSTBUS_OUTPUT", |v| {
            <Output as clap::ValueEnum>::from_str(v, false).map_err(|_| "say table or json".into())
        })?,
    };
    let output = output.or(file.output).unwrap_or(Output::Table);
    let pick = |flag: &Option<PathBuf>, env: &str, file: &Option<PathBuf>| {
        flag.clone()
            .or_else(|| std::env::var_os(env).map(PathBuf::from))
            .or_else(|| file.clone())
    };
    let ca = pick(&cli.ca_file, "HOSTBUS_CA_FILE", &file.ca_file);
    let cert = pick(&cli.cert_file, "HOSTBUS_CERT_FILE", &file.cert_file);
    let key = pick(&cli.key_file, "HOSTBUS_KEY_FILE", &file.key_file);
    let tls = hostbus_client::Tls::load(ca.as_deref(), cert.as_deref(), key.as_deref())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mut cfg = match socket {
        Some(path) => ClientConfig::local(path),
        None => {
            let mut cfg = ClientConfig::new(urls.first().cloned().unwrap_or_default());
            cfg.urls = urls;
            cfg.tls = tls;
            cfg
        }
    };
    cfg.timeout = Duration::from_millis(timeout_ms);
    Ok((cfg, output))
}

/// The value of environment variable `name` as `parse` reads it: unset
/// or empty is `None`; one `parse` refuses is a usage error naming the
/// variable and its value.
fn env_value<T>(name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Res<Option<T>> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => parse(&v)
            .map(Some)
            .map_err(|e| Failure::usage(format!("{name}={v}: {e}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(Failure::usage(format!("{name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(Path::new("hostctl.toml"), text).map_err(|f| f.message)
    }

    #[test]
    fn reads_every_setting() {
        let c = parse(
            r#"
# the lab cluster
urls = ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]  # both nodes
socket = "/run/hostbus/agent.sock"
timeout_ms = 2500
output = "json"
ca_file = "/etc/hostbus/ca.pem"
cert_file = "/etc/hostbus/me.pem"
key_file = "/etc/hostbus/me.key"
"#,
        )
        .expect("valid");
        assert_eq!(
            c.urls.as_deref(),
            Some(
                &[
                    "amqp://a:5672/%2f".to_owned(),
                    "amqp://b:5672/%2f".to_owned()
                ][..]
            )
        );
        assert_eq!(c.socket, Some(PathBuf::from("/run/hostbus/agent.sock")));
        assert_eq!(c.timeout_ms, Some(2500));
        assert!(c.output == Some(Output::Json));
        assert_eq!(c.key_file, Some(PathBuf::from("/etc/hostbus/me.key")));
        assert_eq!(parse("").expect("empty"), FileConfig::default());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let e = parse("url = \"amqp://x\"").expect_err("unknown key");
        assert!(e.starts_with("hostctl.toml: "), "{e}");
        assert!(parse("timeout_ms = \"soon\"").is_err());
        assert!(parse("output = \"yaml\"").is_err());
        assert!(parse("urls = [").is_err());
    }
}
