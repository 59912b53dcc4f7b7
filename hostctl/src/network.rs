//! `hostctl network ...`: virtual networks.

use hostbus_client::protocol::types::{IpSpec, NetworkRecord, NetworkSpec};

use crate::cli::NetworkCmd;
use crate::output::{print_json, Column, Ctx, Listed, Res};

/// `hostctl network ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: NetworkCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        NetworkCmd::List { host } => ctx.list(&c.host(&host).networks().await?),
        NetworkCmd::Get { network } => print_json(&network.on(c).get().await?),
        NetworkCmd::Create {
            host,
            name,
            bridge,
            forward,
            ip,
            dhcp,
            autostart,
        } => {
            // A DHCP range only means something on a network with an address.
            let ip = ip.map(|(address, prefix)| {
                let (dhcp_start, dhcp_end) = dhcp.map_or((None, None), |(a, b)| (Some(a), Some(b)));
                IpSpec {
                    address,
                    prefix,
                    dhcp_start,
                    dhcp_end,
                }
            });
            let r = c
                .host(&host)
                .define_network(NetworkSpec {
                    name,
                    bridge,
                    forward: forward.into(),
                    ip,
                    autostart,
                })
                .await?;
            ctx.show(&r, |r| outln!("network {} defined", r.name))
        }
        NetworkCmd::Start { network } => active(ctx, &network.on(c).start().await?),
        NetworkCmd::Stop { network } => active(ctx, &network.on(c).stop().await?),
        NetworkCmd::Delete { network } => {
            network.on(c).undefine().await?;
            ctx.deleted("network", &network.name)
        }
    }
}

/// What `network start` and `network stop` print: the network and whether it is now active.
fn active(ctx: &Ctx, r: &NetworkRecord) -> Res<()> {
    ctx.show(r, |r| outln!("network {} active: {}", r.name, r.active))
}

/// What `hostctl network list` prints.
impl Listed for NetworkRecord {
    const COLUMNS: &'static [Column<'static, Self>] = &[
        ("NAME", &|n| n.name.clone()),
        ("ACTIVE", &|n| n.active.to_string()),
        ("FORWARD", &|n| n.forward.to_string()),
        ("BRIDGE", &|n| n.bridge.clone().unwrap_or_default()),
        ("ADDRESS", &|n| {
            n.ip.as_ref()
                .map(|i| format!("{}/{}", i.address, i.prefix))
                .unwrap_or_default()
        }),
    ];
}
