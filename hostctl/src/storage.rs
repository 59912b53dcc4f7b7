//! `hostctl pool ...` and `hostctl volume ...`: storage.

use hostbus_client::protocol::types::{PoolKind, PoolRecord, PoolSpec, VolumeRecord, VolumeSpec};

use crate::cli::{PoolCmd, VolumeCmd};
use crate::output::{gib, print_json, Column, Ctx, Listed, Res};

/// `hostctl pool ...`.
pub(crate) async fn pool(ctx: &Ctx, cmd: PoolCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        PoolCmd::List { host } => ctx.list(&c.host(&host).pools().await?),
        PoolCmd::Get { pool } => print_json(&pool.on(c).get().await?),
        PoolCmd::Create {
            host,
            name,
            path,
            autostart,
        } => {
            let r = c
                .host(&host)
                .define_pool(PoolSpec {
                    name,
                    kind: PoolKind::Dir,
                    target_path: path,
                    source: None,
                    autostart,
                })
                .await?;
            ctx.show(&r, |r| outln!("pool {} defined ({})", r.name, r.state))
        }
        PoolCmd::Start { pool } => pool_state(ctx, &pool.on(c).start().await?),
        PoolCmd::Stop { pool } => pool_state(ctx, &pool.on(c).stop().await?),
        PoolCmd::Refresh { pool } => {
            let r = pool.on(c).refresh().await?;
            ctx.show(&r, |r| {
                outln!("pool {} refreshed: {} volumes", r.name, r.volumes)
            })
        }
        PoolCmd::Delete { pool } => {
            pool.on(c).undefine().await?;
            ctx.deleted("pool", &pool.name)
        }
    }
}

/// What `pool start` and `pool stop` print: the pool and its state now.
fn pool_state(ctx: &Ctx, r: &PoolRecord) -> Res<()> {
    ctx.show(r, |r| outln!("pool {} is {}", r.name, r.state))
}

/// `hostctl volume ...`.
pub(crate) async fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Res<()> {
    let c = &ctx.client;
    match cmd {
        VolumeCmd::List { pool } => ctx.list(&pool.on(c).volumes().await?),
        VolumeCmd::Create {
            pool,
            name,
            size_bytes,
            format,
        } => {
            let v = pool
                .on(c)
                .create_volume(VolumeSpec {
                    name,
                    capacity_bytes: size_bytes,
                    allocation_bytes: 0,
                    format: format.into(),
                })
                .await?;
            ctx.show(&v, |v| {
                outln!(
                    "volume {} created: {} GiB at {}",
                    v.name,
                    gib(v.capacity_bytes),
                    v.path
                )
            })
        }
        VolumeCmd::Get { volume: v } => {
            let r = v.pool.on(c).volume(&v.volume).await?;
            ctx.show(&r, |r| {
                outln!("name:        {}", r.name);
                outln!("pool:        {}", r.pool);
                outln!("format:      {}", r.format);
                outln!("capacity:    {} GiB", gib(r.capacity_bytes));
                outln!("allocation:  {} GiB", gib(r.allocation_bytes));
                outln!("path:        {}", r.path);
                outln!("generation:  {}", r.generation);
            })
        }
        VolumeCmd::Delete { volume: v } => {
            v.pool.on(c).delete_volume(&v.volume).await?;
            ctx.deleted("volume", &v.volume)
        }
        VolumeCmd::Resize {
            volume: v,
            size_bytes,
        } => {
            let r = v.pool.on(c).resize_volume(&v.volume, size_bytes).await?;
            ctx.show(&r, |r| {
                outln!("volume {} is now {} GiB", r.name, gib(r.capacity_bytes))
            })
        }
        VolumeCmd::Clone {
            volume: v,
            new_name,
        } => {
            let r = v.pool.on(c).clone_volume(&v.volume, &new_name).await?;
            ctx.show(&r, |r| outln!("volume {} cloned to {}", v.volume, r.name))
        }
    }
}

/// What `hostctl pool list` prints.
impl Listed for PoolRecord {
    const COLUMNS: &'static [Column<'static, Self>] = &[
        ("NAME", &|p| p.name.clone()),
        ("STATE", &|p| p.state.to_string()),
        ("KIND", &|p| p.kind.to_string()),
        ("VOLUMES", &|p| p.volumes.to_string()),
        ("CAPACITY_GIB", &|p| gib(p.capacity_bytes)),
        ("AVAILABLE_GIB", &|p| gib(p.available_bytes)),
        ("PATH", &|p| p.target_path.clone().unwrap_or_default()),
    ];
}

/// What `hostctl volume list` prints.
impl Listed for VolumeRecord {
    const COLUMNS: &'static [Column<'static, Self>] = &[
        ("NAME", &|v| v.name.clone()),
        ("FORMAT", &|v| v.format.to_string()),
        ("CAPACITY_GIB", &|v| gib(v.capacity_bytes)),
        ("ALLOCATION_GIB", &|v| gib(v.allocation_bytes)),
        ("PATH", &|v| v.path.clone()),
    ];
}
