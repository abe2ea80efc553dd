//! The `medmesh-sim` command: network simulations of medmesh.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_simulations::plot::AccuracyAxis;

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
    /// Run a scenario file (see simulations/scenarios/ and simulations/SCENARIOS.md) for each of
    /// its seeds; writes OUT/scenario.toml (a copy of the file), OUT/rounds.csv (one row per
    /// round and seed), OUT/summary.json, the plots OUT/accuracy.png and OUT/consensus.png, and
    /// with --per-peer OUT/peers.csv.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "target/sim")]
        out: PathBuf,
        /// Run only these seeds instead of the scenario's (comma-separated).
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<u64>>,
        /// Also write OUT/peers.csv, a row per peer and measured round (as `[output] per_peer =
        /// true` in the scenario).
        #[arg(long)]
        per_peer: bool,
        /// The y axis of accuracy.png: `fit` (to the data) or `full` (0 to 1); default: the
        /// scenario's `[output] accuracy_axis`, else `fit`.
        #[arg(long, value_enum)]
        accuracy_axis: Option<AccuracyAxis>,
    },
    /// Run every combination of a grid of scenario variants (see simulations/README.md);
    /// writes OUT/compare.csv, OUT/compare.md, OUT/compare.png and each run under OUT/runs/.
    Compare {
        /// The grid file.
        grid: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "target/compare")]
        out: PathBuf,
        /// The y axis of every accuracy chart: `fit` (to the data) or `full` (0 to 1); default:
        /// each scenario's `[output] accuracy_axis` (compare.png: the first's), else `fit`.
        #[arg(long, value_enum)]
        accuracy_axis: Option<AccuracyAxis>,
    },
    /// Draw mean honest accuracy against the bytes sent between groups (the WAN) for runs of
    /// scenarios with `[network.groups]`, one line each (e.g. two-level against flat).
    Wan {
        /// A run's output folder (holding its rounds.csv), as `LEGEND=FOLDER` or `FOLDER`.
        #[arg(long = "run", required = true)]
        runs: Vec<String>,
        /// The image to write.
        #[arg(long, default_value = "target/sim/wan.png")]
        out: PathBuf,
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
            per_peer,
            accuracy_axis,
        } => {
            let mut loaded = medmesh_simulations::scenario::Scenario::load(&scenario)?;
            if let Some(seeds) = seeds {
                loaded.seeds = seeds;
            }
            loaded.output.per_peer |= per_peer;
            if let Some(axis) = accuracy_axis {
                loaded.output.accuracy_axis = axis;
            }
            let summary =
                medmesh_simulations::scenario::run(&loaded, &out, |line| eprintln!("{line}"))?;
            let consensus = summary.final_consensus.iter().sum::<f64>()
                / summary.final_consensus.len().max(1) as f64;
            let failed = if summary.failed_merges > 0 {
                format!(", {} failed merges", summary.failed_merges)
            } else {
                String::new()
            };
            // Averaging-only runs measure no accuracy.
            let accuracy = if summary.mean_accuracy.is_nan() {
                String::new()
            } else {
                format!("mean accuracy {:.3}, ", summary.mean_accuracy)
            };
            let gap = match (summary.spectral_gap, summary.two_level_gap) {
                (Some(gap), _) | (None, Some(gap)) => format!(" (spectral gap {gap:.3e})"),
                (None, None) => String::new(),
            };
            println!(
                "{}: {accuracy}final consensus distance {consensus:.2e}{gap} over seeds {:?} ({} \
                 peers, {} attackers{failed}); {:.1} s, {:.0} peer-rounds/s",
                summary.name,
                summary.seeds,
                summary.peers,
                summary.attackers,
                summary.wall_seconds,
                summary.peer_rounds_per_second
            );
            medmesh_simulations::plot::write_run_plots(
                &out,
                &summary.name,
                plot_font().as_ref(),
                loaded.output.accuracy_axis,
            )?;
            eprintln!(
                "wrote {0}/scenario.toml, {0}/rounds.csv{1} and {0}/summary.json",
                out.display(),
                if loaded.output.per_peer {
                    format!(", {}/peers.csv", out.display())
                } else {
                    String::new()
                }
            );
            eprintln!(
                "wrote {}/accuracy.png and {}/consensus.png",
                out.display(),
                out.display()
            );
        }
        Command::Wan { runs, out } => {
            let runs: Vec<(String, PathBuf)> = runs
                .iter()
                .map(|r| match r.split_once('=') {
                    Some((name, dir)) => (name.to_owned(), PathBuf::from(dir)),
                    None => {
                        let dir = PathBuf::from(r);
                        let name = dir
                            .file_name()
                            .map_or_else(|| r.clone(), |n| n.to_string_lossy().into_owned());
                        (name, dir)
                    }
                })
                .collect();
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            println!(
                "| run | mean accuracy | WAN bytes per run | WAN bytes vs the last run | final consensus distance | two-level spectral gap |"
            );
            println!("|---|---|---|---|---|---|");
            let summaries = runs
                .iter()
                .map(|(name, dir)| {
                    let path = dir.join("summary.json");
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let summary: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a run summary", path.display()))?;
                    Ok((name, summary))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let number = |s: &serde_json::Value, key: &str| s[key].as_f64().unwrap_or(f64::NAN);
            let last = summaries
                .last()
                .map_or(f64::NAN, |(_, s)| number(s, "wan_bytes"));
            for (name, s) in &summaries {
                let consensus: Vec<f64> = s["final_consensus"]
                    .as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                    .unwrap_or_default();
                let wan = number(s, "wan_bytes");
                println!(
                    "| {name} | {:.3} | {:.0} | {:.2} | {:.2e} | {} |",
                    number(s, "mean_accuracy"),
                    wan,
                    wan / last,
                    consensus.iter().sum::<f64>() / consensus.len().max(1) as f64,
                    s["two_level_gap"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |g| format!("{g:.3}"))
                );
            }
            medmesh_simulations::plot::write_wan_plot(&runs, &out, plot_font().as_ref())?;
            eprintln!("wrote {}", out.display());
        }
        Command::Compare {
            grid,
            out,
            accuracy_axis,
        } => {
            let grid = medmesh_simulations::compare::Grid::load(&grid)?;
            let font = plot_font();
            let outcomes = medmesh_simulations::compare::run_with(
                &grid,
                &out,
                font.as_ref(),
                accuracy_axis,
                |line| eprintln!("{line}"),
            )?;
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
