//! Follow VM events across hosts; gaps and agent restarts arrive as resyncs
//! carrying the host's full inventory.
//!
//! `cargo run -p hostbus-client --example events -- amqp://guest:guest@127.0.0.1:5682/%2f '*.vm.*'`

use futures_lite::StreamExt;
use hostbus_client::{Client, ClientConfig, Notification, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5682/%2f".into());
    let pattern = args.next().unwrap_or_else(|| "*.vm.*".into());
    let client = Client::connect(ClientConfig::new(url)).await?;
    let mut events = client
        .subscribe(&[pattern.as_str()], SubscribeOptions::default())
        .await?;
    while let Some(n) = events.next().await {
        match n? {
            Notification::Event(e) => println!(
                "{} {} {} gen={} seq={}",
                e.host_id, e.class, e.action, e.generation, e.seq
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
    Ok(())
}
