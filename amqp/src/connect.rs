//! Connecting to the broker, over TCP or TLS, the same way for the agent
//! and the client.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lapin::tcp::{AsyncTcpStream, OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::{AMQPScheme, AMQPUri};
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

/// How connections are made, beyond the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Longest time for the TCP connection, TLS and the AMQP handshake
    /// together: a node that accepts connections and then hangs must not
    /// hang the caller.
    pub timeout: Duration,
    /// AMQP heartbeat asked for, in seconds, unless the URL says
    /// (`?heartbeat=N`): a dead peer on a silent network is noticed after
    /// about two of them. RabbitMQ's own default is 60 s.
    pub heartbeat_s: u16,
    /// Largest frame asked for, in bytes, unless the URL says
    /// (`?frame_max=N`); `None` takes the broker's (128 KiB on RabbitMQ).
    /// lapin keeps a send and a receive buffer of 32 frames per connection,
    /// so this sets a connection's memory: 8 MiB at 128 KiB, 1 MiB at 16 KiB.
    /// Larger messages are split into more frames, nothing else changes.
    pub frame_max: Option<u32>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            heartbeat_s: 10,
            frame_max: None,
        }
    }
}

/// Connects to `url` (`amqp://` or `amqps://`) naming the connection
/// `name` in the broker's management view, within `opts.timeout`. Errors say
/// which broker (without its password) and why, e.g. a certificate signed
/// by an unknown CA.
///
/// An attempt that fails or times out at any stage leaves nothing behind:
/// lapin runs a connection's I/O on a thread of its own from the AMQP
/// handshake on, and that thread waits for the broker as long as the
/// socket stays open, whoever stopped waiting for the handshake; so the
/// socket of an attempt given up on is shut down here, which ends the
/// thread and frees its buffers.
pub async fn connect(
    url: &str,
    name: &str,
    tls: &Tls,
    opts: ConnectOptions,
) -> Result<Connection, String> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e| format!("{} is not an AMQP URL: {e}", redact(url)))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(opts.heartbeat_s);
    }
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = opts.frame_max;
    }
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.as_bytes()));
    let config = OwnedTLSConfig {
        identity: tls
            .identity
            .clone()
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        cert_chain: tls.ca_pem.clone(),
    };
    let mut socket = None;
    let outcome =
        tokio::time::timeout(opts.timeout, handshake(uri, props, &config, &mut socket)).await;
    if !matches!(outcome, Ok(Ok(_))) {
        if let Some(s) = socket {
            // Ends lapin's I/O thread of this attempt, if it has one.
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    match outcome {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!(
            "cannot connect to {}: {e}{}",
            redact(url),
            wrong_port_hint(&e, url.starts_with("amqps:"))
        )),
        Err(_) => Err(format!(
            "cannot connect to {}: no AMQP session within {} ms",
            redact(url),
            opts.timeout.as_millis()
        )),
    }
}

/// TCP, TLS and the AMQP handshake of one attempt. As soon as the TCP
/// connection stands, a second handle on its socket goes to `socket`, so
/// that the caller can shut the socket down if it gives up on the attempt.
/// TCP and TLS run in this future (dropping it ends them); the AMQP
/// handshake runs on lapin's I/O thread, over the stream handed to it.
async fn handshake(
    uri: AMQPUri,
    props: ConnectionProperties,
    tls: &OwnedTLSConfig,
    socket: &mut Option<std::net::TcpStream>,
) -> lapin::Result<Connection> {
    let rt = lapin::runtime::default_runtime()?;
    let host = uri.authority.host.clone();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), uri.authority.port))
        .await?
        .collect();
    let mut stream = AsyncTcpStream::connect(&rt, addrs).await?;
    if let AsyncTcpStream::Plain(tcp) = &stream {
        *socket = Some(std::net::TcpStream::from(
            tcp.get_ref().as_fd().try_clone_to_owned()?,
        ));
    }
    if uri.scheme == AMQPScheme::AMQPS {
        stream = stream.into_tls(&host, tls.as_ref()).await?;
    }
    // lapin calls this once: it retries a transport only with automatic
    // recovery, which hostbus does not use (it reconnects by itself).
    let handed = Mutex::new(Some(stream));
    Connection::connector(
        uri,
        rt,
        async move |_, _| {
            handed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the connection's socket was already used",
                    )
                    .into()
                })
        },
        props,
    )
    .await
}

