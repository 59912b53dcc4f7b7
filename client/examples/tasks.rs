//! A long operation as a task: start it, watch its progress, cancel it if it
//! takes too long.
//!
//! `cargo run -p hostbus-client --example tasks -- amqp://guest:guest@127.0.0.1:5682/%2f h1`

use std::time::Duration;

use hostbus_client::protocol::types::{DiskSource, DiskSpec, VmSpec};

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut args) = common::connect().await?;
    let host = args.next().unwrap_or_else(|| "h1".into());
    let disk = DiskSource::NewVolume {
        pool: "default".into(),
        capacity_bytes: 1 << 30,
    };
    let spec = VmSpec {
        description: "made by the tasks example".into(),
        disks: vec![DiskSpec::new("vda", disk)],
        ..VmSpec::new(format!("example-{}", std::process::id()), 512 * 1024, 1)
    };
    let task = client.host(&host).define_vm_async(spec).await?;
    println!("task {}", task.id());
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        task.wait(|t| println!("{:>3}% {}", t.progress, t.status)),
    )
    .await;
    match waited {
        Ok(done) => println!("finished: {:?}", done?.status),
        Err(_) => println!("cancelling: {:?}", task.cancel().await?.status),
    }
    // Closed, not only dropped: the broker logs a clean close.
    client.close().await?;
    Ok(())
}
