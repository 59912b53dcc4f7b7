//! The OpenAPI 3.1 document of the HTTP binding (docs/http.md), generated
//! from the catalogue and the same JSON Schema as `docs/protocol.schema.json`:
//! one `POST /v1/commands/<name>` per command, its request and its reply
//! (`{"ok": …}`, `{"task": …}` for changes run as tasks, `{"error": …}`).

use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::commands::{visit_commands, Command, CommandVisitor};
use crate::envelope::{
    ASYNC_HEADER, COMMAND_ID_HEADER, DEADLINE_HEADER, STATUS_HEADER, VERSION_HEADER,
};
use crate::error::{Error, ErrorCode};
use crate::events::{Event, Heartbeat};
use crate::types::TaskRecord;
use crate::PROTOCOL_VERSION;

/// Path of the exported document, relative to the workspace root.
pub const OPENAPI_PATH: &str = "docs/openapi.json";

const JSON: &str = "application/json";

/// A reply body with its one key.
fn reply(key: &str, schema: Value) -> Value {
    json!({
        "type": "object",
        "required": [key],
        "properties": {key: schema},
        "additionalProperties": false,
    })
}

fn content(schema: Value) -> Value {
    json!({JSON: {"schema": schema}})
}

fn header(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": description, "schema": schema})
}

struct Paths<'a> {
    generator: &'a mut SchemaGenerator,
    error: Value,
    task: Value,
    paths: Map<String, Value>,
}

impl CommandVisitor for Paths<'_> {
    fn visit<C: Command>(&mut self) {
        let request = self.generator.subschema_for::<C::Request>().to_value();
        let response = self.generator.subschema_for::<C::Response>().to_value();
        let changes = C::RUN.changes();
        let mut parameters = vec![
            header(
                COMMAND_ID_HEADER,
                "The command id (a UUID): a changing command runs at most once per id, on either binding; a repeat is answered from the journal.",
                json!({"type": "string", "format": "uuid"}),
            ),
            header(
                DEADLINE_HEADER,
                "Absolute deadline, ms since the Unix epoch: past it nothing runs and the reply is EXPIRED.",
                json!({"type": "integer", "minimum": 0}),
            ),
            header(
                VERSION_HEADER,
                "The caller's protocol version, major.minor.",
                json!({"type": "string"}),
            ),
        ];
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "The command's response.", "content": content(reply("ok", response))}),
        );
        if changes {
            parameters.push(header(
                ASYNC_HEADER,
                "`true`: run as a task; the reply is the task (202).",
                json!({"type": "boolean"}),
            ));
            responses.insert(
                "202".into(),
                json!({"description": "The task running the command.", "content": content(reply("task", self.task.clone()))}),
            );
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "A structured error; the status follows its code (docs/http.md).",
                "content": content(reply("error", self.error.clone())),
            }),
        );
        let (first, rest) = C::DOC
            .trim()
            .split_once('\n')
            .unwrap_or((C::DOC.trim(), ""));
        let class = C::NAME.split('.').next().unwrap_or_default();
        self.paths.insert(
            format!("/v1/commands/{}", C::NAME),
            json!({"post": {
                "operationId": C::NAME,
                "summary": first.trim(),
                "description": format!("{}\n\nAccess: `{}`.", rest.trim(), C::ACCESS.as_str()).trim().to_owned(),
                "tags": [class],
                "parameters": parameters,
                "requestBody": {"required": false, "content": content(request)},
                "responses": responses,
            }}),
        );
    }
}

/// The whole document, deterministic for a given protocol.
pub fn openapi() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let error = generator.subschema_for::<Error>().to_value();
    let task = generator.subschema_for::<TaskRecord>().to_value();
    let event = generator.subschema_for::<Event>().to_value();
    let heartbeat = generator.subschema_for::<Heartbeat>().to_value();
    let mut p = Paths {
        generator: &mut generator,
        error: error.clone(),
        task,
        paths: Map::new(),
    };
    visit_commands(&mut p);
    let mut paths = p.paths;
    let denied = json!({"description": "The peer has no role that may read.", "content": content(reply("error", error.clone()))});
    paths.insert(
        "/v1/events".into(),
        json!({"get": {
            "operationId": "events",
            "summary": "The host's events as server-sent events.",
            "description": format!("A `hello` message (`host_id`, `epoch`, `last_seq`), then one message per event: `id` its `seq`, `event` its `<class>.<action>`, `data` the Event in JSON: {}. The resync rule is the bus's (docs/protocol.md §10.1).", serde_json::to_string(&event).unwrap_or_default()),
            "tags": ["events"],
            "responses": {
                "200": {"description": "The event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "default": denied,
            },
        }}),
    );
    paths.insert(
        "/v1/heartbeat".into(),
        json!({"get": {
            "operationId": "heartbeat",
            "summary": "The host's heartbeat as of now.",
            "tags": ["host"],
            "responses": {
                "200": {"description": "The heartbeat.", "content": content(heartbeat)},
                "default": denied,
            },
        }}),
    );
    paths.insert(
        "/v1/openapi.json".into(),
        json!({"get": {
            "operationId": "openapi",
            "summary": "This document.",
            "tags": ["meta"],
            "responses": {
                "200": {"description": "The OpenAPI document.", "content": {JSON: {"schema": {"type": "object"}}}},
                "default": denied,
            },
        }}),
    );
    let statuses: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|c| json!({"code": c.as_str(), "http_status": c.http_status()}))
        .collect();
    let schemas: Map<String, Value> = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hostbus host API",
            "version": PROTOCOL_VERSION.to_string(),
            "description": format!("The HTTP binding of one hostbus agent (docs/http.md): every command of the catalogue, in JSON (or MessagePack, `application/msgpack`, by content type); replies carry `{STATUS_HEADER}`. Authorization: the Unix socket peer's uid/gid, or the TLS client certificate's CN, mapped to the bus's roles."),
        },
        "paths": paths,
        "components": {"schemas": schemas},
        "x-hostbus-error-statuses": statuses,
    })
}

/// The document as the pretty-printed text stored at [`OPENAPI_PATH`].
pub fn openapi_text() -> String {
    let mut s = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    s.push('\n');
    s
}
