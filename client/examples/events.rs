//! Follow VM events across hosts, resumable: the broker keeps events in a
//! stream, and a subscriber that stores its position and starts again from
//! it misses nothing. Lost events (an agent cut off from the broker, a
//! restart, or a position older than the broker keeps) arrive as resyncs
//! carrying the host's full inventory.
//!
//! `cargo run -p hostbus-client --example events -- amqp://guest:guest@127.0.0.1:5682/%2f '*.vm.*' [offset]`
//! (Ctrl-C ends it).

use futures_lite::StreamExt;
use hostbus_client::{Notification, StartAt, SubscribeOptions};

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut args) = common::connect().await?;
    let pattern = args.next().unwrap_or_else(|| "*.vm.*".into());
    // Resume after a stored position, or start with the next event.
    let from = match args.next().and_then(|o| o.parse::<u64>().ok()) {
        Some(last) => StartAt::Offset(last + 1),
        None => StartAt::Next,
    };
    let mut events = client
        .subscribe(
            &[pattern.as_str()],
            SubscribeOptions {
                from,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    loop {
        let next = tokio::select! {
            n = events.next() => n,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(n) = next else { break };
        match n? {
            // Store `events.position()` to resume from here later.
            Notification::Event(e) => println!(
                "offset={:?} {} {} {} gen={} seq={}",
                events.position(),
                e.host_id,
                e.class,
                e.action,
                e.generation,
                e.seq
            ),
            Notification::Resync {
                host,
                reason,
                inventory,
                ..
            } => {
                println!(
                    "resync {host} ({reason:?}): {} VMs",
                    inventory.map_or(0, |i| i.vms.len())
                )
            }
        }
    }
    // Ended by Ctrl-C: both connections are closed, not only dropped, so
    // the broker logs a clean close.
    events.close().await?;
    client.close().await?;
    Ok(())
}
