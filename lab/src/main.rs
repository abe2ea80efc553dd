//! `medmesh-lab`: local meshes of real `medmesh` processes on one machine, for demos and
//! experiments (what `scripts/demo` runs).

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_lab::{mesh, netlab, programs, quality};

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
    /// The national pilot over a real network on this machine (needs root): 16 hospitals in
    /// four centres behind NAT routers, a partner abroad behind its own NAT on a shaped uplink,
    /// one relay; link-cut and relay-kill faults, then the same training flat and two-level
    /// (each centre a group), comparing the WAN bytes the centre routers count. Prints a table
    /// and exits non-zero if a check fails. Built from Linux network namespaces, veth pairs,
    /// nftables and `tc`.
    Netlab(netlab::run::Options),
    /// (Used by `netlab`.) Dial a member through a relay with a fresh key that is on no roster;
    /// prints `connected` or `refused`.
    #[command(hide = true)]
    Stranger {
        /// The relay's address, ending in `/p2p/<peer id>`.
        #[arg(long)]
        relay: libp2p::Multiaddr,
        /// The member to reach.
        #[arg(long)]
        target: libp2p::PeerId,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mesh(options) if !options.seeds.is_empty() => {
            let exe = programs::node();
            let repeated = quality::run(&options, &options.seeds, &exe, |line| eprintln!("{line}"))
                .with_context(|| format!("local meshes with {}", exe.display()))?;
            for (seed, report) in repeated.seeds.iter().zip(&repeated.runs) {
                println!("seed {seed}:\n{}", report.to_text());
            }
            print!("{}", repeated.to_text());
            if let Some(path) = &options.json {
                std::fs::write(path, serde_json::to_string_pretty(&repeated)? + "\n")?;
            }
        }
        Command::Mesh(options) => {
            let exe = programs::node();
            let report = mesh::run(&options, &exe, |line| eprintln!("{line}"))
                .with_context(|| format!("local mesh with {}", exe.display()))?;
            print!("{}", report.to_text());
            if let Some(path) = &options.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
            }
        }
        Command::Netlab(options) => {
            let exe = programs::node();
            let report = netlab::run::run(&options, &exe, |line| eprintln!("{line}"))
                .with_context(|| format!("network lab with {}", exe.display()))?;
            print!("{}", report.to_text());
            if let Some(path) = &options.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
            }
            anyhow::ensure!(
                report.passed(),
                "the network lab failed a check (see above)"
            );
        }
        Command::Stranger { relay, target } => {
            let connected =
                netlab::stranger::attempt(&relay, target, std::time::Duration::from_secs(20))?;
            println!("{}", if connected { "connected" } else { "refused" });
        }
    }
    Ok(())
}
