//! `medmesh-train`: the training worker the `medmesh` peer starts (`medmesh-train worker`, which
//! speaks the frames of `medmesh_learning::frame` on its standard input and output), and the
//! non-federated baselines (`medmesh-train baseline`, also reached as `medmesh baseline`).

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_learning::data::Dataset;
use medmesh_learning::learner::TrainConfig;
use medmesh_trainer::{baseline, worker};

/// medmesh-train: local training with libtorch for medmesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve training requests on standard input and output (started by `medmesh run`; not
    /// for a terminal).
    Worker,
    /// Reproduce the non-federated baselines (pooled, and each center alone) on a dataset.
    Baseline {
        /// The dataset's schema file.
        #[arg(long, default_value = "data/heart-disease/schema.toml")]
        data: PathBuf,
        /// Seeds, one run each.
        #[arg(long, value_delimiter = ',', default_value = "42,43,44,45,46")]
        seeds: Vec<u64>,
        /// Epochs over each training set [default: FLamby's for the dataset's task: 50 for a
        /// binary task, 30 for survival].
        #[arg(long)]
        epochs: Option<usize>,
        /// Learning rate (Adam) [default: 0.001 for a binary task, 0.1 for survival].
        #[arg(long)]
        lr: Option<f64>,
        /// Batch size [default: 4 for a binary task, 8 for survival].
        #[arg(long)]
        batch_size: Option<usize>,
        /// Also write the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// The stream the worker's answers go to: its standard output, kept aside, after which file
/// descriptor 1 is pointed at standard error, so that anything else printing to standard output
/// (libtorch, a TorchScript module's `print`) lands in the peer's log and not in the protocol.
#[cfg(unix)]
fn protocol_output() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let kept = stdout
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate standard output")?;
    rustix::stdio::dup2_stdout(std::io::stderr().as_fd())
        .context("cannot point standard output at standard error")?;
    Ok(std::fs::File::from(kept))
}

/// Elsewhere the answers go to standard output as it is.
#[cfg(not(unix))]
fn protocol_output() -> anyhow::Result<std::io::Stdout> {
    Ok(std::io::stdout())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Worker => {
            let mut input = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            let mut output = BufWriter::with_capacity(1 << 20, protocol_output()?);
            worker::serve(&mut input, &mut output).context("medmesh-train worker")?;
        }
        Command::Baseline {
            data,
            seeds,
            epochs,
            lr,
            batch_size,
            json,
        } => {
            let data = medmesh_learning::data::find_shipped(&data).map_err(anyhow::Error::msg)?;
            // The model, metric and FLamby's settings follow the dataset's task.
            let task = Dataset::load(&data)
                .with_context(|| format!("cannot load {}", data.display()))?
                .task;
            let defaults = baseline::Settings::for_task(task);
            let settings = baseline::Settings {
                seeds,
                epochs: epochs.unwrap_or(defaults.epochs),
                train: TrainConfig {
                    lr: lr.unwrap_or(defaults.train.lr),
                    batch_size: batch_size.unwrap_or(defaults.train.batch_size),
                    ..defaults.train
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
