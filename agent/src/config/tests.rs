//! Tests of the layered configuration.

use std::net::SocketAddr;

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

/// Every setting reads back the text of its default, from its
/// environment variable and from its flag, to the same configuration: each
/// variable and flag is the setting's, and each type reads what it shows.
#[test]
fn every_default_reads_back_from_its_variable_and_its_flag() {
    let defaults = Config::load(&Flags::default(), &env(&[])).expect("defaults");
    let texts: Vec<(&SettingInfo, String)> = SETTINGS
        .iter()
        .filter_map(|s| (s.default)().map(|text| (s, text)))
        .collect();
    assert!(texts.len() > 30, "most settings have a default");
    let vars: Vec<(String, &str)> = texts.iter().map(|(s, t)| (s.env(), t.as_str())).collect();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let from_env = Config::load(&Flags::default(), &env(&pairs)).expect("every variable");
    assert_eq!(format!("{from_env:?}"), format!("{defaults:?}"));
    let mut args = Vec::new();
    for (s, text) in &texts {
        if let Some(flag) = s.flag {
            args.push(format!("--{flag}"));
            args.push(text.clone());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(args.len() >= 20, "{args:?}");
    let from_flags = Config::load(&flags(&args), &env(&[])).expect("every flag");
    assert_eq!(format!("{from_flags:?}"), format!("{defaults:?}"));
}

#[test]
fn values_are_typed_at_load_from_every_layer() {
    let file = config_file(
        "typed",
        "metrics_addr = \"off\"\nhttp_socket_mode = \"0600\"\nlog_format = \"json\"\n\
         declare_exchanges = false\nconsole_log_dir = \"off\"\nqueue_type = \"classic\"\n\
         http_socket_owner = \"0:27\"\n[roles]\nalice = \"operator\"\n\
         [http_peer_roles]\n\"uid:1000\" = \"admin\"\n",
    );
    let path = file.to_str().expect("utf-8");
    let c = Config::load(&flags(&["--config", path]), &env(&[])).expect("file");
    assert_eq!(c.metrics_addr, None, "`off` is no endpoint");
    assert_eq!(c.http_socket_mode, FileMode(0o600));
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(!c.declare_exchanges);
    assert_eq!(c.console_log_dir, None);
    assert_eq!(c.queue_type, QueueType::Classic);
    assert_eq!(c.http_socket_owner, Some((0, Some(27))));
    assert_eq!(
        c.roles,
        BTreeMap::from([("alice".to_owned(), Role::Operator)]),
        "a [roles] table replaces the default guest"
    );
    assert_eq!(c.http_peer_roles.role(1000, 0), Some(Role::Admin));
    let c = Config::load(
        &flags(&["--config", path, "--metrics-addr", "0.0.0.0:9999"]),
        &env(&[
            ("HOSTBUS_METRICS_ADDR", "127.0.0.1:9188"),
            ("HOSTBUS_HTTP_SOCKET_MODE", "0o640"),
            ("HOSTBUS_ROLES", "bob=read-only, alice=admin"),
            ("HOSTBUS_HTTP_PEER_ROLES", "gid:27=operator"),
        ]),
    )
    .expect("all layers");
    assert_eq!(c.metrics_addr, Some(SocketAddr::from(([0, 0, 0, 0], 9999))));
    assert_eq!(c.http_socket_mode, FileMode(0o640));
    assert_eq!(
        c.roles,
        BTreeMap::from([
            ("alice".to_owned(), Role::Admin),
            ("bob".to_owned(), Role::ReadOnly)
        ]),
        "the environment's roles add to the file's, and win"
    );
    assert_eq!(
        (
            c.http_peer_roles.role(1000, 27),
            c.http_peer_roles.role(1, 27)
        ),
        (Some(Role::Admin), Some(Role::Operator))
    );
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn the_guest_is_an_admin_only_when_no_roles_are_given() {
    let guest = BTreeMap::from([("guest".to_owned(), Role::Admin)]);
    let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
    assert_eq!(c.roles, guest);
    let c = Config::load(
        &Flags::default(),
        &env(&[("HOSTBUS_ROLES", "ops=operator")]),
    )
    .expect("roles");
    assert_eq!(
        c.roles,
        BTreeMap::from([("ops".to_owned(), Role::Operator)])
    );
    let c = Config::load(&Flags::default(), &env(&[("HOSTBUS_ROLES", "")])).expect("none");
    assert!(c.roles.is_empty(), "an empty list gives no one a role");
    for bad in ["ops", "ops=root"] {
        let e = Config::load(&Flags::default(), &env(&[("HOSTBUS_ROLES", bad)]))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("`roles`") && e.contains("HOSTBUS_ROLES"), "{e}");
    }
}

#[test]
fn a_bad_value_names_the_setting_and_the_layer_it_came_from() {
    let file = config_file("bad", "");
    let path = file.to_str().expect("utf-8");
    // (file text, flags, what the message names)
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "concurrency = \"many\"\n",
            &["--config", path],
            &["`concurrency`", path],
        ),
        (
            "",
            &["--concurrency", "many"],
            &["`concurrency`", "--concurrency"],
        ),
        (
            "",
            &["--metrics-addr", "nowhere"],
            &["`metrics_addr`", "or `off`"],
        ),
        (
            "roles = \"guest=admin\"\n",
            &["--config", path],
            &["`roles`", "table"],
        ),
        (
            "host_id = [\"h1\"]\n",
            &["--config", path],
            &["`host_id`", "array"],
        ),
    ];
    for (text, args, names) in cases {
        std::fs::write(&file, text).expect("write");
        let e = Config::load(&flags(args), &env(&[]))
            .expect_err("a bad value")
            .to_string();
        assert!(names.iter().all(|n| e.contains(n)), "{names:?} in {e}");
    }
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn the_simulator_flags_are_no_settings_and_still_parse() {
    let f = flags(&["--simulate", "3", "--host-prefix", "lab-"]);
    assert_eq!((f.simulate, f.host_prefix.as_str()), (Some(3), "lab-"));
    assert_eq!(flags(&["--simulate", "2"]).host_prefix, "sim-");
    assert!(
        Flags::try_parse_from(["hostbus-agent", "--host-prefix", "x-"]).is_err(),
        "--host-prefix needs --simulate"
    );
    assert!(
        !SETTINGS
            .iter()
            .any(|s| ["simulate", "host_prefix", "config"].contains(&s.name)),
        "no setting shadows them"
    );
}
