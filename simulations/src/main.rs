//! The `medmesh-sim` command: network simulations of medmesh.

use clap::{Parser, Subcommand};

/// Network simulations of medmesh: many real protocol peers over a simulated network,
/// deterministic from a seed.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A mesh of hospitals averaging with no coordinator while an outsider injects forgeries.
    Demo(medmesh_simulations::demo::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(options) => {
            let stdout = std::io::stdout();
            medmesh_simulations::demo::run(&options, &mut stdout.lock())?;
        }
    }
    Ok(())
}
