//! A test PKI made with the `openssl` command: a CA with a server
//! certificate (localhost, 127.0.0.1) and client certificates, and an
//! unrelated CA with a client certificate of its own (the TLS suites of
//! the broker connection and of the HTTP binding).

use std::path::{Path, PathBuf};
use std::process::Command;

use hostbus_client::Tls;

use crate::{RabbitNode, TempDir, TlsListener};

/// Extensions of a client certificate.
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
                          keyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";

/// Runs `openssl <args>` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is the openssl command installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key (EC P-256; `openssl genpkey` writes PKCS#8 PEM).
fn key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
}

/// A self-signed CA: `<name>.key` and `<name>.pem`.
fn ca(dir: &Path, name: &str, cn: &str) {
    let key_file = format!("{name}.key");
    key(dir, &key_file);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key_file,
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf certificate `<name>.pem` (key `<name>.key`) signed by CA `ca`,
/// with the extension lines `ext`.
fn leaf(dir: &Path, name: &str, cn: &str, ca: &str, serial: &str, ext: &str) {
    let key_file = format!("{name}.key");
    key(dir, &key_file);
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key_file,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    );
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).expect("write the extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The test's PKI: a CA with a server certificate (localhost, 127.0.0.1)
/// and a client certificate, and an unrelated CA with a client certificate
/// of its own.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Makes the PKI in a temporary directory.
    pub fn make() -> Self {
        let dir = TempDir::new("hostbus-tls").expect("temporary directory");
        let d = dir.path();
        ca(d, "ca", "hostbus test CA");
        leaf(
            d,
            "server",
            "localhost",
            "ca",
            "0x1001",
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
        leaf(d, "client", "guest", "ca", "0x1002", CLIENT_EXT);
        ca(d, "other-ca", "some other CA");
        leaf(d, "stranger", "guest", "other-ca", "0x2001", CLIENT_EXT);
        Self { dir }
    }

    /// One more client certificate `<name>.pem` (key `<name>.key`) with
    /// subject CN `cn`, signed by the PKI's CA.
    pub fn client(&self, name: &str, cn: &str, serial: &str) {
        leaf(self.dir.path(), name, cn, "ca", serial, CLIENT_EXT);
    }

    /// A file of the PKI: `ca.pem`, `client.key`, ...
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A node with a TLS listener of this PKI (requiring client
    /// certificates when `fail_if_no_peer_cert`), and its `amqps` URL for
    /// `host` as guest.
    pub fn broker(&self, fail_if_no_peer_cert: bool, host: &str) -> (RabbitNode, String) {
        let node = RabbitNode::start_with_tls(self.listener(fail_if_no_peer_cert))
            .expect("rabbit with TLS");
        let url = node.amqps_url_for(host, "guest", "guest").expect("TLS url");
        (node, url)
    }

    /// The TLS listener settings of a node with this PKI.
    pub fn listener(&self, fail_if_no_peer_cert: bool) -> TlsListener {
        TlsListener {
            ca_file: self.file("ca.pem"),
            cert_file: self.file("server.pem"),
            key_file: self.file("server.key"),
            fail_if_no_peer_cert,
        }
    }

    /// Client TLS material: trusting CA `ca`, with client certificate
    /// `client` (`<client>.pem`, `<client>.key`) if given.
    pub fn tls(&self, ca: &str, client: Option<&str>) -> Tls {
        let cert = client.map(|c| self.file(&format!("{c}.pem")));
        let key = client.map(|c| self.file(&format!("{c}.key")));
        Tls::load(
            Some(&self.file(&format!("{ca}.pem"))),
            cert.as_deref(),
            key.as_deref(),
        )
        .expect("load TLS material")
    }
}
