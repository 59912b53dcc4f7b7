//! `hostctl admin ...`: broker administration.

use hostbus_client::topology::{QueueType, TopologySettings};

use crate::cli::{AdminCmd, AdminQueueType};
use crate::output::{Ctx, Res};

/// `hostctl admin setup`: declares the shared broker objects; objects that
/// exist with other arguments are reported and left alone.
pub(crate) async fn run(ctx: &Ctx, cmd: AdminCmd) -> Res<()> {
    let AdminCmd::Setup { queue_type } = cmd;
    let settings = TopologySettings {
        queue_type: match queue_type {
            AdminQueueType::Quorum => QueueType::Quorum,
            AdminQueueType::Classic => QueueType::Classic,
        },
        ..Default::default()
    };
    let mismatches = ctx.client.declare_topology(&settings).await?;
    for m in &mismatches {
        eprintln!(
            "hostctl: {} exists with other arguments; left as it is ({})",
            m.queue, m.reason
        );
    }
    ctx.show(
        &serde_json::json!({"declared": true, "left_as_is": mismatches.iter().map(|m| &m.queue).collect::<Vec<_>>()}),
        |_| outln!("exchanges, dead-letter queue and streams declared"),
    )
}
