//! `hostctl`: drive hostbus hosts from a shell.
//!
//! Human tables by default, `--output json` everywhere; progress bars on
//! long operations; exit codes scripts can rely on (see `hostctl --help`).
//!
//! `cli` holds the command line as clap types, `args` the typed arguments
//! and their parsers, `config` the settings, `output` printing and exit
//! codes; one module per object class runs its commands.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hostbus_client::Client;

/// `println!` that stops printing once stdout is a closed pipe
/// (`hostctl ... | head`): the command ends, its connections are closed,
/// and hostctl exits 0 quietly, like other Unix tools
/// ([`output::stdout_closed`]).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if !$crate::output::stdout_closed() {
            if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    $crate::output::stdout_was_closed();
                }
            }
        }
    }};
}

mod admin;
mod args;
mod cli;
mod config;
mod host;
mod network;
mod output;
mod storage;
mod task;
mod vm;

use cli::{Cli, Cmd};
use output::{Ctx, Failure, Res};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "hostctl", &mut script);
            outln!("{}", String::from_utf8_lossy(&script).trim_end());
            return ExitCode::SUCCESS;
        }
        Cmd::Schema => {
            outln!(
                "{}",
                hostbus_client::protocol::schema::schema_text().trim_end()
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        _ if output::stdout_closed() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("hostctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Connects, runs one command, and closes the connections whichever way
/// the command ends: done, failed (every exit code), or interrupted by
/// SIGINT or SIGTERM (`events --follow` ends so). The broker then logs a
/// clean close, not a client that vanished; closing is bounded, so a dead
/// broker does not hold up the exit.
async fn run(cli: Cli) -> Res<()> {
    let (cfg, output) = config::load(&cli)?;
    if let (Some(verb), Some(socket)) = (cli.cmd.broker_only(), &cfg.socket) {
        return Err(Failure::usage(format!(
            "`hostctl {verb}` administers the broker, which an agent socket ({}) cannot do: run it with --url",
            socket.display()
        )));
    }
    let mut interrupted = std::pin::pin!(output::interrupted()?);
    let client = tokio::select! {
        client = Client::connect(cfg) => client?,
        failure = &mut interrupted => return Err(failure),
    };
    let ctx = Ctx { client, output };
    let outcome = tokio::select! {
        outcome = command(&ctx, cli.cmd) => outcome,
        failure = &mut interrupted => Err(failure),
    };
    // A subscription the interrupted command dropped is closed too: the
    // client's close waits for it.
    let _ = ctx.client.close().await;
    outcome
}

/// Runs one command.
async fn command(ctx: &Ctx, cmd: Cmd) -> Res<()> {
    match cmd {
        // Answered in `main`, without a connection.
        Cmd::Schema | Cmd::Completions { .. } => Ok(()),
        Cmd::Hosts { listen_ms } => host::hosts(ctx, listen_ms).await,
        Cmd::Ping { host } => host::ping(ctx, &host).await,
        Cmd::Host(cmd) => host::run(ctx, cmd).await,
        Cmd::Vm(cmd) => vm::run(ctx, cmd).await,
        Cmd::Snapshot(cmd) => vm::snapshot(ctx, cmd).await,
        Cmd::Pool(cmd) => storage::pool(ctx, cmd).await,
        Cmd::Volume(cmd) => storage::volume(ctx, cmd).await,
        Cmd::Network(cmd) => network::run(ctx, cmd).await,
        Cmd::Task(cmd) => task::run(ctx, cmd).await,
        Cmd::Events(args) => task::events(ctx, args).await,
        Cmd::Admin(cmd) => admin::run(ctx, cmd).await,
    }
}
