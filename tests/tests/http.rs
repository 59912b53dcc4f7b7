//! The HTTP binding (docs/http.md) end to end, against real agents on
//! libvirt's test driver: one command id runs once whichever binding
//! carries it; events reach HTTP subscribers with the bus's numbers; peers
//! are authorized by their uid and gid with the bus's roles; the TLS
//! listener admits only certificates of its CA; bad input gets structured
//! errors with fitting statuses while the broker is down.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use hostbus_protocol::commands::{
    HostPing, Ping, VmDefine, VmDefineRequest, VmList, VmListRequest, VmStart, VmStartRequest,
};
use hostbus_protocol::envelope::STATUS_HEADER;
use hostbus_protocol::names::{host_key, EVENT_EXCHANGE};
use hostbus_protocol::types::VmRecord;
use hostbus_protocol::{encode, now_ms, Command, ContentType, ErrorCode, EventAction, Reply};
use hostbus_tests::{
    command_props, event_of, small_vm, spawn_online, AgentBuilder, AgentProcess, AmqpPeer,
    HttpPeer, HttpReply, Pki, RabbitNode, Received,
};
use uuid::Uuid;

const T: Duration = Duration::from_secs(20);

/// A broker address where nothing listens: the broker is down.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// This process's uid and gid, as the agent sees them on the socket.
fn me() -> (u32, u32) {
    let m = std::fs::metadata("/proc/self").expect("/proc/self");
    (m.uid(), m.gid())
}

/// An agent builder serving HTTP on a socket in a directory of its own.
fn with_socket(builder: AgentBuilder, dir: &std::path::Path) -> (AgentBuilder, PathBuf) {
    let socket = dir.join("agent.sock");
    (builder.arg("--http-socket").arg(socket.clone()), socket)
}

fn scratch(name: &str) -> hostbus_tests::TempDir {
    hostbus_tests::TempDir::new(name).expect("temporary directory")
}

