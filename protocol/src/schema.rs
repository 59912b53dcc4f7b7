//! The machine-readable schema of every message: JSON Schema (draft 2020-12)
//! of each command's request and response, of replies, events, heartbeats and
//! errors, plus the catalogue's names and access levels.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::commands::{visit_commands, Command, CommandVisitor};
use crate::envelope::{
    ASYNC_HEADER, DEADLINE_HEADER, HOST_HEADER, PROTOCOL_VERSION, STATUS_HEADER, VERSION_HEADER,
};
use crate::error::{Error, ErrorCode};
use crate::events::{Announcement, Event, Heartbeat};
use crate::names;

/// Path of the exported schema, relative to the workspace root.
pub const SCHEMA_PATH: &str = "docs/protocol.schema.json";

struct Collect<'a> {
    generator: &'a mut SchemaGenerator,
    commands: Vec<Value>,
}

impl CommandVisitor for Collect<'_> {
    fn visit<C: Command>(&mut self) {
        let request = self.generator.subschema_for::<C::Request>();
        let response = self.generator.subschema_for::<C::Response>();
        self.commands.push(json!({
            "name": C::NAME,
            "access": C::ACCESS.as_str(),
            "runs": C::RUN.name(),
            "cli": C::CLI,
            "description": C::DOC.trim(),
            "request": request,
            "response": response,
        }));
    }
}

fn sub<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// The whole schema as a JSON value, deterministic for a given protocol.
pub fn schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut collect = Collect {
        generator: &mut generator,
        commands: Vec::new(),
    };
    visit_commands(&mut collect);
    let commands = collect.commands;
    let event = sub::<Event>(&mut generator);
    let heartbeat = sub::<Heartbeat>(&mut generator);
    let announcement = sub::<Announcement>(&mut generator);
    let error = sub::<Error>(&mut generator);
    let codes: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|c| {
            json!({
                "code": c.as_str(),
                "params": c.params(),
                "family": c.family().as_str(),
                "retryable": c.is_retryable(),
                "http_status": c.http_status(),
                "description": c.description().trim(),
            })
        })
        .collect();
    let defs: Map<String, Value> = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hostbus wire protocol",
        "protocol_version": PROTOCOL_VERSION.to_string(),
        "exchanges": {
            "commands": names::COMMAND_EXCHANGE,
            "events": names::EVENT_EXCHANGE,
            "presence": names::PRESENCE_EXCHANGE,
            "dead_letter": names::DEAD_LETTER_EXCHANGE,
        },
        "streams": {
            "events": {"queue": names::EVENT_STREAM, "exchange": names::EVENT_EXCHANGE, "bindings": ["#"]},
            "heartbeats": {"queue": names::BEAT_STREAM, "exchange": names::PRESENCE_EXCHANGE, "bindings": names::BEAT_STREAM_BINDINGS},
            "roster": {"queue": names::ROSTER_STREAM, "exchange": names::PRESENCE_EXCHANGE, "bindings": names::ROSTER_STREAM_BINDINGS},
        },
        "headers": {
            "version": VERSION_HEADER,
            "deadline": DEADLINE_HEADER,
            "async": ASYNC_HEADER,
            "status": STATUS_HEADER,
            "host": HOST_HEADER,
        },
        "reply": {
            "description": "Every reply body is a map with exactly one key: `ok` (the command's response), `task` (a TaskRecord, for asynchronous calls) or `error` (an Error).",
            "oneOf": [
                {"type": "object", "required": ["ok"], "properties": {"ok": {"description": "the command's response schema"}}},
                {"type": "object", "required": ["task"], "properties": {"task": {"$ref": "#/$defs/TaskRecord"}}},
                {"type": "object", "required": ["error"], "properties": {"error": error}},
            ],
        },
        "commands": commands,
        "event": event,
        "heartbeat": heartbeat,
        "announcement": announcement,
        "error_codes": codes,
        "$defs": defs,
    })
}

/// The schema as the pretty-printed text stored at [`SCHEMA_PATH`].
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    s.push('\n');
    s
}
