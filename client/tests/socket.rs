//! The socket transport against a stand-in agent: a Unix socket that
//! answers HTTP/1.1 by hand as docs/http.md says the agent does. What the
//! client sends (paths, headers, encodings) and how it reads replies,
//! errors and the event stream are checked here without libvirt; the real
//! agent is driven through hostctl in tests/tests/socket.rs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{Empty, HostInfo, Ping, Pong, VmGet, VmUuid};
use hostbus_client::protocol::events::{Health, Load, Versions};
use hostbus_client::protocol::types::{HealthStatus, ObjectClass, Record};
use hostbus_client::protocol::{
    encode, ContentType, Error as WireError, ErrorCode, Event, EventAction, Heartbeat, Reply,
};
use hostbus_client::{
    Client, ClientConfig, ErrorKind, Notification, ResyncReason, SubscribeOptions,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use uuid::Uuid;

/// A request as the stand-in received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A reply of the stand-in: status, content type, body; `stream` keeps the
/// connection open after the body (an event stream).
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    stream: bool,
}

fn json<T: serde::Serialize>(status: &'static str, v: &T) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        body: encode(ContentType::Json, v).expect("json"),
        stream: false,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        host_id: "h1".into(),
        epoch: Uuid::from_u128(1),
        last_seq: 5,
        time: hostbus_client::protocol::now_ms(),
        started_at: 0,
        interval_ms: 5000,
        versions: Versions {
            agent: "test".into(),
            protocol: "1.1".into(),
            libvirt: String::new(),
            hypervisor: String::new(),
        },
        capabilities: Vec::new(),
        labels: vec!["rack1".into()],
        health: Health {
            status: HealthStatus::Ok,
            hypervisor_connected: true,
            message: String::new(),
        },
        load: Load {
            in_flight: 0,
            commands_total: 0,
            tasks_running: 0,
            vms_active: 2,
            load_avg_milli: 0,
            memory_free_kib: 0,
        },
        facts: BTreeMap::new(),
    }
}

fn event(seq: u64) -> String {
    let ev = Event {
        host_id: "h1".into(),
        epoch: Uuid::from_u128(1),
        seq,
        time: 0,
        class: ObjectClass::Vm,
        action: EventAction::Started,
        object_id: format!("vm-{seq}"),
        generation: seq,
        record: Record::None,
        inventory: None,
    };
    let data = String::from_utf8(encode(ContentType::Json, &ev).expect("event")).expect("utf-8");
    format!("id: {seq}\nevent: vm.started\ndata: {data}\n\n")
}

/// What the stand-in answers to each request.
fn answer(req: &Seen) -> Answer {
    let ct = req
        .headers
        .get("content-type")
        .map(String::as_str)
        .unwrap_or("application/json");
    let reply = |status, reply: &dyn erased::Reply| Answer {
        status,
        content_type: if ct == "application/msgpack" {
            "application/msgpack"
        } else {
            "application/json"
        },
        body: reply.encode(ct),
        stream: false,
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/heartbeat") => json("200 OK", &heartbeat()),
        ("GET", "/v1/events") => Answer {
            status: "200 OK",
            content_type: "text/event-stream",
            // Events 7 and 8 never come: a gap.
            body: format!(
                "event: hello\ndata: {{\"host_id\":\"h1\",\"epoch\":\"{}\",\"last_seq\":5}}\n\n: keep-alive\n\n{}{}",
                Uuid::from_u128(1),
                event(6),
                event(9)
            )
            .into_bytes(),
            stream: true,
        },
        ("POST", "/v1/commands/host.ping") => reply(
            "200 OK",
            &Reply::<Pong>::Ok(Pong {
                host_id: "h1".into(),
                time: 0,
                echo: Some("hi".into()),
            }),
        ),
        ("POST", "/v1/commands/vm.get") => reply(
            "404 Not Found",
            &Reply::<()>::Error(WireError::new(
                ErrorCode::VmNotFound,
                [("vm", "x".to_owned())],
                "no such VM",
            )),
        ),
        ("POST", "/v1/commands/host.snapshot") => reply(
            "503 Service Unavailable",
            &Reply::<()>::Error(WireError::new(
                ErrorCode::HostUnavailable,
                [("reason", "test".to_owned())],
                "down for the test",
            )),
        ),
        _ => Answer {
            status: "405 Method Not Allowed",
            content_type: "text/plain",
            body: b"no".to_vec(),
            stream: false,
        },
    }
}

