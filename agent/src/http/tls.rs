//! The TCP listener: TLS 1.2/1.3 with rustls, client certificates
//! required and verified against `http_client_ca`; the certificate's
//! subject CN names the peer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::TcpSettings;

use super::Remote;

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a request's head on an open connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn certs(path: &std::path::Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: rustls::pki_types::pem::Error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)
}

/// The TLS acceptor for `t`'s certificate, key and client CA.
pub(super) fn acceptor(t: &TcpSettings) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = certs(&t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| invalid(&t.key.display().to_string(), &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(&t.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| invalid(&t.client_ca.display().to_string(), &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| invalid("http_client_ca", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("http_tls_cert", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject CN of a DER certificate.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Accepts TLS connections and serves `app` on each, its peer named by
/// its certificate. A failed handshake costs only its connection.
pub(super) async fn serve(listener: TcpListener, tls: TlsAcceptor, app: Router) -> io::Result<()> {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: pause, do not spin.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let cn = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(common_name);
            let app = app.layer(Extension(ConnectInfo(Remote::Cert { cn })));
            // A client that opens a connection and never finishes a
            // request head is dropped (hyper's timeout needs a timer).
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %addr, error = %e, "HTTP connection ended");
            }
        });
    }
}
