//! A whole mesh on one machine: every site of a dataset becomes a hospital with its own key,
//! store, config and `medmesh run` process on loopback. The founders' genesis roster is signed
//! by all of them; each node knows the others only as bootstrap addresses. This is the README's
//! main job and the multi-process integration test; nothing here is special-cased in the node.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer;
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use serde::Serialize;

use crate::config::{DataConfig, NodeConfig};
use crate::data::Dataset;
use crate::learner::{Learner, ModelSpec, Optimizer, TchLearner, TrainConfig};
use crate::network::NetworkConfig;
use crate::node::{Outcome, write_roster};
use crate::{keys, network};

/// Settings of a local mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The dataset's schema; one hospital per site.
    #[arg(long, default_value = "data/heart-disease/schema.toml")]
    pub data: PathBuf,
    /// Working folder for keys, stores, configs and logs (reused runs resume from their stores).
    #[arg(long, default_value = "target/mesh")]
    pub dir: PathBuf,
    /// Rounds of decentralized training.
    #[arg(long, default_value_t = 15)]
    pub rounds: u64,
    /// Local optimizer steps per round.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Seed of the shared initialization and of every peer's choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give up if the mesh has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Continue from the stores of a previous run in the same folder instead of starting over.
    #[arg(long)]
    pub resume: bool,
}

/// The mesh's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per hospital: site, final-model test accuracy on its own split, local-only accuracy.
    pub hospitals: Vec<Hospital>,
    /// Mean over hospitals of the final model's test accuracy.
    pub mean_accuracy: f64,
    /// Mean over hospitals of local-only training's accuracy on its own test split.
    pub mean_local_accuracy: f64,
    /// Mean over hospitals of local-only training's mean accuracy over every test split
    /// (FLamby's "local" metric: how well a model trained alone generalizes).
    pub mean_local_generalization: f64,
    /// Largest L2 distance between two hospitals' final parameters, relative to their norm.
    pub max_relative_distance: f64,
    /// Seconds until every hospital finished.
    pub seconds: f64,
}

/// One hospital's line.
#[derive(Debug, Clone, Serialize)]
pub struct Hospital {
    /// Site name.
    pub site: String,
    /// Test accuracy of the mesh's final model on this hospital's test split.
    pub accuracy: f64,
    /// Test AUC of the mesh's final model.
    pub auc: Option<f64>,
    /// Test accuracy of a model trained on this hospital's data alone, same budget, on this
    /// hospital's test split.
    pub local_accuracy: f64,
    /// That model's mean accuracy over every hospital's test split.
    pub local_generalization: f64,
    /// Messages this hospital rejected.
    pub rejected: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sets up and runs the mesh with the `medmesh` binary at `exe`; `progress` gets status lines.
pub fn run(
    options: &Options,
    exe: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    let dataset = Dataset::load(&options.data)?;
    let schema = std::fs::canonicalize(&options.data)?;
    std::fs::create_dir_all(&options.dir)?;
    let dir = std::fs::canonicalize(&options.dir)?;
    let inputs = i64::try_from(dataset.features.len())?;

    // Keys and addresses.
    let mut sites = Vec::new();
    for site in &dataset.sites {
        let home = dir.join(&site.name);
        std::fs::create_dir_all(&home)?;
        let key = keys::load_or_generate(&home.join("key.pem"))?;
        let port = free_port()?;
        let peer_id = network::peer_id(&key.id())?;
        let address = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}");
        sites.push((site.name.clone(), home, key, port, address));
    }

    // The founders' genesis roster, signed by every founder. With --resume the stores and the
    // roster of the previous run are kept; new ports reach the configs' bootstrap lists.
    let members = sites
        .iter()
        .map(|(name, _, key, _, address)| Member {
            id: key.id(),
            name: format!("{name} hospital"),
            site: name.clone(),
            country: "US".into(),
            role: Role::Hospital,
            addresses: vec![address.clone()],
        })
        .collect();
    let threshold = u32::try_from(sites.len() / 2 + 1)?;
    let mut genesis = SignedRoster::new(Roster::genesis(
        format!("{}-mesh", dataset.name),
        threshold,
        members,
    )?);
    for (_, _, key, _, _) in &sites {
        genesis.sign(key);
    }
    let genesis_path = dir.join("roster.json");
    if !options.resume {
        for (_, home, ..) in &sites {
            let store = home.join("store.redb");
            if store.exists() {
                std::fs::remove_file(&store)?;
            }
        }
    }
    if !options.resume || !genesis_path.exists() {
        write_roster(&genesis_path, &genesis)?;
    }

