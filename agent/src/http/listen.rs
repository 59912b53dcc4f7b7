//! Where the binding listens: a Unix socket whose peers are known by
//! their credentials, and TCP with TLS whose peers are known by their
//! client certificates.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::config::{HttpSettings, SocketSettings};

use super::{router, HttpBinding};

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) enum Remote {
    /// A Unix socket peer, by its credentials (`None`: unknown).
    Unix {
        /// Its uid.
        uid: Option<u32>,
        /// Its primary gid.
        gid: Option<u32>,
    },
    /// A TLS client, by its verified certificate's subject CN.
    Cert {
        /// The CN, if the certificate has one.
        cn: Option<String>,
    },
}

impl Connected<IncomingStream<'_, UnixListener>> for Remote {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Remote::Unix {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
            },
            Err(_) => Remote::Unix {
                uid: None,
                gid: None,
            },
        }
    }
}

/// Binds the socket: its directory made, a stale socket file replaced
/// (one another process still serves on is refused), mode and owner set.
fn bind_socket(s: &SocketSettings) -> io::Result<UnixListener> {
    if let Some(dir) = s.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if s.path.exists() {
        if std::os::unix::net::UnixStream::connect(&s.path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by another process", s.path.display()),
            ));
        }
        std::fs::remove_file(&s.path)?;
    }
    let listener = UnixListener::bind(&s.path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(s.mode))?;
    if let Some((uid, gid)) = s.owner {
        std::os::unix::fs::chown(&s.path, Some(uid), gid)?;
    }
    Ok(listener)
}

/// The binding's listeners, bound.
pub(crate) struct Listeners {
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
}

/// Binds where `settings` say; fails if a listener cannot be set up.
pub(crate) async fn bind(settings: &HttpSettings) -> io::Result<Listeners> {
    let unix = match &settings.socket {
        Some(s) => {
            let listener = bind_socket(s).map_err(|e| {
                io::Error::new(e.kind(), format!("http_socket {}: {e}", s.path.display()))
            })?;
            tracing::info!(socket = %s.path.display(), mode = format!("{:o}", s.mode), "HTTP binding listening");
            Some((listener, s.path.clone()))
        }
        None => None,
    };
    let tcp = match &settings.tcp {
        Some(t) => {
            let tls = super::tls::acceptor(t)?;
            let listener = tokio::net::TcpListener::bind(t.addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("http_listen {}: {e}", t.addr)))?;
            tracing::info!(addr = %t.addr, "HTTP binding listening (TLS, client certificates)");
            Some((listener, tls))
        }
        None => None,
    };
    Ok(Listeners { unix, tcp })
}

/// Serves the binding on `listeners` until the task is dropped.
pub(crate) async fn serve(binding: Arc<HttpBinding>, listeners: Listeners) -> io::Result<()> {
    let app = router(binding);
    let mut servers = tokio::task::JoinSet::new();
    if let Some((listener, path)) = listeners.unix {
        let app = app.clone();
        servers.spawn(async move {
            let _remove = RemoveOnDrop(path);
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<Remote>(),
            )
            .await
        });
    }
    if let Some((listener, tls)) = listeners.tcp {
        servers.spawn(super::tls::serve(listener, tls, app));
    }
    match servers.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(io::Error::other(e)),
        None => Ok(()),
    }
}

/// Removes the socket file when the server stops.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(&self.0));
    }
}
