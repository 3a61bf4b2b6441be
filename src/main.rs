//! `dht-store`: run a node, or talk to one. The command line itself is in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, FAILED, FOUND};

/// sled's log buffers are pooled; see `dht_store::memory::NodeAllocator`.
#[global_allocator]
static ALLOCATOR: dht_store::memory::NodeAllocator = dht_store::memory::NodeAllocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any other thread starts (see dht_store::memory).
    dht_store::memory::tune_allocator(match cli.command {
        Some(Command::Restore { .. }) => dht_store::memory::MMAP_THRESHOLD_RESTORE,
        _ => dht_store::memory::MMAP_THRESHOLD,
    });
    let is_node = cli.command.is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(if is_node { "info" } else { "warn" })),
        )
        .init();
    let runtime = if is_node {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dht-store: cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => cli::node::run_node(cli.node).await.map(|_| FOUND),
            Some(cmd) => cli::run(cmd).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dht-store: {e}");
            ExitCode::from(FAILED)
        }
    }
}
