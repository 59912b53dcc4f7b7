//! Settings hostctl cannot use are usage errors (exit 2) naming where they
//! came from, never silently replaced by a default: a mistyped timeout, an
//! unknown output format, a config file that is not there.

use std::process::{Command, Output};

/// hostctl with a clean environment plus `env`, against a port where
/// nothing listens (a setting it accepts gets as far as exit 5).
fn hostctl(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostctl"));
    for var in [
        "HOSTBUS_URL",
        "HOSTBUS_SOCKET",
        "HOSTBUS_TIMEOUT_MS",
        "HOSTBUS_OUTPUT",
        "HOSTCTL_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", "/nonexistent")
        .env("HOSTBUS_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("hostctl")
}

fn refused(env: &[(&str, &str)], args: &[&str], names: &str) {
    let out = hostctl(env, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {stderr}");
    assert!(stderr.contains(names), "{env:?} {args:?}: {stderr}");
}

#[test]
fn settings_it_cannot_use_are_usage_errors() {
    refused(
        &[("HOSTBUS_TIMEOUT_MS", "abc")],
        &["ping", "h1"],
        "HOSTBUS_TIMEOUT_MS=abc",
    );
    refused(
        &[("HOSTBUS_OUTPUT", "yaml")],
        &["ping", "h1"],
        "HOSTBUS_OUTPUT=yaml",
    );
    refused(
        &[],
        &["--config", "/nonexistent/prod.toml", "ping", "h1"],
        "/nonexistent/prod.toml",
    );
    refused(
        &[("HOSTCTL_CONFIG", "/nonexistent/prod.toml")],
        &["ping", "h1"],
        "/nonexistent/prod.toml",
    );
    // Accepted values get as far as the (absent) broker.
    let ok = [("HOSTBUS_TIMEOUT_MS", "2000"), ("HOSTBUS_OUTPUT", "json")];
    let out = hostctl(&ok, &["ping", "h1"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No config file at the default path is an empty configuration, and
    // an empty variable is an unset one.
    assert_eq!(hostctl(&[], &["ping", "h1"]).status.code(), Some(5));
    let empty = [
        ("HOSTBUS_TIMEOUT_MS", ""),
        ("HOSTBUS_OUTPUT", ""),
        ("HOSTCTL_CONFIG", ""),
    ];
    assert_eq!(hostctl(&empty, &["ping", "h1"]).status.code(), Some(5));
}
