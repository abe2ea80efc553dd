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
    /// Run a scenario file (see simulations/scenarios/) for each of its seeds; writes
    /// OUT/rounds.csv (one row per round and seed), OUT/summary.json, and the plots
    /// OUT/accuracy.png and OUT/consensus.png.
    Run {
        /// The scenario file.
        scenario: std::path::PathBuf,
        /// Output folder.
        #[arg(long, default_value = "target/sim")]
        out: std::path::PathBuf,
        /// Run only these seeds instead of the scenario's (comma-separated).
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<u64>>,
    },
    /// Run every combination of a grid of scenario variants (see simulations/README.md);
    /// writes OUT/compare.csv, OUT/compare.md, OUT/compare.png and each run under OUT/runs/.
    Compare {
        /// The grid file.
        grid: std::path::PathBuf,
        /// Output folder.
        #[arg(long, default_value = "target/compare")]
        out: std::path::PathBuf,
    },
    /// A mesh of hospitals averaging with no coordinator while an outsider injects forgeries.
    Demo(medmesh_simulations::demo::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            out,
            seeds,
        } => {
            let mut loaded = medmesh_simulations::scenario::Scenario::load(&scenario)?;
            if let Some(seeds) = seeds {
                loaded.seeds = seeds;
            }
            let summary =
                medmesh_simulations::scenario::run(&loaded, &out, |line| eprintln!("{line}"))?;
            println!(
                "{}: mean accuracy {:.3} over seeds {:?} ({} peers, {} attackers); {:.1} s, {:.0} peer-rounds/s",
                summary.name,
                summary.mean_accuracy,
                summary.seeds,
                summary.peers,
                summary.attackers,
                summary.wall_seconds,
                summary.peer_rounds_per_second
            );
            medmesh_simulations::plot::write_run_plots(&out, &summary.name, plot_font().as_ref())?;
            eprintln!(
                "wrote {}/rounds.csv and {}/summary.json",
                out.display(),
                out.display()
            );
            eprintln!(
                "wrote {}/accuracy.png and {}/consensus.png",
                out.display(),
                out.display()
            );
        }
        Command::Compare { grid, out } => {
            let grid = medmesh_simulations::compare::Grid::load(&grid)?;
            let font = plot_font();
            let outcomes = medmesh_simulations::compare::run(&grid, &out, font.as_ref(), |line| {
                eprintln!("{line}")
            })?;
            println!(
                "{} combinations; wrote {}/compare.md, compare.csv and compare.png",
                outcomes.len(),
                out.display()
            );
        }
        Command::Demo(options) => {
            let stdout = std::io::stdout();
            medmesh_simulations::demo::run(&options, &mut stdout.lock())?;
        }
    }
    Ok(())
}

/// The font for plot text; without one, plots are still written, without text.
fn plot_font() -> Option<medmesh_simulations::plot::Font> {
    medmesh_simulations::plot::Font::system()
        .inspect_err(|e| eprintln!("warning: {e}; plots are drawn without text"))
        .ok()
}
