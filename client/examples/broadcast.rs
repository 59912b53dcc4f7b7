//! Broadcast to every host (or a label group) and see who did not answer.
//!
//! `cargo run -p hostbus-client --example broadcast -- amqp://guest:guest@127.0.0.1:5682/%2f [label]`

use std::time::Duration;

use hostbus_client::protocol::commands::{VmList, VmListRequest};
use hostbus_client::protocol::names::Target;

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut args) = common::connect().await?;
    let target = args.next().map_or(Target::All, Target::Group);
    // The fleet view (read from the broker at once) tells who is expected:
    // the broadcast returns when every alive host answered, and names
    // every expected host that did not, the dead ones too.
    let b = client
        .broadcast::<VmList>(
            &target,
            VmListRequest { power_state: None },
            Duration::from_secs(3),
        )
        .await?;
    for (host, reply) in &b.replies {
        match reply {
            Ok(list) => println!("{host}: {} VMs", list.vms.len()),
            Err(e) => println!("{host}: {e}"),
        }
    }
    if !b.missing.is_empty() {
        println!("no answer from {}", b.missing.join(", "));
    }
    // Closed, not only dropped: the broker logs a clean close.
    client.close().await?;
    Ok(())
}
