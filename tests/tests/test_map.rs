//! TESTS.md maps each behaviour users rely on to the tests that show it,
//! as `file::test_name` entries. This suite keeps the map true: every
//! entry must name a test that exists in that file.

use std::path::{Path, PathBuf};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `` `file.rs::test_name` `` the map names, in order.
fn entries(map: &str) -> Vec<(String, String)> {
    map.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let (file, name) = span.split_once(".rs::")?;
            let ident =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ident.then(|| (format!("{file}.rs"), name.to_owned()))
        })
        .collect()
}

/// Whether `source` has a test function `name`: `fn name(` under a
/// `#[test]` or `#[tokio::test(..)]` attribute (doc comments and other
/// attributes may stand between them).
fn has_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    let signature = format!("fn {name}(");
    lines.iter().enumerate().any(|(i, line)| {
        let declares = line.starts_with(&signature)
            || line
                .split_once(" fn ")
                .is_some_and(|(_, rest)| format!("fn {rest}").starts_with(&signature));
        declares
            && lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
                .any(|l| l.starts_with("#[test]") || l.starts_with("#[tokio::test"))
    })
}

#[test]
fn every_test_the_map_names_exists() {
    let map = std::fs::read_to_string(root().join("TESTS.md")).expect("TESTS.md at the root");
    let entries = entries(&map);
    // The map names well over a hundred tests: far fewer means the entries
    // are no longer read (a changed format), not that tests went away.
    assert!(
        entries.len() >= 100,
        "only {} `file.rs::test_name` entries read from TESTS.md",
        entries.len()
    );
    let mut missing = Vec::new();
    for (file, name) in &entries {
        match std::fs::read_to_string(root().join(file)) {
            Ok(source) if has_test(&source, name) => {}
            Ok(_) => missing.push(format!("{file}::{name}: no test of that name in the file")),
            Err(e) => missing.push(format!("{file}::{name}: {e}")),
        }
    }
    assert!(
        missing.is_empty(),
        "TESTS.md names tests that do not exist (rename or remove the entries):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_reader_finds_tests_and_only_tests() {
    let source = "\
#[test]
fn plain() {}

/// Documented.
#[tokio::test(flavor = \"multi_thread\", worker_threads = 2)]
async fn asynchronous() {}

fn helper() {}
";
    assert!(has_test(source, "plain"));
    assert!(has_test(source, "asynchronous"));
    assert!(!has_test(source, "helper"), "a helper is not a test");
    assert!(!has_test(source, "plai"), "names match whole");
    let map = "* `a/b.rs::one`: x; `not an entry`, `c.rs::two`.";
    assert_eq!(
        entries(map),
        [
            ("a/b.rs".to_owned(), "one".to_owned()),
            ("c.rs".to_owned(), "two".to_owned())
        ]
    );
}
