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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostbus_protocol::names;
use hostbus_tests::{workspace_dir, AgentProcess, AmqpPeer, RabbitNode, TempDir};

/// The heading of the section whose Python block is run.
const SECTION: &str = "## 12. Worked example (Python, pika + msgpack)";
/// The VM libvirt's `test:///default` driver starts with.
const TEST_VM: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";
/// The longest the example may take.
const LIMIT: Duration = Duration::from_secs(60);

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
    let mut cmd = Command::new(python());
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
