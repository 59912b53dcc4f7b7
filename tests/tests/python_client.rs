//! The worked example of docs/protocol.md §12 runs as printed: this test
//! takes the ```` ```python ```` block of that section out of the document,
//! unchanged, and runs it with Debian's Python (`python3-pika`,
//! `python3-msgpack`, installed by `scripts/test`) against a private
//! RabbitMQ node and an agent on libvirt's test driver (`test:///default`,
//! one running VM named `test`). The example is configured only through
//! the environment variables it documents (`HOSTBUS_URL`, `HOSTBUS_HOST`),
//! and the test checks what it prints: the ping's answer, the VM list with
//! the VM's uuid as a string, the VM read by uuid, and the typed error of
//! starting a VM that runs. A third party copying the example gets a
//! client that works, or this test fails.
//!
//! The second test checks, with a plain lapin peer, the statements that
//! such a client found missing from the contract (issue 16): the AMQP
//! properties of events, heartbeats and announcements (§10.1), which
//! commands become tasks and what a task names (§7.4), the reply to a
//! command without `type` (§3.2), dead letters (§3.3), and §2's table of
//! declarations, which it reads from the document and repeats on the
//! broker.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hostbus_protocol::commands::{
    Command, Empty, HostPing, Message, Ping, Pong, TaskGet, TaskId, VmDefine, VmDefineRequest,
};
use hostbus_protocol::envelope::{HOST_HEADER, STATUS_HEADER, VERSION_HEADER};
use hostbus_protocol::names::{self, host_key};
use hostbus_protocol::types::{
    ObjectClass, ObjectRef, Record, TaskRecord, TaskStatus, VmRecord, VmSpec,
};
use hostbus_protocol::{
    decode, encode, now_ms, AmqpProperties, ContentType, Envelope, ErrorCode, HeaderValue, Reply,
};
use hostbus_tests::{workspace_dir, AgentProcess, AmqpPeer, RabbitNode, Received, TempDir};
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use uuid::Uuid;

/// The heading of the section whose Python block is run.
const SECTION: &str = "## 12. Worked example (Python, pika + msgpack)";
/// The VM libvirt's `test:///default` driver starts with.
const TEST_VM: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";
/// The longest the example may take.
const LIMIT: Duration = Duration::from_secs(60);
/// The longest a reply may take.
const T: Duration = Duration::from_secs(15);

/// The first ```` ```python ```` block of §12 of docs/protocol.md, verbatim.
fn worked_example() -> String {
    let path = workspace_dir().join("docs/protocol.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != SECTION);
    assert!(
        lines.next().is_some(),
        "docs/protocol.md has no {SECTION:?}"
    );
    let block: Vec<&str> = lines
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| l.trim_end() != "```python")
        .skip(1)
        .take_while(|l| l.trim_end() != "```")
        .collect();
    assert!(
        block.len() > 10,
        "§12 of docs/protocol.md has no ```python block"
    );
    block.join("\n") + "\n"
}

