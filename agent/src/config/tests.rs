//! Tests of the layered configuration.

use super::*;

/// An environment of these variables only.
pub(super) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The flags of this command line, as clap reads them.
pub(super) fn flags(args: &[&str]) -> Flags {
    Flags::try_parse_from(std::iter::once("hostbus-agent").chain(args.iter().copied()))
        .expect("flags")
}

/// A configuration file with `text`, in a directory of its own per test.
fn config_file(test: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hostbus-cfg-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("agent.toml");
    std::fs::write(&file, text).expect("write");
    file
}

#[test]
fn layers_apply_in_order() {
    let file = config_file("layers", "host_id = \"from-file\"\nconcurrency = 3\nlabels = [\"a\", \"b\"]\nheartbeat_interval_ms = 1000\n");
    let c = Config::load(
        &flags(&[
            "--config",
            file.to_str().expect("utf-8"),
            "--concurrency",
            "5",
        ]),
        &env(&[
            ("HOSTBUS_HEARTBEAT_INTERVAL_MS", "2000"),
            ("HOSTBUS_LABELS", "x,y"),
            ("HOSTBUS_TEST_AMQP_URL", "ignored"),
        ]),
    )
    .expect("load");
    assert_eq!(c.host_id, "from-file");
    assert_eq!(c.concurrency, 5, "flags beat the file");
    assert_eq!(c.heartbeat_interval_ms, 2000, "environment beats the file");
    assert_eq!(c.labels, ["x", "y"]);
    assert_eq!(c.libvirt_uri, "qemu:///system", "defaults fill the rest");
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn invalid_values_name_the_field() {
    let bad = |pairs: &[(&str, &str)]| {
        Config::load(&Flags::default(), &env(pairs))
            .expect_err("invalid")
            .to_string()
    };
    assert!(bad(&[("HOSTBUS_HOST_ID", "Bad.Host")]).contains("`host_id`"));
    assert!(bad(&[("HOSTBUS_CONCURRENCY", "0")]).contains("`concurrency`"));
    assert!(bad(&[("HOSTBUS_CONCURRENCY", "many")]).contains("concurrency"));
    assert!(bad(&[("HOSTBUS_BROKER_URLS", "http://x")]).contains("`broker_urls`"));
    assert!(bad(&[("HOSTBUS_LABELS", "ok,Not OK")]).contains("`labels`"));
    assert!(bad(&[("HOSTBUS_LOG_FORMAT", "xml")]).contains("log_format"));
    assert!(bad(&[("HOSTBUS_METRICS_ADDR", "nowhere")]).contains("`metrics_addr`"));
    assert!(bad(&[("HOSTBUS_QUEUE_TYPE", "mirrored")]).contains("queue_type"));
    assert!(bad(&[("HOSTBUS_DOMAIN_TYPE", "xen")]).contains("`domain_type`"));
    assert!(bad(&[("HOSTBUS_CONSOLE_LOG_DIR", "logs")]).contains("`console_log_dir`"));
    assert!(bad(&[("HOSTBUS_AMQP_FRAME_MAX", "1024")]).contains("`amqp_frame_max`"));
}

#[test]
fn lapins_own_events_are_off_unless_the_filter_names_lapin() {
    let level = |l: &str| {
        Config::load(&Flags::default(), &env(&[("HOSTBUS_LOG_LEVEL", l)]))
            .expect("a filter")
            .log_directives()
    };
    assert_eq!(level("info"), "info,lapin=off");
    assert_eq!(level("debug"), "debug,lapin=off");
    assert_eq!(level("lapin=debug,info"), "lapin=debug,info");
}

#[test]
fn the_frame_size_reaches_the_connection_options() {
    let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
    assert_eq!(
        c.connect_options().frame_max,
        None,
        "the broker's by default"
    );
    let c = Config::load(
        &Flags::default(),
        &env(&[("HOSTBUS_AMQP_FRAME_MAX", "16384")]),
    )
    .expect("16 KiB");
    assert_eq!(c.connect_options().frame_max, Some(16_384));
}

#[test]
fn domain_type_comes_from_the_environment_or_a_flag() {
    let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
    assert_eq!(c.domain_type, DomainType::Auto);
    let c = Config::load(&Flags::default(), &env(&[("HOSTBUS_DOMAIN_TYPE", "qemu")])).expect("env");
    assert_eq!(c.domain_type, DomainType::Qemu);
    let c = Config::load(
        &flags(&["--domain-type", "kvm"]),
        &env(&[("HOSTBUS_DOMAIN_TYPE", "qemu")]),
    )
    .expect("flag");
    assert_eq!(c.domain_type, DomainType::Kvm);
    let c = Config::load(
        &Flags::default(),
        &env(&[("HOSTBUS_CONSOLE_LOG_DIR", "off")]),
    )
    .expect("off");
    assert_eq!(c.console_log_dir, None);
}

/// Issue 14: `HOSTBUS_QUEUE_TYPE` was silently ignored; now it is a
/// setting, and a variable that names no setting is refused.
#[test]
fn queue_type_is_a_setting_and_unknown_variables_are_refused() {
    let c = Config::load(
        &Flags::default(),
        &env(&[("HOSTBUS_QUEUE_TYPE", "classic")]),
    )
    .expect("classic");
    assert_eq!(c.queue_type, QueueType::Classic);
    let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
    assert_eq!(c.queue_type, QueueType::Quorum, "quorum by default");
    let err = Config::load(&Flags::default(), &env(&[("HOSTBUS_QUEUE_TYP", "classic")]))
        .expect_err("a typo");
    assert!(err.to_string().contains("HOSTBUS_QUEUE_TYP"), "{err}");
    // Other programs' variables are not the agent's business.
    Config::load(
        &Flags::default(),
        &env(&[
            ("HOSTBUS_URL", "amqp://x"),
            ("HOSTBUS_TEST_AMQP_URL", "amqp://y"),
        ]),
    )
    .expect("foreign variables pass");
}

#[test]
fn unknown_file_fields_are_refused() {
    let file = config_file("unknown", "hots_id = \"typo\"\n");
    let err = Config::load(
        &flags(&["--config", file.to_str().expect("utf-8")]),
        &HashMap::new(),
    )
    .expect_err("typo");
    assert!(err.to_string().contains("hots_id"), "{err}");
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

/// docs/operations.md's settings table is the declarations': a setting
/// added, renamed or given another flag, variable, default or meaning
/// fails here until the table says so. `HOSTBUS_BLESS=1` rewrites it.
#[test]
fn the_operations_guide_lists_every_setting_as_declared() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
    let start = doc
        .find(declare::TABLE_HEADER)
        .expect("the settings table's header");
    let end = doc[start..]
        .find("\n\n")
        .map_or(doc.len(), |n| start + n + 1);
    let table = reference_table();
    if std::env::var_os("HOSTBUS_BLESS").is_some() {
        let blessed = format!("{}{table}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, blessed).expect("write docs/operations.md");
        return;
    }
    assert_eq!(
        doc[start..end],
        table,
        "docs/operations.md's settings table differs from the declarations in agent/src/config.rs; \
         HOSTBUS_BLESS=1 cargo test -p hostbus-agent --lib config rewrites it"
    );
}
