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

/// An agent serving the HTTP binding over TLS with this PKI (server
/// certificate `server`, client CA `ca`), its broker down, and its port.
pub struct TlsHttpAgent {
    /// The agent.
    pub agent: crate::AgentProcess,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
}

impl Pki {
    /// Starts agent `host` with the TLS listener on a free port and the
    /// bus roles `roles` (`cn=role,...`, which certificate holders get),
    /// the broker down; returns once it listens.
    pub fn http_agent(&self, host: &str, roles: &str) -> TlsHttpAgent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let f = |n: &str| self.file(n).display().to_string();
        let mut agent = crate::AgentProcess::builder(host, "amqp://guest:guest@127.0.0.1:1/%2f")
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("HOSTBUS_HTTP_TLS_CERT", f("server.pem"))
            .env("HOSTBUS_HTTP_TLS_KEY", f("server.key"))
            .env("HOSTBUS_HTTP_CLIENT_CA", f("ca.pem"))
            .env("HOSTBUS_ROLES", roles)
            .spawn()
            .expect("agent");
        agent
            .wait_for_log("HTTP binding listening", std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
        TlsHttpAgent { agent, port }
    }

    /// `POST /v1/commands/<command>` with `{}` through curl on `port`,
    /// trusting the CA, with client certificate `cert` if given: whether
    /// curl succeeded, and the body followed by a line with the status.
    pub fn curl(&self, port: u16, cert: Option<&str>, command: &str) -> (bool, String) {
        let f = |n: &str| self.file(n).display().to_string();
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &f("ca.pem"),
            "-X",
            "POST",
        ])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .args(["-o", "-", "-w", "\n%{http_code}"]);
        if let Some(name) = cert {
            c.args(["--cert", &f(&format!("{name}.pem"))])
                .args(["--key", &f(&format!("{name}.key"))]);
        }
        let out = c
            .arg(format!("https://localhost:{port}/v1/commands/{command}"))
            .output()
            .expect("run curl (is it installed?)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}