    let mut children = Children(Vec::new());
    let started = Instant::now();
    for (i, (name, home, _, port, _)) in sites.iter().enumerate() {
        let result = home.join("result.json");
        let _ = std::fs::remove_file(&result);
        let config = NodeConfig {
            key: home.join("key.pem"),
            store: home.join("store.redb"),
            genesis: genesis_path.clone(),
            init_seed: options.seed,
            linger_ms: 20_000,
            results: Some(result),
            admin: None,
            min_peers: None,
            start_timeout_ms: 60_000,
            data: DataConfig {
                schema: schema.clone(),
                site: name.clone(),
            },
            model: ModelSpec::Logistic { inputs },
            training: TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                lr: options.lr,
                batch_size: 4,
                local_steps: options.steps,
                seed: options.seed.wrapping_add(i as u64),
                ..TrainConfig::default()
            },
            experiment: peer::Config {
                experiment: dataset.name.clone(),
                rule: Rule::Mean,
                fanout: sites.len() - 1,
                max_rounds: Some(options.rounds),
                round_timeout: Duration::from_secs(60),
                fetch_timeout: Duration::from_secs(20),
                seed: options.seed.wrapping_add(100 + i as u64),
                ..peer::Config::default()
            },
            network: NetworkConfig {
                listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse()?],
                bootstrap: sites
                    .iter()
                    .filter(|(other, ..)| other != name)
                    .map(|(.., address)| address.parse())
                    .collect::<Result<_, _>>()?,
                mdns: false,
                ..NetworkConfig::default()
            },
        };
        let config_path = home.join("node.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let log = std::fs::File::create(home.join("node.log"))?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        progress(&format!("started {name} (pid {}, port {port})", child.id()));
        children.0.push(child);
    }

    // Wait for every hospital's result, watching for crashed children.
    let deadline = started + Duration::from_secs(options.timeout);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; sites.len()];
    while outcomes.iter().any(Option::is_none) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mesh did not finish within {} s",
            options.timeout
        );
        for (i, (name, home, ..)) in sites.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(home.join("result.json"))
                && let Ok(outcome) = serde_json::from_str::<Outcome>(&text)
            {
                progress(&format!(
                    "{name} finished round {}: test accuracy {:.3}",
                    outcome.rounds, outcome.test.accuracy
                ));
                outcomes[i] = Some(outcome);
            } else if let Some(status) = children.0[i].try_wait()? {
                anyhow::bail!(
                    "{name}'s node exited with {status} before finishing; see {}",
                    home.join("node.log").display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();

    // Local-only training with the same budget, for comparison.
    let mut hospitals = Vec::new();
    for (site, outcome) in dataset.sites.iter().zip(&outcomes) {
        let config = TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            lr: options.lr,
            batch_size: 4,
            seed: options.seed,
            ..TrainConfig::default()
        };
        let mut alone = TchLearner::new(
            ModelSpec::Logistic { inputs },
            config,
            options.seed,
            &site.train,
        )?;
        alone.train(options.steps * options.rounds as usize)?;
        let mut generalization = 0.0;
        for other in &dataset.sites {
            generalization += alone.evaluate(&other.test)?.accuracy / dataset.sites.len() as f64;
        }
        hospitals.push(Hospital {
            site: site.name.clone(),
            accuracy: outcome.test.accuracy,
            auc: outcome.test.auc,
            local_accuracy: alone.evaluate(&site.test)?.accuracy,
            local_generalization: generalization,
            rejected: outcome.rejections.values().sum(),
        });
    }
    let n = hospitals.len() as f64;
    let mut max_relative_distance = 0.0f64;
    for a in &outcomes {
        for b in &outcomes {
            let d: f64 = a
                .params
                .iter()
                .zip(&b.params)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = a
                .params
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            max_relative_distance = max_relative_distance.max(d / norm);
        }
    }
    Ok(Report {
        mean_accuracy: hospitals.iter().map(|h| h.accuracy).sum::<f64>() / n,
        mean_local_accuracy: hospitals.iter().map(|h| h.local_accuracy).sum::<f64>() / n,
        mean_local_generalization: hospitals
            .iter()
            .map(|h| h.local_generalization)
            .sum::<f64>()
            / n,
        hospitals,
        max_relative_distance,
        seconds,
    })
}

impl Report {
    /// The table as text.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "The mesh's final model is the same at every hospital; each tests it on its own split.\n\
             'alone' trains on one hospital's data with the same budget: tested on its own split,\n\
             and on every hospital's split (mean).\n",
        );
        out.push_str(&format!(
            "{:<14} {:>10} {:>8} {:>12} {:>16} {:>9}\n",
            "hospital", "mesh acc.", "AUC", "alone (own)", "alone (all)", "rejected"
        ));
        for h in &self.hospitals {
            out.push_str(&format!(
                "{:<14} {:>10.3} {:>8} {:>12.3} {:>16.3} {:>9}\n",
                h.site,
                h.accuracy,
                h.auc.map_or("-".into(), |a| format!("{a:.3}")),
                h.local_accuracy,
                h.local_generalization,
                h.rejected
            ));
        }
        out.push_str(&format!(
            "{:<14} {:>10.3} {:>8} {:>12.3} {:>16.3}\n",
            "mean",
            self.mean_accuracy,
            "",
            self.mean_local_accuracy,
            self.mean_local_generalization
        ));
        out.push_str(&format!(
            "all hospitals agree within {:.2e} (relative L2); {:.1} s\n",
            self.max_relative_distance, self.seconds
        ));
        out
    }
}
