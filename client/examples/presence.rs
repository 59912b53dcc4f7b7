//! The fleet view: every host the broker remembers, alive, stale or gone,
//! complete as soon as `presence()` returns, then kept live.
//!
//! `cargo run -p hostbus-client --example presence -- amqp://guest:guest@127.0.0.1:5682/%2f`

use std::time::Duration;

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _) = common::connect().await?;
    let presence = client.presence().await?;
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        for h in presence.hosts() {
            println!(
                "{} {:?} last_seen_ms={:?} epoch={} vms_active={} in_flight={}",
                h.host_id, h.liveness, h.last_seen_ms, h.epoch, h.load.vms_active, h.load.in_flight
            );
        }
    }
    // Closed, not only dropped: the broker logs a clean close.
    client.close().await?;
    Ok(())
}
