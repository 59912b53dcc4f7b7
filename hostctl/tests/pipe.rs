//! hostctl's long outputs into a pipe closed early (`hostctl schema |
//! head`): it stops quietly with success, no panic.

use std::io::Read;
use std::process::{Command, Stdio};

fn closed_early(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hostctl"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hostctl");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the start of the output");
    // stdout is dropped here: the pipe is closed with most still unwritten.
    let out = child.wait_with_output().expect("hostctl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
}

#[test]
fn a_closed_pipe_ends_long_outputs_quietly() {
    closed_early(&["schema"]);
    closed_early(&["completions", "bash"]);
}