/// Debian's interpreter, where `python3-pika` and `python3-msgpack` are
/// installed (a `python3` earlier on `PATH`, e.g. pyenv's, would not see
/// them); `HOSTBUS_TEST_PYTHON` names another.
fn python() -> PathBuf {
    std::env::var_os("HOSTBUS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let debian = Path::new("/usr/bin/python3");
            if debian.exists() {
                debian.to_owned()
            } else {
                PathBuf::from("python3")
            }
        })
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `script` with `env`, killing it after [`LIMIT`].
fn run_python(script: &Path, env: &[(&str, String)]) -> Run {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    // Read both pipes on their own threads so neither can fill up.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        success: status.is_some_and(|s| s.success()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader")
            + &status.map_or_else(|| format!("\n(killed after {LIMIT:?})"), |_| String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_of_protocol_md_runs_as_printed() {
    let script_text = worked_example();
    let node = RabbitNode::start().expect("rabbit");
    let peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut online = peer
        .subscribe(names::EVENT_EXCHANGE, "h1.agent.online")
        .await
        .expect("subscribe");
    let mut agent = AgentProcess::builder("h1", &node.amqp_url())
        .libvirt_uri("test:///default")
        .spawn()
        .expect("agent");
    online
        .next(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("agent online: {e}\n{}", agent.log_tail(40)));

    let dir = TempDir::new("hostbus-python-client").expect("temp dir");
    let script = dir.join("worked_example.py");
    std::fs::write(&script, &script_text).expect("write the example");
    let run = tokio::task::block_in_place(|| {
        run_python(
            &script,
            &[
                ("HOSTBUS_URL", node.amqp_url()),
                ("HOSTBUS_HOST", "h1".to_owned()),
            ],
        )
    });
    let report = format!(
        "the example of docs/protocol.md §12 printed:\n{}\nstderr:\n{}\nagent log:\n{}",
        run.stdout,
        run.stderr,
        agent.log_tail(20)
    );
    assert!(run.success, "it failed; {report}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("pong from h1: hello"),
        "{report}"
    );
    assert!(
        lines.contains(&format!("vm {TEST_VM} test running").as_str()),
        "the VM list with string uuids; {report}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("test: ") && l.contains(" vCPUs, ") && l.contains("pause")),
        "vm.get by a string uuid; {report}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("vm.start refused: VM_BAD_POWER_STATE (test is running)"),
        "{report}"
    );
    assert!(agent.is_running(), "{report}");
}

/// Properties of a command from `guest` (the agent's default admin), as
/// §3.1 describes them.
fn command(name: &str, asynchronous: bool) -> AmqpProperties {
    let mut env = Envelope::new(name);
    env.sender = Some("guest".into());
    env.deadline = Some(now_ms() + 30_000);
    env.asynchronous = asynchronous;
    env.to_properties(now_ms())
}

/// Calls agent `h1` and waits for the reply; `what` names the call when
/// none comes.
async fn call_h1(peer: &mut AmqpPeer, props: &AmqpProperties, body: &[u8], what: &str) -> Received {
    peer.call(&host_key("h1"), props, body, T)
        .await
        .expect(what)
}

fn reply<T: Message>(r: &Received) -> Reply<T> {
    decode(ContentType::MsgPack, &r.body, 16 << 20).expect("a MessagePack reply")
}

/// The AMQP reply code of a failed declaration.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}

/// One row of §2's "declared as" table: the objects it names and how.
#[derive(Debug)]
struct Declaration {
    names: Vec<String>,
    /// `Some(kind)` for an exchange.
    exchange: Option<String>,
    /// `x-...=value` arguments of a queue or stream.
    args: Vec<(String, String)>,
}

/// The code spans of a markdown cell.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// §2's table of declarations, as docs/protocol.md states them.
fn documented_declarations() -> Vec<Declaration> {
    let doc = std::fs::read_to_string(workspace_dir().join("docs/protocol.md")).expect("doc");
    let rows: Vec<Declaration> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| object | declared as |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let how = cells[1];
            let exchange = how.starts_with("`exchange.declare`").then(|| {
                let kind = how.split("type `").nth(1).expect("an exchange type");
                kind.split('`').next().expect("type").to_owned()
            });
            let args = spans(how)
                .into_iter()
                .filter(|s| s.starts_with("x-"))
                .map(|s| {
                    let (k, v) = s.split_once('=').expect("x-name=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            Declaration {
                names: spans(cells[0]).into_iter().map(str::to_owned).collect(),
                exchange,
                args,
            }
        })
        .collect();
    assert!(rows.len() >= 7, "§2 has no table of declarations: {rows:?}");
    rows
}

/// `x-...` arguments as the agent sends them: integers as signed 64-bit,
/// the rest as long strings.
fn field_table(args: &[(String, String)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(v.as_bytes().into()),
        };
        t.insert(k.as_str().into(), value);
    }
    t
}

/// The contract's statements that a client written from docs/protocol.md
/// alone found missing (issue 16), checked against a real agent: events and
/// heartbeats carry the properties of §10.1; a read ignores
/// `x-hostbus-async`, a change becomes a task whose id is the command's
/// `message_id` and, for `vm.define`, whose object is the VM's name (§7.4);
/// a command without `type` is answered with `type` `invalid` (§3.2); what
/// is and is not dead-lettered, with which headers (§3.3); and §2's
/// declarations, repeated by a client, are accepted by the broker, while a
/// non-durable `hostbus.evt` is refused with 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_a_third_party_client_relies_on_holds() {
    let node = RabbitNode::start_private().expect("rabbit");
    let mut peer = AmqpPeer::connect(&node.amqp_url()).await.expect("peer");
    let mut events = peer
        .subscribe(names::EVENT_EXCHANGE, "h1.#")
        .await
        .expect("subscribe events");
    let mut presence = peer
        .subscribe(names::PRESENCE_EXCHANGE, "h1.*")
        .await
        .expect("subscribe presence");
    // The agent logs in as itself, as in production, not as its callers
    // (a dead letter's copy must not carry their `user_id`, which the
    // broker would refuse from the agent's login).
    node.add_user("hostbus-agent", "hostbus-agent")
        .expect("the agent's login");
    let agent = AgentProcess::builder("h1", &node.url_for("hostbus-agent", "hostbus-agent"))
        .libvirt_uri("test:///default")
        .heartbeat_interval(Duration::from_secs(1))
        .spawn()
        .expect("agent");
    let log = || agent.log_tail(30);

    // §10.1: events, heartbeats and announcements carry these properties.
    let online = events
        .next(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("agent.online: {e}\n{}", log()));
    let mut beat = None;
    let mut announcement = None;
    while beat.is_none() || announcement.is_none() {
        let m = presence
            .next(Duration::from_secs(30))
            .await
            .expect("presence");
        match m.routing_key.as_str() {
            "h1.heartbeat" => beat = Some(m),
            "h1.online" => announcement = Some(m),
            _ => {}
        }
    }
    for (m, kind, expiration) in [
        (&online, "agent.online", None),
        (beat.as_ref().expect("beat"), "heartbeat", Some("3000")),
        (
            announcement.as_ref().expect("announcement"),
            "announcement",
            None,
        ),
    ] {
        let p = &m.properties;
        let what = format!("{kind}: {p:?}");
        assert_eq!(p.kind.as_deref(), Some(kind), "{what}");
        assert!(
            p.message_id
                .as_deref()
                .is_some_and(|id| id.parse::<Uuid>().is_ok()),
            "{what}"
        );
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/msgpack"),
            "{what}"
        );
        assert!(
            p.timestamp
                .is_some_and(|t| t.abs_diff(now_ms() / 1000) < 120),
            "{what}"
        );
        assert_eq!(p.delivery_mode, Some(2), "{what}");
        assert_eq!(p.expiration.as_deref(), expiration, "{what}");
        assert_eq!(m.header_str(VERSION_HEADER), Some("1.1"), "{what}");
        assert_eq!(m.header_str(HOST_HEADER), Some("h1"), "{what}");
        assert!(
            p.correlation_id.is_none() && p.reply_to.is_none() && p.user_id.is_none(),
            "{what}"
        );
    }

    // §7.4: a read ignores x-hostbus-async and answers at once.
    let body = encode(ContentType::MsgPack, &Ping { echo: None }).expect("encode");
    let r = call_h1(
        &mut peer,
        &command(HostPing::NAME, true),
        &body,
        "async ping",
    )
    .await;
    assert_eq!(r.header_str(STATUS_HEADER), Some("ok"));
    assert!(matches!(reply::<Pong>(&r), Reply::Ok(p) if p.host_id == "h1"));

    // §7.4: a change becomes a task; its id is the message_id, a
    // vm.define task names the VM by name, the uuid comes in the result.
    let p = command(VmDefine::NAME, true);
    let spec = VmSpec::new("py01", 65_536, 1);
    let body = encode(ContentType::MsgPack, &VmDefineRequest { spec }).expect("encode");
    let r = call_h1(&mut peer, &p, &body, "async define").await;
    assert_eq!(r.header_str(STATUS_HEADER), Some("task"));
    let Reply::Task(task) = reply::<VmRecord>(&r) else {
        panic!("not a task: {r:?}\n{}", log());
    };
    assert_eq!(
        Some(task.id.to_string()),
        p.message_id,
        "task id = message_id"
    );
    let by_name = ObjectRef {
        class: ObjectClass::Vm,
        id: "py01".into(),
    };
    assert_eq!(task.object.as_ref(), Some(&by_name));
    assert!(task.progress <= 100);
    let started = Instant::now();
    let done = loop {
        let body = encode(ContentType::MsgPack, &TaskId { id: task.id }).expect("encode");
        let r = call_h1(&mut peer, &command(TaskGet::NAME, false), &body, "task.get").await;
        let Reply::Ok(t) = reply::<TaskRecord>(&r) else {
            panic!("task.get: {r:?}");
        };
        if t.status.is_final() {
            break t;
        }
        assert!(started.elapsed() < T, "the task never finished: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.status, TaskStatus::Success, "{done:?}\n{}", log());
    assert_eq!(done.progress, 100);
    assert_eq!(done.object.as_ref(), Some(&by_name));
    match &done.result {
        Some(Record::Vm(vm)) => assert_eq!(vm.name, "py01"),
        other => panic!("a vm.define task's result is the VM: {other:?}"),
    }

    // §3.2: a command without `type` is answered with type `invalid`.
    let mut p = command(HostPing::NAME, false);
    p.kind = None;
    let r = match peer.call(&host_key("h1"), &p, b"\x80", T).await {
        Ok(r) => r,
        Err(e) => panic!("no type: {e}\n{}", log()),
    };
    assert_eq!(r.properties.kind.as_deref(), Some("invalid"));
    match reply::<Empty>(&r) {
        Reply::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadEnvelope);
            assert_eq!(e.param("property"), Some("type"));
        }
        other => panic!("{other:?}"),
    }

    // §3.3: an unknown command is dead-lettered; a refused one is not.
    let r = call_h1(
        &mut peer,
        &command("vm.frobnicate", false),
        b"\x80",
        "unknown command",
    )
    .await;
    assert_eq!(r.properties.kind.as_deref(), Some("vm.frobnicate"));
    let mut p = command(HostPing::NAME, false);
    p.user_id = None;
    let r = call_h1(&mut peer, &p, b"\x80", "no user_id").await;
    assert!(matches!(reply::<Empty>(&r), Reply::Error(e) if e.code == ErrorCode::PermissionDenied));
    let mut dead = Vec::new();
    while let Some(m) = peer
        .channel()
        .basic_get(
            names::DEAD_LETTER_QUEUE.into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        dead.push(Received {
            exchange: m.delivery.exchange.as_str().to_owned(),
            routing_key: m.delivery.routing_key.as_str().to_owned(),
            redelivered: m.delivery.redelivered,
            properties: hostbus_tests::from_lapin(&m.delivery.properties),
            body: m.delivery.data,
        });
    }
    let codes: Vec<Option<&str>> = dead
        .iter()
        .map(|m| m.header_str("x-hostbus-dead-code"))
        .collect();
    assert_eq!(
        codes,
        [Some("BAD_ENVELOPE"), Some("UNKNOWN_COMMAND")],
        "{dead:?}"
    );
    for m in &dead {
        assert_eq!(m.exchange, names::DEAD_LETTER_EXCHANGE);
        assert_eq!(m.routing_key, names::agent_queue("h1"));
        assert_eq!(m.header_str("x-hostbus-dead-host"), Some("h1"));
        // The sender's verified login moves to a header: the copy is
        // published by the agent's login.
        assert_eq!(m.properties.user_id, None);
        assert_eq!(m.header_str("x-hostbus-dead-user"), Some("guest"));
        assert!(m.header_str("x-hostbus-dead-reason").is_some());
        assert!(matches!(
            m.properties.headers.get("x-hostbus-dead-at"),
            Some(HeaderValue::Int(t)) if t.unsigned_abs().abs_diff(now_ms()) < 120_000
        ));
    }

    // §2: the read lane takes reads (`read.host.h1`), and refuses a change.
    let r = match peer
        .call(
            &names::Target::Host("h1".into()).read_key(),
            &command(HostPing::NAME, false),
            b"\x80",
            T,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => panic!("a read on the read lane: {e}\n{}", log()),
    };
    assert!(matches!(reply::<Pong>(&r), Reply::Ok(p) if p.host_id == "h1"));
    let r = peer
        .call(
            &names::Target::Host("h1".into()).read_key(),
            &command(VmDefine::NAME, false),
            b"\x80",
            T,
        )
        .await
        .unwrap_or_else(|e| panic!("a change on the read lane: {e}\n{}", log()));
    match reply::<Empty>(&r) {
        Reply::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadEnvelope, "{e:?}");
            assert_eq!(e.param("property"), Some("routing_key"));
        }
        other => panic!("a change on the read lane is refused: {other:?}"),
    }

    // §2: a client repeating the documented declarations is accepted ...
    let conn = peer.connection();
    for d in documented_declarations() {
        for name in &d.names {
            let name = name.replace("<id>", "h1");
            let ch = conn.create_channel().await.expect("channel");
            let declared = match &d.exchange {
                Some(kind) => ch
                    .exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Custom(kind.clone()),
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(drop),
                None => ch
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        field_table(&d.args),
                    )
                    .await
                    .map(drop),
            };
            declared.unwrap_or_else(|e| panic!("§2's declaration of {name} ({d:?}): {e}"));
            let _ = ch.close(200, "ok".into()).await;
        }
    }
    // ... a non-durable hostbus.evt is refused with 406, and a passive
    // declaration tells whether an exchange exists.
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .exchange_declare(
            names::EVENT_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("a non-durable hostbus.evt");
    assert_eq!(reply_code(&e), Some(406), "{e}");
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        names::EVENT_EXCHANGE.into(),
        ExchangeKind::Topic,
        passive,
        FieldTable::default(),
    )
    .await
    .expect("a passive declaration of hostbus.evt");
    let e = ch
        .exchange_declare(
            "hostbus.nothing".into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .expect_err("a passive declaration of nothing");
    assert_eq!(reply_code(&e), Some(404), "{e}");
}
