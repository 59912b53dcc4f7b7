//! `hostctl task ...` and `hostctl events`: tasks and the event stream.

use std::io::Write;
use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_client::{Notification, SubscribeOptions};

use crate::cli::{EventsArgs, Output, TaskCmd};
use crate::output::{print_json, stdout_closed, task_outcome, Column, Ctx, Listed, Progress, Res};
use hostbus_client::protocol::types::TaskRecord;

/// `hostctl task ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: TaskCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        TaskCmd::List { host } => ctx.list(&c.host(&host).tasks(None).await?),
        TaskCmd::Get { host, id } => print_json(&c.host(&host).task(id).get().await?),
        TaskCmd::Wait { host, id } => {
            let bar = Progress::new(&format!("task {id}"));
            let t = c.host(&host).task(id).wait(|t| bar.update(t)).await?;
            bar.done();
            ctx.show(&t, |t| outln!("task {} {}", t.id, t.status))?;
            task_outcome(&t)
        }
        TaskCmd::Cancel { host, id } => {
            let t = c.host(&host).task(id).cancel().await?;
            ctx.show(&t, |t| outln!("task {} {}", t.id, t.status))
        }
    }
}

/// `hostctl events`: one line per event (JSON with its stream offset, or
/// text), until `--count`, `--duration-ms`, or for ever with `--follow`.
pub(crate) async fn events(ctx: &Ctx, args: EventsArgs) -> Res<()> {
    let EventsArgs {
        patterns,
        from,
        follow,
        count,
        duration_ms,
    } = args;
    let pats: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let opts = SubscribeOptions {
        from,
        ..SubscribeOptions::default()
    };
    let mut sub = ctx.client.subscribe(&pats, opts).await?;
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
    loop {
        let next = if follow {
            Some(sub.next().await)
        } else {
            tokio::time::timeout_at(deadline, sub.next()).await.ok()
        };
        let Some(Some(n)) = next else { break };
        match n? {
            Notification::Event(e) => {
                seen += 1;
                let offset = sub.position();
                match ctx.output {
                    Output::Json => {
                        // The event's own fields, and its stream offset.
                        let mut v = serde_json::to_value(&e)?;
                        if let Some(m) = v.as_object_mut() {
                            m.insert("offset".into(), serde_json::json!(offset));
                        }
                        outln!("{v}")
                    }
                    Output::Table => outln!(
                        "{} offset={:<7} {:<10} {:<9} {:<9} seq={:<5} gen={:<4} {}",
                        e.time,
                        offset.map_or_else(|| "-".to_owned(), |o| o.to_string()),
                        e.host_id,
                        e.class,
                        e.action,
                        e.seq,
                        e.generation,
                        e.object_id
                    ),
                }
            }
            Notification::Resync { host, reason, .. } => {
                eprintln!("hostctl: resynced {host} ({reason:?})")
            }
        }
        let _ = std::io::stdout().flush();
        if count.is_some_and(|n| seen >= n) || stdout_closed() {
            break;
        }
    }
    // The subscription's connection is closed with the client's, in
    // `main`, however this ends.
    Ok(())
}

/// What `hostctl task list` prints.
impl Listed for TaskRecord {
    const COLUMNS: &'static [Column<'static, Self>] = &[
        ("ID", &|t| t.id.to_string()),
        ("COMMAND", &|t| t.command.clone()),
        ("STATUS", &|t| t.status.to_string()),
        ("PROGRESS", &|t| format!("{}%", t.progress)),
        ("OBJECT", &|t| {
            t.object.as_ref().map(|o| o.id.clone()).unwrap_or_default()
        }),
    ];
}