/// Replies of any response type, encoded as the request asked.
mod erased {
    pub(super) trait Reply {
        fn encode(&self, ct: &str) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Reply for hostbus_client::protocol::Reply<T> {
        fn encode(&self, ct: &str) -> Vec<u8> {
            let ct = hostbus_client::protocol::ContentType::parse(Some(ct)).expect("ct");
            hostbus_client::protocol::encode(ct, self).expect("encode")
        }
    }
}

/// A folder removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the stand-in on a fresh socket; returns its folder (removed when
/// dropped), its path and what it saw.
fn stand_in() -> (Dir, PathBuf, Arc<Mutex<Vec<Seen>>>) {
    let dir = Dir(std::env::temp_dir().join(format!("hostbus-client-socket-{}", Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let path = dir.0.join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or_default().to_owned(),
                        parts.next().unwrap_or_default().to_owned(),
                    );
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.expect("header");
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').expect("header line");
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
                    }
                    let len = headers
                        .get("content-length")
                        .map_or(0, |l| l.parse().expect("length"));
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.expect("body");
                    let req = Seen {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let a = answer(&req);
                    log.lock().expect("log").push(req);
                    let mut out = format!(
                        "HTTP/1.1 {}\r\ncontent-type: {}\r\nx-hostbus-host: h1\r\n",
                        a.status, a.content_type
                    );
                    if !a.stream {
                        out.push_str(&format!("content-length: {}\r\n", a.body.len()));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&a.body);
                    w.write_all(&bytes).await.expect("write");
                    if a.stream {
                        // An event stream stays open.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
    });
    (dir, path, seen)
}

#[tokio::test]
async fn calls_go_over_the_socket_with_the_envelope_as_headers() {
    let (_dir, path, seen) = stand_in();
    let client = Client::connect(ClientConfig::local(&path))
        .await
        .expect("connect");
    assert_eq!(client.local_host(), Some("h1"));
    let pong = client.host("h1").ping().await.expect("ping");
    assert_eq!(pong.host_id, "h1");
    let req = seen
        .lock()
        .expect("seen")
        .iter()
        .find(|r| r.path == "/v1/commands/host.ping")
        .cloned()
        .expect("a post");
    assert_eq!(req.method, "POST");
    assert_eq!(req.headers["content-type"], "application/msgpack");
    assert_eq!(req.headers["x-hostbus-version"], "1.1");
    assert!(req.headers["x-hostbus-command-id"].parse::<Uuid>().is_ok());
    let deadline: u64 = req.headers["x-hostbus-deadline"].parse().expect("ms");
    assert!(deadline > hostbus_client::protocol::now_ms());
    assert!(!req.headers.contains_key("x-hostbus-async"));
    let sent: Ping =
        hostbus_client::protocol::decode(ContentType::MsgPack, &req.body, 1 << 20).expect("ping");
    assert_eq!(sent.echo, None);

    // An error status's body is the protocol error, as on the bus.
    let e = client
        .call::<VmGet>("h1", VmUuid { uuid: Uuid::nil() })
        .await
        .expect_err("not found");
    assert_eq!(
        (e.kind(), e.code(), e.param("vm")),
        (ErrorKind::NotFound, Some(ErrorCode::VmNotFound), Some("x"))
    );
    // A reply that is no `Reply`: the status says what happened.
    let e = client
        .call::<HostInfo>("h1", Empty {})
        .await
        .expect_err("405");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Another host is not behind this socket: nothing is sent.
    let before = seen.lock().expect("seen").len();
    let e = client.host("h2").ping().await.expect_err("h2");
    assert_eq!(e.kind(), ErrorKind::NoRoute, "{e}");
    assert_eq!(seen.lock().expect("seen").len(), before);
    // The fleet is the one host, with its heartbeat's facts.
    let hosts = client.presence().await.expect("presence").hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        (hosts[0].host_id.as_str(), hosts[0].load.vms_active),
        ("h1", 2)
    );
    // Broker administration has no broker here.
    let e = client.forget_host("h1", true).await.expect_err("no broker");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[tokio::test]
async fn a_missing_socket_is_a_connection_error_naming_it() {
    let path = std::env::temp_dir().join(format!("hostbus-no-agent-{}.sock", Uuid::new_v4()));
    let e = Client::connect(ClientConfig::local(&path))
        .await
        .err()
        .expect("no agent there");
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.message().contains(&path.display().to_string()), "{e}");
}

/// The subscription's next notification, within 10 s.
async fn next(sub: &mut hostbus_client::Subscription) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok")
}

#[tokio::test]
async fn the_event_stream_resyncs_on_a_gap() {
    let (_dir, path, _) = stand_in();
    let client = Client::connect(ClientConfig::local(&path))
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(&["h1.vm.*"], SubscribeOptions::default())
        .await
        .expect("subscribe");
    match next(&mut sub).await {
        Notification::Event(e) => assert_eq!(e.seq, 6, "after the hello's 5: no gap"),
        n => panic!("{n:?}"),
    }
    match next(&mut sub).await {
        Notification::Resync {
            host,
            reason,
            inventory,
            error,
        } => {
            assert_eq!(host, "h1");
            assert_eq!(
                reason,
                ResyncReason::Gap {
                    expected: 7,
                    got: 9
                }
            );
            assert!(inventory.is_none());
            assert_eq!(
                error.and_then(|e| e.code()),
                Some(ErrorCode::HostUnavailable)
            );
        }
        n => panic!("{n:?}"),
    }
    match next(&mut sub).await {
        Notification::Event(e) => assert_eq!(e.seq, 9),
        n => panic!("{n:?}"),
    }
    assert_eq!(sub.position(), None, "an agent's stream has no offsets");
}
