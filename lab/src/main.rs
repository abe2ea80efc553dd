//! `medmesh-lab`: local meshes of real `medmesh` processes on one machine, for demos and
//! experiments (what `scripts/demo` runs).

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_lab::{mesh, programs};

/// medmesh-lab: run whole meshes of medmesh peers on this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh on this machine: one `medmesh run` process per site of a dataset, on
    /// loopback, then print each hospital's accuracy next to training alone. The `medmesh`
    /// program is taken from `MEDMESH`, else next to this one, else from the `PATH`.
    Mesh(mesh::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mesh(options) => {
            let exe = programs::node();
            let report = mesh::run(&options, &exe, |line| eprintln!("{line}"))
                .with_context(|| format!("local mesh with {}", exe.display()))?;
            print!("{}", report.to_text());
            if let Some(path) = &options.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
            }
        }
    }
    Ok(())
}
