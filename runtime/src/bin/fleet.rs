//! The `fleet` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet",
    version,
    about = "Fleet: a Ray-like distributed runtime for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the build's version and protocol version.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Version => {
            println!(
                "fleet {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                fleet::PROTOCOL_VERSION
            );
        }
    }
    Ok(())
}
