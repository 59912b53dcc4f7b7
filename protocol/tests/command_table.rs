//! docs/protocol.md §6 lists every command in a hand-written markdown table
//! (name, access, how it runs, hostctl verb, request type, response type). This test reads that table
//! and compares it with the catalogue (`hostbus_protocol::commands::COMMANDS`),
//! so the document cannot drift from the code: a command added, renamed or
//! retyped in `catalogue!` fails here until its row says the same.
//!
//! Columns are found by their header name, so columns may be added (or
//! reordered) without touching this test. In the request and response
//! cells only the type name is compared: the first word of the cell's first
//! code span (`` `Ping {echo?}` `` is `Ping`); the rest is for readers.

use std::collections::BTreeMap;
use std::path::Path;

use hostbus_protocol::commands::COMMANDS;

/// The heading of the section that holds the table.
const SECTION: &str = "## 6. Command catalogue";

fn protocol_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lines of the section starting at `heading`, up to the next heading
/// of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "docs/protocol.md has no heading {heading:?}"
    );
    lines
        .take_while(|l| !(l.starts_with("## ") || l.starts_with("# ")))
        .collect()
}

/// Splits a markdown table row into trimmed cells; `\|` is a literal bar.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    let mut out = vec![String::new()];
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                out.last_mut().expect("a cell").push('|');
            }
            '|' => out.push(String::new()),
            c => out.last_mut().expect("a cell").push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn is_separator(row: &str) -> bool {
    cells(row)
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

/// One table: its header cells and its rows of cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// The first markdown table of `lines`.
fn first_table(lines: &[&str]) -> Table {
    let start = lines
        .windows(2)
        .position(|w| w[0].trim_start().starts_with('|') && is_separator(w[1]))
        .expect("a markdown table (a header row, then a `|---|` row) in §6");
    let header = cells(lines[start]);
    let rows = lines[start + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| cells(l))
        .collect();
    Table { header, rows }
}

impl Table {
    /// The index of the column whose header is `name`, or starts with it
    /// (`request` finds `request fields`).
    fn column(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .or_else(|| {
                self.header
                    .iter()
                    .position(|h| h.to_ascii_lowercase().starts_with(name))
            })
            .unwrap_or_else(|| panic!("§6's table has no column {name:?}: {:?}", self.header))
    }
}

/// The text of the cell's first code span (`` `x` ``), or the whole cell.
fn code(cell: &str) -> &str {
    let mut parts = cell.splitn(3, '`');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(inner), Some(_)) => inner.trim(),
        _ => cell.trim(),
    }
}

/// The type name a request or response cell starts with.
fn type_name(cell: &str) -> &str {
    let c = code(cell);
    let end = c
        .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .unwrap_or(c.len());
    &c[..end]
}

#[derive(Debug, PartialEq, Eq)]
struct Row {
    access: String,
    runs: String,
    hostctl: String,
    request: String,
    response: String,
}

#[test]
fn the_command_table_in_protocol_md_matches_the_catalogue() {
    let doc = protocol_md();
    let lines = section(&doc, SECTION);
    let table = first_table(&lines);
    let (name, access, runs, hostctl, request, response) = (
        table.column("command"),
        table.column("access"),
        table.column("runs"),
        table.column("hostctl"),
        table.column("request"),
        table.column("response"),
    );

    let mut problems = Vec::new();
    let mut documented: BTreeMap<String, Row> = BTreeMap::new();
    for cells in &table.rows {
        let cell = |i: usize| cells.get(i).map_or("", String::as_str);
        let command = code(cell(name)).to_owned();
        let row = Row {
            access: code(cell(access)).to_owned(),
            runs: cell(runs).to_owned(),
            hostctl: code(cell(hostctl)).to_owned(),
            request: type_name(cell(request)).to_owned(),
            response: type_name(cell(response)).to_owned(),
        };
        if documented.insert(command.clone(), row).is_some() {
            problems.push(format!("`{command}` is listed more than once"));
        }
    }

    for c in COMMANDS {
        let expected = Row {
            access: c.access.as_str().to_owned(),
            runs: c.run.as_str().to_owned(),
            hostctl: c.cli.to_owned(),
            request: c.request.to_owned(),
            response: c.response.to_owned(),
        };
        match documented.remove(c.name) {
            None => problems.push(format!(
                "`{}` is missing: add | `{}` | {} | {} | `{}` | `{}` | `{}` |",
                c.name,
                c.name,
                expected.access,
                expected.runs,
                expected.hostctl,
                expected.request,
                expected.response
            )),
            Some(row) if row != expected => problems.push(format!(
                "`{}` says {row:?}, the catalogue {expected:?}",
                c.name
            )),
            Some(_) => {}
        }
    }
    for extra in documented.keys() {
        problems.push(format!("`{extra}` is not in the catalogue"));
    }

    // The prose states the count too.
    let count = format!("{} entries", COMMANDS.len());
    if !lines.iter().any(|l| l.contains(&count)) {
        problems.push(format!(
            "§6's text should say the catalogue has {count} (`catalogue!` in commands.rs)"
        ));
    }

    assert!(
        problems.is_empty(),
        "docs/protocol.md §6 disagrees with hostbus_protocol::commands::COMMANDS:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_parser_reads_columns_by_name_and_type_names_from_code_spans() {
    let lines = [
        "| access | command | task | request fields | response |",
        "|:--|---|---|---|---|",
        "| read | `host.ping` | no | `Ping {echo?}` | `Pong {host_id, time, echo?}` |",
        r"| admin | `vm.define` | yes \| cancellable | `VmDefineRequest {spec: VmSpec}` | `VmRecord` (halted) |",
        "",
        "| not | this | table |",
    ];
    let t = first_table(&lines);
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.column("command"), 1);
    assert_eq!(t.column("request"), 3);
    assert_eq!(t.rows[1][2], "yes | cancellable");
    assert_eq!(type_name(&t.rows[0][3]), "Ping");
    assert_eq!(type_name(&t.rows[0][4]), "Pong");
    assert_eq!(type_name(&t.rows[1][4]), "VmRecord");
    assert_eq!(code(&t.rows[1][1]), "vm.define");
}

