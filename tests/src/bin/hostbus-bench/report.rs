//! Reporting: table rows, process memory, the machine, and the sections
//! of `docs/performance.md`.

use crate::measure::Run;

pub(crate) const HEADER: &str = "| concurrency | path | calls/s | p50 ms | p99 ms | of raw | broker µs | agent µs | client µs |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|";

/// One table row: rate, latency, share of `base` and CPU per call.
pub(crate) fn row(c: &str, name: &str, r: &Run, base: f64) -> String {
    let [b, ag, cl] = r.cpu_per_call();
    format!(
        "| {c} | {name:<28} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5.0}% | {b:>6.0} | {ag:>6.0} | {cl:>6.0} |",
        r.rate(),
        r.pct(0.5),
        r.pct(0.99),
        100.0 * r.rate() / base
    )
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set (high-water mark) of a process.
pub(crate) fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A report's opening paragraph: the machine it ran on, then `setup` (what
/// ran, and how it was measured).
pub(crate) fn preamble(setup: std::fmt::Arguments<'_>) -> String {
    format!("Machine: {}. {setup}\n\n", machine())
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(String::new(), |k| {
            format!("{:.0} GiB", k as f64 / 1_048_576.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rabbit = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} memory, Linux {}, RabbitMQ {rabbit}, release build",
        kernel.trim()
    )
}

/// Appends a markdown table to `out`: `header` (its title and rule lines),
/// then `rows`, one a line.
pub(crate) fn table(out: &mut String, header: &str, rows: &[String]) {
    out.push_str(header);
    out.push('\n');
    for row in rows {
        out.push_str(row);
        out.push('\n');
    }
}

/// Builds binary `bin` of package `package` in release mode; its path in
/// the target folder (`CARGO_TARGET_DIR`, else the workspace's `target`).
pub(crate) fn release_build(package: &str, bin: &str) -> std::path::PathBuf {
    let status = hostbus_tests::cargo()
        .args(["build", "--release", "-q", "-p", package, "--bin", bin])
        .current_dir(hostbus_tests::workspace_dir())
        .status()
        .expect("cargo");
    assert!(status.success(), "cannot build the release {bin}");
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || hostbus_tests::workspace_dir().join("target"),
            std::path::PathBuf::from,
        )
        .join("release")
        .join(bin)
}

/// Builds the release `hostctl` next to the release agent; its path.
pub(crate) fn release_hostctl() -> std::path::PathBuf {
    release_build("hostctl", "hostctl")
}

/// Replaces the part of docs/performance.md between
/// `<!-- {section}:begin -->` and `<!-- {section}:end -->` with `text`
/// (appends the part when it is not there yet).
pub(crate) fn write_section(section: &str, text: &str) {
    let path = hostbus_tests::workspace_dir().join("docs/performance.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        format!("<!-- {section}:begin -->"),
        format!("<!-- {section}:end -->"),
    );
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{begin}\n{text}{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{begin}\n{text}{end}\n"),
    };
    std::fs::write(&path, new).expect("write docs/performance.md");
    eprintln!(
        "hostbus-bench: wrote the {section} section of {}",
        path.display()
    );
}
