//! The `medmesh` command: the peer a hospital runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_node::keys;

/// medmesh: train medical AI models across hospitals with no central server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this hospital's member key (ed25519, PKCS#8 PEM, owner-only) and print its id.
    Init {
        /// Where to write the key; an existing key is never overwritten.
        #[arg(long, env = "MEDMESH_KEY", default_value = "medmesh-key.pem")]
        key: PathBuf,
    },
    /// Print the member id of a key file (what other members put on the roster).
    Id {
        /// The key file.
        #[arg(long, env = "MEDMESH_KEY", default_value = "medmesh-key.pem")]
        key: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Init { key } => {
            let pair = keys::generate()?;
            keys::write(&key, &pair).context("cannot create the member key")?;
            println!("{}", pair.id());
            eprintln!(
                "wrote {} (keep it secret; back it up offline)",
                key.display()
            );
        }
        Command::Id { key } => {
            let pair = keys::load(&key)?;
            println!("{}", pair.id());
        }
    }
    Ok(())
}
