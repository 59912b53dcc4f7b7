//! Connecting to the broker, over TCP or TLS, the same way for the agent
//! and the client.

use std::path::Path;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};

use crate::redact;

/// TLS material, read once from files (PEM).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// CA certificates that may sign the broker's certificate; the system
    /// roots when absent.
    pub ca_pem: Option<String>,
    /// Client certificate and key, for brokers that verify clients.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// Why TLS material could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {path}: {source}")]
pub struct TlsFileError {
    what: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

impl Tls {
    /// Reads the CA file and the optional client certificate and key.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsFileError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|source| TlsFileError {
                what,
                path: p.display().to_string(),
                source,
            })
        };
        let ca_pem = match ca {
            Some(p) => Some(String::from_utf8_lossy(&read("CA file", p)?).into_owned()),
            None => None,
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            _ => None,
        };
        Ok(Self { ca_pem, identity })
    }
}

/// Connects to `url` (`amqp://` or `amqps://`) naming the connection
/// `name` in the broker's management view. Errors say which broker (without
/// its password) and why, e.g. a certificate signed by an unknown CA.
pub async fn connect(url: &str, name: &str, tls: &Tls) -> Result<Connection, String> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.as_bytes()));
    let result = if url.starts_with("amqps://") {
        let config = OwnedTLSConfig {
            identity: tls
                .identity
                .clone()
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
            cert_chain: tls.ca_pem.clone(),
        };
        match lapin::runtime::default_runtime() {
            Ok(rt) => Connection::connect_with_config(url, props, config, rt).await,
            Err(e) => Err(e),
        }
    } else {
        Connection::connect(url, props).await
    };
    result.map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}
