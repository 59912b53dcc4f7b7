//! TLS end to end on a private RabbitMQ node with a TLS listener and
//! certificates the test makes with the `openssl` command: the agent, the
//! client SDK and `hostctl` connect over `amqps://` with the CA (the broker
//! lists their connections as TLS); a client or agent that trusts another
//! CA fails with a clear error (the agent keeps retrying); and a broker that
//! requires client certificates admits a client with one signed by its CA
//! and refuses a client without one or with one from another CA.

use std::time::Duration;

use hostbus_client::protocol::commands::{HostPing, Ping};
use hostbus_client::protocol::names;
use hostbus_client::{Client, ClientConfig, ErrorKind, Tls};
use hostbus_tests::{AgentProcess, AmqpPeer, Hostctl, Pki, RabbitNode};

/// How long an agent may take to come online.
const ONLINE: Duration = Duration::from_secs(60);

/// Runs hostctl with `args` only (no broker URL or TLS files in its
/// environment); exit code, stdout, stderr.
fn hostctl(args: &[&str]) -> (i32, String, String) {
    let out = Hostctl::without_url().run(args);
    (out.code, out.stdout, out.stderr)
}

/// Starts the agent `start` makes and waits for its `agent.online`,
/// watched over the plain listener from before the agent starts (a watch
/// bound after it could miss the announcement).
async fn start_online(node: &RabbitNode, start: impl FnOnce() -> AgentProcess) -> AgentProcess {
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut sub = peer.watch(names::EVENT_EXCHANGE, "*.agent.online").await;
    let agent = start();
    if let Err(e) = sub.next(ONLINE).await {
        panic!("{e}\n{}", agent.log_tail(30));
    }
    agent
}

/// The broker's view of a connection: `(server port, ssl)` of the
/// connection whose client properties carry `connection_name`.
fn broker_connection(node: &RabbitNode, connection_name: &str) -> Option<(u16, bool)> {
    let out = node
        .ctl(&[
            "list_connections",
            "-q",
            "--no-table-headers",
            "port",
            "ssl",
            "client_properties",
        ])
        .expect("list_connections");
    out.lines()
        .find(|l| l.contains(connection_name))
        .and_then(|l| {
            let mut cols = l.split_whitespace();
            let port = cols.next()?.parse().ok()?;
            let ssl = cols.next()? == "true";
            Some((port, ssl))
        })
}

async fn ping(tls: Tls, url: &str) -> Result<String, hostbus_client::ClientError> {
    let mut cfg = ClientConfig::new(url);
    cfg.tls = tls;
    let client = Client::connect(cfg).await?;
    let pong = client
        .call::<HostPing>(
            "h1",
            Ping {
                echo: Some("tls".into()),
            },
        )
        .await?;
    Ok(pong.host_id)
}

fn mentions_tls(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("certificate") || m.contains("tls") || m.contains("unknownissuer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sdk_and_hostctl_connect_over_tls_and_a_foreign_ca_is_refused() {
    let pki = Pki::make();
    let (node, url) = pki.broker(false, "localhost");
    let ca = pki.file("ca.pem");
    let ca_str = ca.to_str().expect("utf-8 path");

    let _agent = start_online(&node, || {
        AgentProcess::builder("h1", &url)
            .env("HOSTBUS_TLS_CA_FILE", ca_str)
            .start()
    })
    .await;
    let tls_port = node.tls_port().expect("TLS port");
    assert_eq!(
        broker_connection(&node, "hostbus-agent/h1"),
        Some((tls_port, true)),
        "the agent's connection is on the TLS listener"
    );

    // The SDK, trusting the CA.
    assert_eq!(ping(pki.tls("ca", None), &url).await.expect("ping"), "h1");

    // hostctl with --ca-file.
    let (code, out, err) = hostctl(&[
        "--url",
        &url,
        "--ca-file",
        ca_str,
        "-o",
        "json",
        "ping",
        "h1",
    ]);
    assert_eq!(code, 0, "hostctl over TLS failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["host"], "h1", "{out}");

    // Another CA: the client fails with a clear connection error.
    let e = ping(pki.tls("other-ca", None), &url)
        .await
        .expect_err("a client trusting another CA must not connect");
    println!("client with a foreign CA: {e}");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(mentions_tls(e.message()), "{e}");
    // hostctl without any CA (only the system roots) fails the same way.
    let (code, _, err) = hostctl(&["--url", &url, "ping", "h1"]);
    assert_eq!(code, 5, "unreachable: {err}");
    assert!(mentions_tls(&err), "{err}");

    // An agent trusting another CA logs why and keeps retrying.
    let mut stray = AgentProcess::builder("h2", &url)
        .libvirt_uri(hostbus_tests::node_file_uri("h2"))
        .env(
            "HOSTBUS_TLS_CA_FILE",
            pki.file("other-ca.pem").to_str().expect("path"),
        )
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "300")
        .start();
    stray
        .wait_for_log("cannot connect to the broker", Duration::from_secs(30))
        .expect("h2 logs the failure");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stray
        .log()
        .matches("retrying the broker connection")
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "h2 does not keep retrying\n{}",
            stray.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stray.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to the broker"))
        .expect("the failure line");
    println!("agent with a foreign CA logs: {line}");
    assert!(mentions_tls(line), "{line}");
    assert!(
        line.contains("amqps://guest:***@localhost"),
        "names the broker without its password: {line}"
    );
    assert!(stray.is_running(), "{}", stray.log_tail(20));
    assert!(!log.contains("serving commands"), "{}", stray.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_admits_only_certified_clients() {
    let pki = Pki::make();
    let (node, url) = pki.broker(true, "127.0.0.1");
    let path = |name: &str| pki.file(name).to_str().expect("utf-8 path").to_owned();

    let _agent = start_online(&node, || {
        AgentProcess::builder("h1", &url)
            .env("HOSTBUS_TLS_CA_FILE", path("ca.pem"))
            .env("HOSTBUS_TLS_CERT_FILE", path("client.pem"))
            .env("HOSTBUS_TLS_KEY_FILE", path("client.key"))
            .start()
    })
    .await;

    // With the client certificate: admitted.
    assert_eq!(
        ping(pki.tls("ca", Some("client")), &url)
            .await
            .expect("ping with a client certificate"),
        "h1"
    );
    let (code, out, err) = hostctl(&[
        "--url",
        &url,
        "--ca-file",
        &path("ca.pem"),
        "--cert-file",
        &path("client.pem"),
        "--key-file",
        &path("client.key"),
        "-o",
        "json",
        "ping",
        "h1",
    ]);
    assert_eq!(code, 0, "hostctl with a client certificate failed: {err}");
    assert!(out.contains("\"h1\""), "{out}");

    // Without one: refused.
    let e = ping(pki.tls("ca", None), &url)
        .await
        .expect_err("a client without a certificate must be refused");
    println!("client without a certificate: {e}");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    // With one from another CA: refused.
    let e = ping(pki.tls("ca", Some("stranger")), &url)
        .await
        .expect_err("a client certificate from another CA must be refused");
    println!("client with a foreign certificate: {e}");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    let (code, _, err) = hostctl(&["--url", &url, "--ca-file", &path("ca.pem"), "ping", "h1"]);
    assert_eq!(code, 5, "hostctl without a certificate: {err}");
}
