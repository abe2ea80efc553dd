//! The `medmesh` command: the peer a hospital runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_node::learner::TrainConfig;
use medmesh_node::{baseline, keys};

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
    /// Reproduce the non-federated baselines (pooled, and each center alone) on a dataset.
    Baseline {
        /// The dataset's schema file.
        #[arg(long, default_value = "data/heart-disease/schema.toml")]
        data: PathBuf,
        /// Seeds, one run each.
        #[arg(long, value_delimiter = ',', default_value = "42,43,44,45,46")]
        seeds: Vec<u64>,
        /// Epochs over each training set.
        #[arg(long, default_value_t = 50)]
        epochs: usize,
        /// Learning rate (Adam).
        #[arg(long, default_value_t = 0.001)]
        lr: f64,
        /// Batch size.
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        /// Also write the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
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
        Command::Baseline {
            data,
            seeds,
            epochs,
            lr,
            batch_size,
            json,
        } => {
            let settings = baseline::Settings {
                seeds,
                epochs,
                train: TrainConfig {
                    lr,
                    batch_size,
                    ..TrainConfig::default()
                },
            };
            let report = baseline::run(&data, &settings, |line| eprintln!("{line}"))
                .with_context(|| format!("baseline on {}", data.display()))?;
            print!("{}", report.to_text());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