/// What to check when the server at the URL's port answered, but not as
/// an AMQP 0-9-1 broker (an HTTP port, the management UI) or not with
/// the transport the URL's scheme says: lapin's own words for those are
/// a parser dump and a TLS record type.
fn wrong_port_hint(e: &lapin::Error, tls: bool) -> &'static str {
    match e.kind() {
        lapin::ErrorKind::ParsingError(_) if tls => {
            " (the server there is not an AMQP 0-9-1 broker over TLS: is it RabbitMQ's TLS port, 5671 by default?)"
        }
        lapin::ErrorKind::ParsingError(_) => {
            " (the server there does not speak AMQP 0-9-1: is it RabbitMQ's AMQP port, 5672 by default, and not its management or another HTTP port? amqps:// for a TLS port)"
        }
        lapin::ErrorKind::IOError(io) if tls && io.kind() == std::io::ErrorKind::InvalidData => {
            " (no TLS there: is it RabbitMQ's TLS port, 5671 by default? amqp:// for a plain port)"
        }
        _ => "",
    }
}

/// Connects to the first of `urls` that answers, in the order given (see
/// [`spread`]), naming the connection `name`. Returns the connection and
/// its URL, or every URL's error when none answers. Agents, clients and
/// tests all reach a broker cluster through this one loop.
pub async fn connect_first(
    urls: &[String],
    name: &str,
    tls: &Tls,
    opts: ConnectOptions,
) -> Result<(Connection, String), String> {
    let mut errors = Vec::new();
    for url in urls {
        match connect(url, name, tls, opts).await {
            Ok(c) => return Ok((c, url.clone())),
            Err(e) => errors.push(e),
        }
    }
    Err(if errors.is_empty() {
        "no broker URL given".to_owned()
    } else {
        errors.join("; ")
    })
}

/// `urls` in the order to try them, starting at position `key % len`:
/// agents pass a hash of their host id, so a fleet spreads over a broker
/// cluster's nodes instead of landing on the first, and one agent always
/// prefers the same node.
pub fn spread(urls: &[String], key: u64) -> Vec<String> {
    if urls.is_empty() {
        return Vec::new();
    }
    let start = (key % urls.len() as u64) as usize;
    urls[start..]
        .iter()
        .chain(&urls[..start])
        .cloned()
        .collect()
}

/// A stable 64-bit hash of `s` (FNV-1a), the same in every process.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether the broker refused an operation as `PRECONDITION_FAILED` (406):
/// for a declaration, the object exists with other arguments.
pub fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 406)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on a free local port that answers whatever it is sent with
    /// `reply` and closes, as an HTTP server does to an AMQP greeting.
    async fn answering(reply: &'static [u8]) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    /// A wrong port gets a hint in words, not only lapin's parser dump
    /// (`failed to parse: Parsing Error: ParserErrors { .. }`) or a TLS
    /// record type (`received corrupt message of type InvalidContentType`).
    #[tokio::test]
    async fn a_port_that_is_not_an_amqp_broker_is_named_as_such() {
        let http = answering(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        let opts = ConnectOptions {
            timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        };
        for (scheme, hint) in [("amqp", "does not speak AMQP 0-9-1"), ("amqps", "TLS port")] {
            let url = format!("{scheme}://u:secret@127.0.0.1:{http}/%2f");
            let e = connect(&url, "test", &Tls::default(), opts)
                .await
                .expect_err("not a broker");
            assert!(e.contains(hint) && !e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn urls_spread_by_key_and_keep_their_order() {
        let urls: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(spread(&urls, 0), ["a", "b", "c"]);
        assert_eq!(spread(&urls, 4), ["b", "c", "a"]);
        assert_eq!(spread(&urls, 5), ["c", "a", "b"]);
        assert!(spread(&[], 3).is_empty());
        // Host ids of a fleet land on every node.
        let firsts: std::collections::BTreeSet<String> = (0..30)
            .map(|i| spread(&urls, stable_hash(&format!("h{i}")))[0].clone())
            .collect();
        assert_eq!(firsts.len(), 3);
    }
}
