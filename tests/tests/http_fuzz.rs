//! Property-based fuzzing of the HTTP binding from its OpenAPI document
//! (docs/openapi.json) with schemathesis, over the TLS listener with a
//! client certificate: every operation but the endless event stream, with
//! valid and invalid data (schemathesis' coverage and fuzzing phases). It
//! must find no 5xx, no response off its schema, status or content type,
//! and the agent must be up and answering afterwards.
//!
//! schemathesis comes from PyPI: `scripts/test` installs a pinned version
//! into a virtual environment and names it in `HOSTBUS_TEST_SCHEMATHESIS`
//! (or put `schemathesis` on the PATH). `HOSTBUS_TEST_FUZZ_EXAMPLES` and
//! `HOSTBUS_TEST_FUZZ_SEED` change how much and what it tries.

use std::path::PathBuf;
use std::process::Command;

use hostbus_tests::{workspace_dir, Pki};

fn schemathesis() -> PathBuf {
    std::env::var_os("HOSTBUS_TEST_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("schemathesis"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[test]
fn schemathesis_finds_no_server_error_and_no_reply_off_the_schema() {
    let pki = Pki::make();
    pki.client("fuzzer", "fuzzer", "0x1005");
    let f = |n: &str| pki.file(n).display().to_string();
    let mut tls = pki.http_agent("fuzz1", "fuzzer=admin");
    let port = tls.port;
    let spec = workspace_dir().join("docs/openapi.json");
    let bin = schemathesis();
    let out = Command::new(&bin)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("https://127.0.0.1:{port}")])
        .args(["--tls-verify", &f("ca.pem")])
        .args(["--request-cert", &f("fuzzer.pem"), "--request-cert-key", &f("fuzzer.key")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .args(["--exclude-path", "/v1/events"])
        .args(["--max-examples", &env_or("HOSTBUS_TEST_FUZZ_EXAMPLES", "10")])
        .args(["--seed", &env_or("HOSTBUS_TEST_FUZZ_SEED", "20261201")])
        .args(["--request-timeout", "30", "--no-color", "--warnings", "off"])
        .current_dir(pki.file(""))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install it with `pip install schemathesis` or run scripts/test",
                bin.display()
            )
        });
    let report = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = report.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tls.agent.log_tail(40)
    );
    assert!(
        report.contains("passed") && !report.contains("failed"),
        "{}",
        tail.join("\n")
    );
    println!("{}", tail.join("\n"));

    // Still up, still answering, nothing panicked.
    assert!(tls.agent.is_running(), "{}", tls.agent.log_tail(40));
    let (_, body) = pki.curl(port, Some("fuzzer"), "host.ping");
    assert!(body.contains("\"fuzz1\""), "{body}");
    let log = tls.agent.log();
    assert!(!log.contains("panicked"), "{}", tls.agent.log_tail(60));
}
