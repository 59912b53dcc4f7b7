//! `hostctl network ...`: virtual networks.

use hostbus_client::protocol::types::{IpSpec, NetworkSpec};

use crate::cli::NetworkCmd;
use crate::output::{print_json, Ctx, Res};

/// `hostctl network ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: NetworkCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        NetworkCmd::List { host } => {
            let nets = c.host(&host).networks().await?;
            ctx.list(
                &nets,
                &["NAME", "ACTIVE", "FORWARD", "BRIDGE", "ADDRESS"],
                |n| {
                    vec![
                        n.name.clone(),
                        n.active.to_string(),
                        n.forward.to_string(),
                        n.bridge.clone().unwrap_or_default(),
                        n.ip.as_ref()
                            .map(|i| format!("{}/{}", i.address, i.prefix))
                            .unwrap_or_default(),
                    ]
                },
            )
        }
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
        NetworkCmd::Start { network } => {
            let r = network.on(c).start().await?;
            ctx.show(&r, |r| outln!("network {} active: {}", r.name, r.active))
        }
        NetworkCmd::Stop { network } => {
            let r = network.on(c).stop().await?;
            ctx.show(&r, |r| outln!("network {} active: {}", r.name, r.active))
        }
        NetworkCmd::Delete { network } => {
            network.on(c).undefine().await?;
            ctx.deleted("network", &network.name)
        }
    }
}