/// docs/http.md's table of HTTP statuses says what `ErrorCode::http_status`
/// does, for every code (`*_NOT_FOUND` stands for each code so named).
#[test]
fn the_status_table_in_http_md_matches_the_error_codes() {
    use hostbus_protocol::ErrorCode;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/http.md");
    let doc = std::fs::read_to_string(&path).expect("docs/http.md");
    let lines: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("| outcome"))
        .collect();
    let table = first_table(&lines);
    let mut said: BTreeMap<String, u16> = BTreeMap::new();
    for row in &table.rows {
        let digits: String = row[1].chars().take_while(char::is_ascii_digit).collect();
        let status: u16 = digits
            .parse()
            .unwrap_or_else(|_| panic!("no status in {row:?}"));
        for name in row[0].split(',').map(code) {
            let named: Vec<&str> = match name.strip_prefix('*') {
                Some(suffix) => ErrorCode::ALL
                    .iter()
                    .map(|c| c.as_str())
                    .filter(|c| c.ends_with(suffix))
                    .collect(),
                None => vec![name],
            };
            for n in named {
                assert!(said.insert(n.to_owned(), status).is_none(), "{n} twice");
            }
        }
    }
    assert_eq!(said.remove("ok"), Some(200));
    assert_eq!(said.remove("task"), Some(202));
    for c in ErrorCode::ALL {
        assert_eq!(
            said.remove(c.as_str()),
            Some(c.http_status()),
            "docs/http.md and ErrorCode::http_status disagree on {c}"
        );
    }
    assert!(
        said.is_empty(),
        "docs/http.md names codes that do not exist: {said:?}"
    );
}

/// docs/protocol.md §9's table of error codes lists every code with its
/// family and whether it is retryable, as `ErrorCode` says.
#[test]
fn the_error_table_in_protocol_md_matches_the_error_codes() {
    use hostbus_protocol::ErrorCode;
    let doc = protocol_md();
    let lines = section(&doc, "## 9. Errors");
    let table = first_table(&lines);
    let (family, retry) = (table.column("family"), table.column("retry"));
    let mut said: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for row in &table.rows {
        let name = code(&row[table.column("code")]).to_owned();
        let retryable = row[retry].contains("yes");
        let entry = (code(&row[family]).to_owned(), retryable);
        assert!(said.insert(name.clone(), entry).is_none(), "{name} twice");
    }
    let mut problems = Vec::new();
    for c in ErrorCode::ALL {
        let code_says = (c.family().as_str().to_owned(), c.is_retryable());
        match said.remove(c.as_str()) {
            None => problems.push(format!("{c}: missing")),
            Some(doc_says) if doc_says != code_says => {
                problems.push(format!("{c}: docs {doc_says:?}, code {code_says:?}"))
            }
            Some(_) => {}
        }
    }
    problems.extend(said.keys().map(|n| format!("{n}: no such code")));
    assert!(
        problems.is_empty(),
        "docs/protocol.md §9 and ErrorCode disagree:\n  {}",
        problems.join("\n  ")
    );
}