/// An agent with the broker down and the socket up, its peer roles `roles`
/// (`uid:N=role,...`); the agent and a client of its socket.
async fn offline_agent(
    host: &str,
    roles: Option<&str>,
) -> (AgentProcess, HttpPeer, hostbus_tests::TempDir) {
    let dir = scratch(&format!("hostbus-http-{host}"));
    let (mut b, socket) = with_socket(AgentProcess::builder(host, NO_BROKER), dir.path());
    if let Some(r) = roles {
        b = b.env("HOSTBUS_HTTP_PEER_ROLES", r);
    }
    let agent = b.spawn().expect("agent");
    let peer = HttpPeer::wait(&socket, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    (agent, peer, dir)
}

fn define(name: &str) -> VmDefineRequest {
    VmDefineRequest {
        spec: small_vm(name, &[]),
    }
}

async fn names_of_vms(peer: &HttpPeer) -> Vec<String> {
    let (r, reply) = peer
        .call::<VmList>(&VmListRequest { power_state: None }, ContentType::Json, &[])
        .await;
    match reply {
        Reply::Ok(l) => l.vms.into_iter().map(|v| v.name).collect(),
        other => panic!("vm.list: {} {other:?}", r.status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_id_runs_once_across_both_bindings() {
    let node = RabbitNode::start().expect("rabbit");
    let dir = scratch("hostbus-http-both");
    let (b, socket) = with_socket(AgentProcess::builder("h1", &node.amqp_url()), dir.path());
    let (mut bus, _events, agent, _online) = spawn_online(b).await;
    let http = HttpPeer::wait(&socket, T).await.expect("socket");

    // `vm.define` of `name` with command id `id` over the bus.
    async fn bus_define(bus: &mut AmqpPeer, id: Uuid, name: &str) -> Received {
        let mut props = command_props(VmDefine::NAME, "guest", ContentType::MsgPack);
        props.message_id = Some(id.to_string());
        let body = encode(ContentType::MsgPack, &define(name)).expect("encode");
        bus.call(&host_key("h1"), &props, &body, T)
            .await
            .expect("bus call")
    }

    // Over the bus first, then the same id over HTTP.
    let id = Uuid::new_v4();
    let first = bus_define(&mut bus, id, "both-a").await;
    assert_eq!(first.header_str(STATUS_HEADER), Some("ok"));
    // `vm.define` of `name` with command id `id` over HTTP, in `ct`.
    async fn http_define(
        http: &HttpPeer,
        id: Uuid,
        name: &str,
        ct: ContentType,
    ) -> (HttpReply, Reply<VmRecord>) {
        let id = id.to_string();
        http.call::<VmDefine>(&define(name), ct, &[("x-hostbus-command-id", &id)])
            .await
    }
    let (second, reply) = http_define(&http, id, "both-a", ContentType::Json).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.header("x-hostbus-command-id"),
        Some(id.to_string().as_str())
    );
    let Reply::Ok(vm) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(vm.name, "both-a");

    // Over HTTP first (MessagePack), then the same id over the bus.
    let id = Uuid::new_v4();
    let (r, _) = http_define(&http, id, "both-b", ContentType::MsgPack).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/msgpack"))
    );
    let again = bus_define(&mut bus, id, "both-b").await;
    assert_eq!(again.header_str(STATUS_HEADER), Some("ok"));
    assert_eq!(
        again.body, r.body,
        "the bus gets the journal's reply to the HTTP call"
    );

    // Each ran once: a second run of a define would be ALREADY_EXISTS, and
    // the journal answered twice.
    let vms = names_of_vms(&http).await;
    assert_eq!(
        vms.iter().filter(|n| n.starts_with("both-")).count(),
        2,
        "{vms:?}"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("duplicate command answered from the journal")
            .count(),
        2,
        "{}",
        agent.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_subscribers_get_the_bus_events_with_the_same_numbers() {
    let node = RabbitNode::start().expect("rabbit");
    let dir = scratch("hostbus-http-events");
    let (b, socket) = with_socket(AgentProcess::builder("h1", &node.amqp_url()), dir.path());
    let (bus, _announcements, _agent, online) = spawn_online(b).await;
    let mut on_bus = bus
        .subscribe(EVENT_EXCHANGE, "h1.vm.#")
        .await
        .expect("subscribe");
    let http = HttpPeer::wait(&socket, T).await.expect("socket");
    let (mut on_http, hello) = http.events().await.expect("event stream");
    assert_eq!(hello.event, "hello");
    let hello: serde_json::Value = serde_json::from_str(&hello.data).expect("hello json");
    assert_eq!(
        hello["epoch"],
        online.epoch.to_string(),
        "one epoch for both bindings"
    );
    assert!(hello["last_seq"].as_u64() >= Some(online.seq), "{hello}");

    let (_, reply) = http
        .call::<VmDefine>(&define("ev-1"), ContentType::Json, &[])
        .await;
    let Reply::Ok(vm) = reply else {
        panic!("{reply:?}")
    };
    let (r, _) = http
        .call::<VmStart>(
            &VmStartRequest {
                uuid: vm.uuid,
                paused: false,
            },
            ContentType::Json,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The same two events, in order, with the same numbers, on both.
    for action in [EventAction::Defined, EventAction::Started] {
        let b = event_of(&on_bus.next(T).await.expect("bus event"));
        let h = on_http.next(T).await.expect("http event");
        let he: hostbus_protocol::Event = serde_json::from_str(&h.data).expect("event json");
        assert_eq!((b.action, he.action), (action, action));
        assert_eq!(
            (he.seq, he.epoch, he.generation),
            (b.seq, b.epoch, b.generation)
        );
        assert_eq!(h.id, Some(b.seq.to_string()));
        assert_eq!(h.event, format!("vm.{action}"));
        assert_eq!(he.record, b.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_peers_get_the_role_of_their_uid_or_gid_and_nobody_else_gets_in() {
    let (uid, gid) = me();
    let start = |uuid| VmStartRequest {
        uuid,
        paused: false,
    };

    // A read-only uid reads, and changes nothing.
    let (_a, ro, _d) = offline_agent("ro1", Some(&format!("uid:{uid}=read-only"))).await;
    let vms = names_of_vms(&ro).await;
    assert!(!vms.is_empty(), "the test driver's VM");
    let (r, _) = ro
        .call::<VmDefine>(&define("nope"), ContentType::Json, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let e = r.error();
    assert_eq!(
        (e.code, e.param("user")),
        (
            ErrorCode::PermissionDenied,
            Some(format!("uid:{uid}").as_str())
        )
    );
    let (r, _) = ro
        .call::<VmStart>(&start(Uuid::new_v4()), ContentType::Json, &[])
        .await;
    assert_eq!(
        r.status,
        403,
        "operate needs more than read-only: {}",
        r.text()
    );
    assert!(!names_of_vms(&ro).await.contains(&"nope".to_owned()));
    let hb = ro
        .request("GET", "/v1/heartbeat", &[], Vec::new())
        .await
        .expect("heartbeat");
    assert_eq!(hb.status, 200, "{}", hb.text());
    // Read at start, without a broker session: the host's load and versions.
    let hb: serde_json::Value = serde_json::from_str(&hb.text()).expect("json");
    assert!(hb["load"]["memory_free_kib"].as_u64() > Some(0), "{hb}");
    assert_ne!(hb["versions"]["libvirt"], "", "{hb}");

    // A gid entry: operators start VMs but define none.
    let (_b, op, _d2) = offline_agent(
        "op1",
        Some(&format!(
            "gid:{gid}=operator,uid:{}=admin",
            uid.wrapping_add(1)
        )),
    )
    .await;
    let (r, _) = op
        .call::<VmStart>(&start(Uuid::new_v4()), ContentType::Json, &[])
        .await;
    assert_eq!(
        (r.status, r.error().code),
        (404, ErrorCode::VmNotFound),
        "allowed, then not found"
    );
    let (r, _) = op
        .call::<VmDefine>(&define("nope"), ContentType::Json, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A peer with no role gets nothing at all.
    let (_c, stranger, _d3) =
        offline_agent("st1", Some(&format!("uid:{}=admin", uid.wrapping_add(1)))).await;
    let (r, _) = stranger
        .call::<HostPing>(&Ping { echo: None }, ContentType::Json, &[])
        .await;
    assert_eq!(
        (r.status, r.error().code),
        (403, ErrorCode::PermissionDenied)
    );
    for path in ["/v1/heartbeat", "/v1/events", "/v1/openapi.json"] {
        let r = stranger
            .request("GET", path, &[], Vec::new())
            .await
            .expect("get");
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.error().code, ErrorCode::PermissionDenied);
    }
}

/// A bad request: command, extra headers, body, and the status and code it gets.
type BadCase = (
    &'static str,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    ErrorCode,
);

/// Checks that `r`'s body is a JSON `{"error": {...}}` with `code`, read
/// as JSON whatever its content type says.
fn assert_json_error(r: &HttpReply, code: ErrorCode) {
    match serde_json::from_slice::<Reply<serde::de::IgnoredAny>>(&r.body) {
        Ok(Reply::Error(e)) => assert_eq!(e.code, code, "{}", r.text()),
        other => panic!("not a JSON error ({other:?}): {:?}", r.text()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_structured_errors_with_fitting_statuses_and_the_agent_goes_on() {
    let (mut agent, peer, _dir) = offline_agent("bad1", None).await;
    let json = [("content-type", "application/json")];
    let cases: Vec<BadCase> = vec![
        (
            "vm.start",
            vec![],
            b"{not json".to_vec(),
            400,
            ErrorCode::MalformedMessage,
        ),
        (
            "vm.start",
            vec![],
            b"{\"uuid\": 7}".to_vec(),
            400,
            ErrorCode::MalformedMessage,
        ),
        (
            "vm.define",
            vec![],
            br#"{"spec":{"name":"","memory_kib":0,"vcpus":0}}"#.to_vec(),
            400,
            ErrorCode::InvalidArgument,
        ),
        // Structs are maps, never positional arrays (docs/protocol.md §4.2).
        (
            "vm.start",
            vec![],
            br#"["6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001", false]"#.to_vec(),
            400,
            ErrorCode::MalformedMessage,
        ),
        (
            "host.ping",
            vec![],
            b"[]".to_vec(),
            400,
            ErrorCode::MalformedMessage,
        ),
        (
            "no.such",
            vec![],
            b"{}".to_vec(),
            404,
            ErrorCode::UnknownCommand,
        ),
        (
            "host.ping",
            vec![("x-hostbus-command-id", "zzz".into())],
            b"{}".to_vec(),
            400,
            ErrorCode::BadEnvelope,
        ),
        (
            "host.ping",
            vec![("x-hostbus-deadline", (now_ms() - 1000).to_string())],
            b"{}".to_vec(),
            408,
            ErrorCode::Expired,
        ),
        (
            "host.ping",
            vec![("x-hostbus-deadline", "soon".into())],
            b"{}".to_vec(),
            400,
            ErrorCode::BadEnvelope,
        ),
        (
            "host.ping",
            vec![("x-hostbus-version", "9.0".into())],
            b"{}".to_vec(),
            400,
            ErrorCode::UnsupportedVersion,
        ),
        (
            "host.ping",
            vec![("x-hostbus-async", "maybe".into())],
            b"{}".to_vec(),
            400,
            ErrorCode::BadEnvelope,
        ),
        (
            "host.ping",
            vec![],
            vec![b' '; 5 << 20],
            413,
            ErrorCode::PayloadTooLarge,
        ),
    ];
    for (command, extra, body, status, code) in cases {
        let mut headers: Vec<(&str, &str)> = json.to_vec();
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let r = peer
            .request("POST", &format!("/v1/commands/{command}"), &headers, body)
            .await
            .expect("request");
        assert_eq!(
            (r.status, r.error().code),
            (status, code),
            "{command} {extra:?}: {}",
            r.text()
        );
        assert_eq!(r.header(STATUS_HEADER), Some("error"));
    }
    let r = peer
        .request(
            "POST",
            "/v1/commands/host.ping",
            &[("content-type", "text/plain")],
            b"hi".to_vec(),
        )
        .await
        .expect("request");
    assert_eq!(
        (r.status, r.error().code),
        (415, ErrorCode::UnsupportedContentType)
    );
    // A client that could not speak the request's encoding can read this,
    // whatever the type it sent: a refusal made before the request's
    // encoding is known is JSON (docs/http.md).
    for ct in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "application/json, text/plain",
    ] {
        let r = peer
            .request(
                "POST",
                "/v1/commands/host.ping",
                &[("content-type", ct)],
                b"hi".to_vec(),
            )
            .await
            .expect("request");
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{ct}");
        assert_json_error(&r, ErrorCode::UnsupportedContentType);
    }
    // A wrong path or method is refused in JSON even when the request was
    // MessagePack; a command name the catalogue lacks, in the request's.
    let msgpack = [("content-type", "application/msgpack")];
    for (method, path, status, code) in [
        ("POST", "/nowhere", 404, ErrorCode::UnknownCommand),
        ("PUT", "/v1/commands/host.ping", 405, ErrorCode::BadEnvelope),
    ] {
        let r = peer
            .request(method, path, &msgpack, vec![0x80])
            .await
            .expect("request");
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_json_error(&r, code);
    }
    let r = peer
        .request("POST", "/v1/commands/no.such", &msgpack, vec![0x80])
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/msgpack"));
    // The reply is in the request's content type, also for an empty body;
    // without a content type (or with an empty one) the request is JSON.
    let r = peer
        .request("POST", "/v1/commands/host.ping", &msgpack, Vec::new())
        .await
        .expect("request");
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/msgpack"))
    );
    for headers in [vec![], vec![("content-type", "")]] {
        let r = peer
            .request("POST", "/v1/commands/host.ping", &headers, b"{}".to_vec())
            .await
            .expect("request");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("application/json")),
            "{headers:?}: {}",
            r.text()
        );
    }
    let r = peer
        .request("GET", "/nowhere", &[], Vec::new())
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    // A refused method or path with a body keeps the connection: before,
    // the unread body made the server close it, and a client reusing it
    // met a reset (schemathesis reported "EOF in violation of protocol").
    let body = vec![b'a'; 100_000];
    let (a, b) = peer
        .on_one_connection(
            ("PUT", "/v1/commands/host.ping", body.clone()),
            ("POST", "/nowhere", body),
        )
        .await
        .expect("two requests on one connection");
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    assert_eq!((b.status, b.error().code), (404, ErrorCode::UnknownCommand));
    // A read asked to run as a task runs now; a change runs as a task.
    let (r, reply) = peer
        .call::<HostPing>(
            &Ping {
                echo: Some("x".into()),
            },
            ContentType::Json,
            &[("x-hostbus-async", "true")],
        )
        .await;
    assert!(
        matches!(reply, Reply::Ok(ref p) if p.echo.as_deref() == Some("x")),
        "{}",
        r.text()
    );
    let (r, reply) = peer
        .call::<VmDefine>(
            &define("as-task"),
            ContentType::Json,
            &[("x-hostbus-async", "true")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(matches!(reply, Reply::Task(_)), "{reply:?}");
    assert!(agent.is_running(), "{}", agent.log_tail(30));
    let (r, _) = peer
        .call::<HostPing>(&Ping { echo: None }, ContentType::MsgPack, &[])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_admits_only_certificates_of_its_ca_with_their_cn_s_role() {
    let pki = Pki::make();
    pki.client("manager", "manager", "0x1003");
    pki.client("dash", "dash", "0x1004");
    let mut tls = pki.http_agent("tls1", "manager=admin,dash=read-only");
    let curl = |cert: Option<&str>, command: &str| pki.curl(tls.port, cert, command);
    let (ok, out) = curl(Some("manager"), "host.ping");
    assert!(
        ok && out.ends_with("\n200") && out.contains("\"tls1\""),
        "{out}"
    );
    let (ok, out) = curl(Some("dash"), "vm.list");
    assert!(ok && out.ends_with("\n200"), "{out}");
    let (ok, out) = curl(Some("dash"), "vm.define");
    assert!(
        ok && out.ends_with("\n403") && out.contains("PERMISSION_DENIED"),
        "{out}"
    );
    let (ok, out) = curl(Some("client"), "host.ping");
    assert!(
        ok && out.ends_with("\n403") && out.contains("has no role"),
        "CN guest has no role: {out}"
    );
    let (ok, out) = curl(None, "host.ping");
    assert!(!ok, "no certificate, no connection: {out}");
    let (ok, out) = curl(Some("stranger"), "host.ping");
    assert!(!ok, "a certificate of another CA is refused: {out}");
    assert!(tls.agent.is_running(), "{}", tls.agent.log_tail(30));
}

/// SIGTERM while an HTTP command runs: the command finishes and is
/// answered, later ones are refused HOST_UNAVAILABLE, the agent exits 0
/// and removes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_finishes_the_http_commands_it_runs() {
    let dir = scratch("hostbus-http-stop");
    let (b, socket) = with_socket(
        AgentProcess::builder("stop1", NO_BROKER).env("HOSTBUS_STEP_PAUSE_MS", "400"),
        dir.path(),
    );
    let mut agent = b.spawn().expect("agent");
    let peer = HttpPeer::wait(&socket, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    // A define with a new disk takes several paused steps.
    let slow = VmDefineRequest {
        spec: small_vm("slow", &["vda"]),
    };
    let running = {
        let peer = peer.clone();
        tokio::spawn(async move { peer.call::<VmDefine>(&slow, ContentType::Json, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| agent.terminate()).expect("SIGTERM");
    let (r, reply) = running.await.expect("the call");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), agent.log_tail(30));
    assert!(
        matches!(reply, Reply::Ok(ref vm) if vm.name == "slow"),
        "{reply:?}"
    );
    let status = tokio::task::block_in_place(|| agent.wait_exit(T)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", agent.log_tail(30));
    assert!(!socket.exists(), "the socket is removed");
}
