//! The smallest request of each command: what tests that go over the whole
//! catalogue (plans, recovery classes) build a request of any command from.

use hostbus_protocol::{AnyRequest, ContentType};

/// A request of command `name` decoded from the smallest JSON body its type
/// accepts, or `None` where that needs more than the few fields tried here
/// (a spec with nested parts).
pub fn minimal_request(name: &str) -> Option<AnyRequest> {
    let uuid = "11111111-0000-4000-8000-000000000001";
    [
        "{}".to_owned(),
        format!(r#"{{"uuid":"{uuid}"}}"#),
        r#"{"name":"n"}"#.to_owned(),
        r#"{"pool":"p"}"#.to_owned(),
        r#"{"pool":"p","name":"n"}"#.to_owned(),
        r#"{"pool":"p","name":"n","new_name":"m"}"#.to_owned(),
        r#"{"pool":"p","name":"n","capacity_bytes":1048576}"#.to_owned(),
        r#"{"pool":"p","spec":{"name":"n","capacity_bytes":1048576}}"#.to_owned(),
        format!(r#"{{"vm":"{uuid}","name":"n"}}"#),
        format!(r#"{{"id":"{uuid}"}}"#),
        format!(r#"{{"source":"{uuid}","name":"n"}}"#),
        format!(r#"{{"uuid":"{uuid}","template":true}}"#),
        format!(r#"{{"uuid":"{uuid}","destination":"h2"}}"#),
        format!(
            r#"{{"uuid":"{uuid}","name":"n","source":"h1","task":"{uuid}","live":true,"memory_kib":1024,"generation":1}}"#
        ),
        format!(r#"{{"uuid":"{uuid}","memory_kib":1024}}"#),
        format!(r#"{{"uuid":"{uuid}","vcpus":1}}"#),
        format!(r#"{{"uuid":"{uuid}","target":"vda"}}"#),
        format!(r#"{{"uuid":"{uuid}","mac":"52:54:00:00:00:01"}}"#),
        format!(r#"{{"uuid":"{uuid}","nic":{{"network":"default"}}}}"#),
        format!(r#"{{"uuid":"{uuid}","disk":{{"target":"vdb","source":{{"path":"/d.img"}},"format":"raw"}}}}"#),
        r#"{"spec":{"name":"n","memory_kib":1024,"vcpus":1}}"#.to_owned(),
        r#"{"spec":{"name":"n","kind":"dir","target_path":"/p"}}"#.to_owned(),
        r#"{"spec":{"name":"n","forward":"isolated"}}"#.to_owned(),
        r#"{"spec":{"name":"n","forward":"nat","bridge":"br0"}}"#.to_owned(),
    ]
    .iter()
    .find_map(|body| {
        AnyRequest::decode(name, ContentType::Json, body.as_bytes(), usize::MAX)
            .ok()
            .filter(|r| r.validate().is_ok())
    })
}
