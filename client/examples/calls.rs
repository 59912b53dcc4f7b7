//! Typed calls with deadlines: start a VM by name, read it back, and handle
//! a refusal by its kind.
//!
//! `cargo run -p hostbus-client --example calls -- amqp://guest:guest@127.0.0.1:5682/%2f h1 db01`

use std::time::Duration;

use hostbus_client::protocol::commands::{HostPing, Ping};
use hostbus_client::{CallOptions, ErrorKind};

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut args) = common::connect().await?;
    let host = args.next().unwrap_or_else(|| "h1".into());
    let vm_name = args.next().unwrap_or_else(|| "db01".into());

    // Any command of the catalogue, with explicit options.
    let pong = client
        .call_with::<HostPing>(
            &host,
            Ping {
                echo: Some("hello".into()),
            },
            &CallOptions {
                timeout: Some(Duration::from_secs(2)),
                ..CallOptions::default()
            },
        )
        .await?;
    println!("{} answered {:?}", pong.host_id, pong.echo);

    // The handle tree.
    let vm = client.host(&host).vm_named(&vm_name);
    match vm.start().await {
        Ok(rec) => println!("{} is {}", rec.name, rec.power_state),
        Err(e) if e.kind() == ErrorKind::BadState => {
            println!("not started: {e} (allowed: {:?})", e.param("allowed"))
        }
        Err(e) => return Err(e.into()),
    }
    println!("{:#?}", vm.get().await?.allowed_operations);
    // Closed, not only dropped: the broker logs a clean close.
    client.close().await?;
    Ok(())
}
