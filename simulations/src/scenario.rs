//! Scenario files: a whole experiment in one TOML file — data and how it is split over peers,
//! the model and local training, the protocol's rule and fan-out, the simulated network, and
//! attackers — run for one or more seeds into `rounds.csv` and `summary.json`.
//!
//! ```toml
//! name = "heart-disease"
//! seeds = [42, 43, 44, 45, 46]
//! rounds = 15
//!
//! [data]
//! schema = "../../data/heart-disease/schema.toml"   # relative to the scenario file
//! split = { kind = "natural" }          # or { kind = "iid", peers = 64 } / { kind = "dirichlet", peers = 64, alpha = 0.5 }
//! # or, with no schema, a synthetic task (see the `synthetic` module):
//! # split = { kind = "synthetic", peers = 64, samples = 60, features = 13, alpha = 0.5 }
//!
//! [training]
//! lr = 0.01
//! batch_size = 4
//! local_steps = 100
//!
//! [protocol]
//! rule = { rule = "mean" }
//! fanout = 3
//! # gossip_reach = 14                   # each announcement heard by 14 random peers (default: all)
//! # outliers = { factor = 6.0, rounds = 3 }   # flag members whose versions stay far off
//!
//! [timing]                              # virtual training time per round
//! min_ms = 50.0
//! max_ms = 500.0
//! stragglers = { fraction = 0.2, slowdown = 5.0 }   # optional: a seeded 20 % train 5x slower
//!
//! [[network.partition]]                 # optional, repeatable: two halves cut from 30 s to 60 s
//! at = 30.0
//! heal = 60.0
//! groups = 2
//!
//! [network.churn]                       # optional: a seeded 10 % go offline 5 s every 40 s
//! fraction = 0.1
//! down = 5.0
//! every = 40.0
//! # outages = [{ peer = 3, at = 10.0, down = 5.0 }]
//!
//! [attack]                              # optional: Byzantine members (see the `attack` module)
//! kind = "sign_flip"                    # "noise", "alie", "model_replacement", "stale_replay",
//!                                       # "forged_signature", "equivocation" or "none"
//! fraction = 0.2
//! placement = "random"                  # or "first"
//! scale = 10.0                          # sign flip: start - scale * honest update
//! ```
//!
//! Everything random is derived from the seed; a run never reads the clock except to report its
//! own wall time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use medmesh_learning::data::{Dataset, Table};
use medmesh_learning::learner::ModelSpec;
use medmesh_learning::privacy::DpConfig;
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::{Config, Outliers, TwoLevel};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

pub use crate::attack::{Attack, AttackKind, Placement};
use crate::attack::{Byzantine, Poisoned};
use crate::native::{Local, Logistic};
#[cfg(feature = "torch")]
use crate::torch::Torch;
use crate::{
    Evaluate, Learner, Network, Setup, Sim, Stragglers, Training, grouped_genesis, keys, synthetic,
};

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, used in outputs.
    pub name: String,
    /// One run per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Rounds per peer.
    pub rounds: u64,
    /// Data and its split.
    pub data: DataSpec,
    /// Local training.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Protocol settings.
    #[serde(default)]
    pub protocol: ProtocolSpec,
    /// The simulated network.
    #[serde(default)]
    pub network: Network,
    /// Simulated training time.
    #[serde(default)]
    pub timing: TimingSpec,
    /// Byzantine members, if any.
    #[serde(default)]
    pub attack: Attack,
}

fn default_seeds() -> Vec<u64> {
    vec![42]
}

/// Where the data comes from and how it is spread over peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A dataset schema (see medmesh-node's `data` module), relative to the scenario file;
    /// not needed by a synthetic split.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// How rows are assigned to peers.
    #[serde(default)]
    pub split: Split,
}

/// Assignment of rows to peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Split {
    /// One peer per site of the dataset (hospitals as they are).
    #[default]
    Natural,
    /// Each site's train rows dealt at random to `per_site` peers (its branch hospitals), who
    /// all test on the site's test rows; peers are numbered site by site, so
    /// `[network.groups] size = per_site` makes each site a group.
    Sites {
        /// Peers per site; at least 1.
        per_site: usize,
    },
    /// Pooled train rows dealt uniformly at random to `peers`; each peer tests on the pooled
    /// test rows.
    Iid {
        /// Number of peers.
        peers: usize,
    },
    /// Label skew: each class's train rows spread over `peers` by Dirichlet(`alpha`)
    /// proportions; each peer tests on the pooled test rows.
    Dirichlet {
        /// Number of peers.
        peers: usize,
        /// Concentration (small = very skewed).
        alpha: f64,
    },
    /// A generated "heart-disease-like" task (no dataset needed); every peer tests on one shared
    /// held-out set.
    Synthetic(synthetic::Spec),
}

/// Simulated training time, in virtual milliseconds (uniform in `[min_ms, max_ms]`), and slow
/// trainers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingSpec {
    /// Shortest training time.
    pub min_ms: f64,
    /// Longest training time.
    pub max_ms: f64,
    /// A seeded subset of peers that train slower, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stragglers: Option<Stragglers>,
}

impl Default for TimingSpec {
    fn default() -> Self {
        let Training { min_ms, max_ms } = Training::default();
        Self {
            min_ms,
            max_ms,
            stragglers: None,
        }
    }
}

impl TimingSpec {
    /// Training times as the simulator takes them.
    pub fn training(&self) -> Training {
        Training {
            min_ms: self.min_ms,
            max_ms: self.max_ms,
        }
    }
}

/// Local training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// SGD learning rate.
    pub lr: f32,
    /// Batch size.
    pub batch_size: usize,
    /// SGD steps per round.
    pub local_steps: usize,
    /// Train this model with the node's libtorch trainer (one per peer, for tens of peers), e.g.
    /// `model = { kind = "mlp", inputs = 13, hidden = [16] }` or a TorchScript module
    /// (`{ kind = "torch_script", path = "model.pt", task = "binary" }`, relative to the working
    /// directory). Without it: the native logistic regression, fast enough for 10,000 peers.
    pub model: Option<ModelSpec>,
    /// DP-SGD (with `model` only), e.g. `dp = { noise_multiplier = 1.1, max_grad_norm = 1.0,
    /// delta = 1e-5 }`; its noise is always seeded from the scenario's seed here
    /// (`seeded_noise`), so runs repeat.
    pub dp: Option<DpConfig>,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            lr: 0.01,
            batch_size: 4,
            local_steps: 100,
            model: None,
            dp: None,
        }
    }
}

/// Protocol settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolSpec {
    /// Merge rule.
    pub rule: Rule,
    /// Versions pulled per round.
    pub fanout: usize,
    /// A round closes after this long whatever arrived (milliseconds).
    pub round_timeout_ms: u64,
    /// How many random peers hear each announcement, as a bounded gossip mesh delivers it;
    /// `None` = every peer (exact, but O(n²) messages per round).
    pub gossip_reach: Option<usize>,
    /// Flag and exclude persistent outliers (`outliers = { factor = 4.0, rounds = 3 }`); off
    /// when absent.
    pub outliers: Option<Outliers>,
    /// Two-level averaging over `[network.groups]`, e.g.
    /// `two_level = { across = "every", rounds = 5 }`: `fanout` versions of the own group each
    /// round, one of every other group every 5th round and the last (see
    /// `medmesh_protocol::peer::TwoLevel`); flat when absent.
    pub two_level: Option<TwoLevel>,
}

impl Default for ProtocolSpec {
    fn default() -> Self {
        Self {
            rule: Rule::Mean,
            fanout: 3,
            round_timeout_ms: 10_000,
            gossip_reach: None,
            outliers: None,
            two_level: None,
        }
    }
}

/// One round of one seed, as a `rounds.csv` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    /// Seed of the run.
    pub seed: u64,
    /// Round every honest peer has completed.
    pub round: u64,
    /// Virtual seconds.
    pub virtual_seconds: f64,
    /// Mean over honest peers of their model's accuracy on their test rows.
    pub mean_accuracy: f64,
    /// Lowest honest peer's accuracy.
    pub min_accuracy: f64,
    /// Mean distance of honest peers' models to their average.
    pub consensus_distance: f64,
    /// Gossip messages delivered so far.
    pub messages: u64,
    /// Gossip plus payload bytes so far.
    pub bytes: u64,
    /// Of those, the bytes between groups (the WAN; 0 without `[network.groups]`).
    pub wan_bytes: u64,
    /// Rejected messages so far.
    pub rejections: u64,
}

/// What a scenario run ends with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub name: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Final mean honest accuracy per seed.
    pub final_accuracy: Vec<f64>,
    /// Final accuracy of each peer on its own test rows, per seed (`None` for attackers), to
    /// compare the same honest peers across runs.
    pub peer_accuracy: Vec<Vec<Option<f64>>>,
    /// Mean over seeds.
    pub mean_accuracy: f64,
    /// Final consensus distance per seed.
    pub final_consensus: Vec<f64>,
    /// Bytes between groups (the WAN) per run, mean over seeds (0 without `[network.groups]`).
    pub wan_bytes: f64,
    /// Bytes between groups per seed.
    pub seed_wan_bytes: Vec<u64>,
    /// Under two-level averaging over groups of equal size, the spectral gap per round of its
    /// expected mixing (`topology::two_level_spectral_gap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub two_level_gap: Option<f64>,
    /// Peers per run.
    pub peers: usize,
    /// Attackers per run.
    pub attackers: usize,
    /// Wall time of all runs, seconds.
    pub wall_seconds: f64,
    /// Peer-rounds simulated per wall second.
    pub peer_rounds_per_second: f64,
    /// Rounds completed, summed over peers and seeds.
    pub peer_rounds: u64,
    /// Gossip messages delivered over all seeds; each one is decoded and its signature checked
    /// by the peer that receives it.
    pub gossip_messages: u64,
    /// Messages refused by honest and attacking peers, by reason, summed over seeds.
    pub rejections: BTreeMap<String, u64>,
    /// (honest peer, attacker) pairs where the peer flagged the attacker, summed over seeds.
    pub flagged_attackers: u64,
    /// (honest peer, honest author) pairs flagged: false alarms, summed over seeds.
    pub flagged_honest: u64,
}

impl Scenario {
    /// Reads a scenario file; relative data paths become relative to its folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut scenario: Scenario = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid scenario", path.display()))?;
        if let Some(schema) = &mut scenario.data.schema
            && schema.is_relative()
        {
            let base = path.parent().unwrap_or(Path::new("."));
            *schema = base.join(&*schema);
        }
        anyhow::ensure!(
            !scenario.seeds.is_empty(),
            "{}: at least one seed",
            path.display()
        );
        anyhow::ensure!(
            scenario.rounds > 0,
            "{}: rounds must be positive",
            path.display()
        );
        scenario
            .attack
            .check()
            .with_context(|| format!("{}: [attack]", path.display()))?;
        if let Split::Synthetic(spec) = &scenario.data.split {
            spec.check()
                .with_context(|| format!("{}: [data] split", path.display()))?;
        }
        scenario
            .network
            .check()
            .with_context(|| format!("{}: [network]", path.display()))?;
        if let Some(stragglers) = &scenario.timing.stragglers {
            stragglers
                .check()
                .with_context(|| format!("{}: [timing] stragglers", path.display()))?;
        }
        scenario
            .protocol
            .rule
            .check()
            .with_context(|| format!("{}: [protocol] rule", path.display()))?;
        anyhow::ensure!(
            scenario.protocol.two_level.is_none() || scenario.network.groups.is_some(),
            "{}: [protocol] two_level needs [network.groups] (whom to average with first)",
            path.display()
        );
        Ok(scenario)
    }

    /// Splits the data over peers: (train, test) per peer; peers that test on the same rows
    /// share one table.
    fn peers_data(&self, seed: u64) -> anyhow::Result<Vec<(Table, Arc<Table>)>> {
        let dataset = || -> anyhow::Result<Dataset> {
            let schema = self
                .data
                .schema
                .as_deref()
                .context("[data] schema is needed unless the split is synthetic")?;
            Ok(Dataset::load(schema)?)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a);
        Ok(match &self.data.split {
            Split::Synthetic(spec) => {
                let data = spec.generate(seed)?;
                let test = Arc::new(data.test);
                data.train
                    .into_iter()
                    .map(|t| (t, Arc::clone(&test)))
                    .collect()
            }
            Split::Natural => dataset()?
                .sites
                .into_iter()
                .map(|s| (s.train, Arc::new(s.test)))
                .collect(),
            Split::Sites { per_site } => {
                anyhow::ensure!(*per_site >= 1, "a sites split needs per_site >= 1");
                let mut peers = Vec::new();
                for site in dataset()?.sites {
                    anyhow::ensure!(
                        site.train.rows >= *per_site,
                        "site {:?} has {} train rows, fewer than per_site = {per_site}",
                        site.name,
                        site.train.rows
                    );
                    let test = Arc::new(site.test);
                    let mut rows: Vec<usize> = (0..site.train.rows).collect();
                    rows.shuffle(&mut rng);
                    let mut parts = vec![Vec::new(); *per_site];
                    for (k, r) in rows.into_iter().enumerate() {
                        parts[k % per_site].push(r);
                    }
                    peers.extend(
                        parts
                            .into_iter()
                            .map(|p| (select(&site.train, &p), Arc::clone(&test))),
                    );
                }
                peers
            }
            Split::Iid { peers } => {
                anyhow::ensure!(*peers >= 2, "an IID split needs at least 2 peers");
                let dataset = dataset()?;
                let train = dataset.pooled_train();
                let test = Arc::new(dataset.pooled_test());
                let mut rows: Vec<usize> = (0..train.rows).collect();
                rows.shuffle(&mut rng);
                let mut parts = vec![Vec::new(); *peers];
                for (k, r) in rows.into_iter().enumerate() {
                    parts[k % peers].push(r);
                }
                parts
                    .into_iter()
                    .map(|p| (select(&train, &p), Arc::clone(&test)))
                    .collect()
            }
            Split::Dirichlet { peers, alpha } => {
                anyhow::ensure!(
                    *peers >= 2 && *alpha > 0.0,
                    "a Dirichlet split needs peers >= 2 and alpha > 0"
                );
                let dataset = dataset()?;
                let train = dataset.pooled_train();
                let test = Arc::new(dataset.pooled_test());
                let gamma = Gamma::new(*alpha, 1.0)?;
                let mut parts = vec![Vec::new(); *peers];
                for class in [0.0f32, 1.0] {
                    let mut rows: Vec<usize> =
                        (0..train.rows).filter(|&i| train.y[i] == class).collect();
                    rows.shuffle(&mut rng);
                    let weights: Vec<f64> = (0..*peers).map(|_| gamma.sample(&mut rng)).collect();
                    let total: f64 = weights.iter().sum();
                    let mut start = 0usize;
                    let mut acc = 0.0;
                    for (p, w) in weights.iter().enumerate() {
                        acc += w / total;
                        let end = if p + 1 == *peers {
                            rows.len()
                        } else {
                            ((acc * rows.len() as f64) as usize).min(rows.len())
                        };
                        parts[p].extend_from_slice(&rows[start..end.max(start)]);
                        start = end.max(start);
                    }
                }
                // Every peer needs at least one row to train on.
                for part in &mut parts {
                    if part.is_empty() {
                        part.push(rng.random_range(0..train.rows));
                    }
                }
                parts
                    .into_iter()
                    .map(|p| (select(&train, &p), Arc::clone(&test)))
                    .collect()
            }
        })
    }
}

fn select(table: &Table, rows: &[usize]) -> Table {
    let mut out = Table {
        x: Vec::with_capacity(rows.len() * table.cols),
        rows: rows.len(),
        cols: table.cols,
        ..Table::default()
    };
    for &r in rows {
        out.x.extend_from_slice(table.row(r));
        if !table.y.is_empty() {
            out.y.push(table.y[r]);
        }
    }
    out
}

/// Runs every seed, writing `rounds.csv` and `summary.json` into `out`; `progress` gets a line
/// per finished seed.
pub fn run(
    scenario: &Scenario,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(out)?;
    let started = Instant::now();
    let mut csv = csv::Writer::from_path(out.join("rounds.csv"))?;
    let mut final_accuracy = Vec::new();
    let mut peer_accuracy = Vec::new();
    let mut final_consensus = Vec::new();
    let mut seed_wan_bytes = Vec::new();
    let mut peers = 0;
    let mut attackers = 0;
    let mut peer_rounds = 0u64;
    let mut gossip_messages = 0u64;
    let mut rejections = BTreeMap::<String, u64>::new();
    let (mut flagged_attackers, mut flagged_honest) = (0, 0);
    for &seed in &scenario.seeds {
        let data = scenario.peers_data(seed)?;
        peers = data.len();
        anyhow::ensure!(peers >= 2, "a scenario needs at least 2 peers");
        let is_attacker = scenario.attack.attackers(peers, seed);
        attackers = is_attacker.iter().filter(|a| **a).count();
        let samples: Vec<u64> = data.iter().map(|(t, _)| t.rows.max(1) as u64).collect();
        let training = &scenario.training;
        let learner = match &training.model {
            None => {
                anyhow::ensure!(
                    training.dp.is_none(),
                    "{}: `[training] dp` needs `[training] model` (DP-SGD runs in the libtorch \
                     trainer, not the native logistic regression)",
                    scenario.name
                );
                let locals: Vec<Local> = data
                    .into_iter()
                    .enumerate()
                    .map(|(i, (train, test))| Local::new(train, test, seed.wrapping_add(i as u64)))
                    .collect();
                Either::Native(Logistic::new(
                    locals,
                    training.lr,
                    training.batch_size,
                    training.local_steps,
                ))
            }
            #[cfg(feature = "torch")]
            Some(spec) => Either::Torch(Torch::new(
                spec,
                data,
                f64::from(training.lr),
                training.batch_size,
                training.local_steps,
                seed,
                training.dp,
            )?),
            #[cfg(not(feature = "torch"))]
            Some(_) => anyhow::bail!(
                "{}: `[training] model` needs the libtorch trainer, and this medmesh-sim was built \
                 without it (build with the default `torch` feature)",
                scenario.name
            ),
        };
        // The shared initialization: zeros for the native logistic regression, libtorch's
        // seeded initialization otherwise (a network started from zeros cannot break symmetry).
        let init = match &learner {
            Either::Native(native) => vec![0.0; native.dim()],
            #[cfg(feature = "torch")]
            Either::Torch(torch) => torch.init().to_vec(),
        };
        let k = keys(peers, seed);
        let groups = scenario
            .network
            .groups
            .as_ref()
            .map(|g| g.names(peers))
            .unwrap_or_default();
        let chain = grouped_genesis(&k, &groups)?;
        let config = Config {
            experiment: scenario.name.chars().take(64).collect(),
            rule: scenario.protocol.rule.clone(),
            fanout: scenario.protocol.fanout.min(peers - 1).max(1),
            max_rounds: Some(scenario.rounds),
            round_timeout: Duration::from_millis(scenario.protocol.round_timeout_ms),
            fetch_timeout: Duration::from_millis(scenario.protocol.round_timeout_ms / 2 + 1),
            outliers: scenario.protocol.outliers,
            two_level: scenario.protocol.two_level,
            ..Config::default()
        };
        let mut sim = Sim::new(
            Setup {
                keys: &k,
                chain: &chain,
                config,
                inits: vec![init; peers],
                samples,
                network: scenario.network.clone(),
                training: scenario.timing.training(),
                seed,
                neighbours: None,
                gossip_reach: scenario.protocol.gossip_reach,
            },
            Poisoned::new(learner, is_attacker.clone(), scenario.attack.clone(), seed),
        )?;
        if let Some(stragglers) = &scenario.timing.stragglers {
            sim.set_stragglers(stragglers)?;
        }
        if scenario.attack.kind.on_wire() {
            sim.set_adversary(Box::new(Byzantine::new(
                scenario.attack.clone(),
                is_attacker.clone(),
                &k,
                seed,
            )));
        }
        let mut shown = 0;
        let mut last = None;
        while !sim.all_finished() && sim.step()? {
            let done = sim.min_completed();
            if done > shown {
                shown = done;
                let row = measure(&sim, &is_attacker, seed, done);
                csv.serialize(&row)?;
                last = Some(row);
            }
        }
        #[cfg(feature = "torch")]
        if let Either::Torch(torch) = sim.learner().inner()
            && let Some(failure) = torch.failure()
        {
            anyhow::bail!("{} seed {seed}: libtorch failed: {failure}", scenario.name);
        }
        let row = measure(&sim, &is_attacker, seed, sim.min_completed());
        final_accuracy.push(row.mean_accuracy);
        peer_accuracy.push(
            (0..peers)
                .map(|i| (!is_attacker[i]).then(|| sim.evaluate(i)))
                .collect(),
        );
        final_consensus.push(row.consensus_distance);
        seed_wan_bytes.push(row.wan_bytes);
        let stats = sim.stats();
        peer_rounds += stats.rounds;
        gossip_messages += stats.gossip_messages;
        for (reason, count) in &stats.rejections {
            *rejections.entry(reason.clone()).or_default() += count;
        }
        let (of_attackers, of_honest) = crate::attack::flags(sim.peers(), &is_attacker);
        flagged_attackers += of_attackers;
        flagged_honest += of_honest;
        progress(&format!(
            "{} seed {seed}: {} rounds, mean honest accuracy {:.3}, consensus distance {:.2e}",
            scenario.name, row.round, row.mean_accuracy, row.consensus_distance
        ));
        if last.as_ref() != Some(&row) {
            csv.serialize(&row)?;
        }
    }
    csv.flush()?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        name: scenario.name.clone(),
        seeds: scenario.seeds.clone(),
        mean_accuracy: final_accuracy.iter().sum::<f64>() / final_accuracy.len().max(1) as f64,
        final_accuracy,
        peer_accuracy,
        final_consensus,
        wan_bytes: seed_wan_bytes.iter().map(|b| *b as f64).sum::<f64>()
            / seed_wan_bytes.len().max(1) as f64,
        seed_wan_bytes,
        two_level_gap: match (&scenario.network.groups, scenario.protocol.two_level) {
            (Some(g), Some(schedule)) if g.size > 0 && peers % g.size == 0 => {
                crate::topology::two_level_spectral_gap(
                    peers / g.size,
                    g.size,
                    scenario.protocol.fanout,
                    schedule,
                )
                .ok()
            }
            _ => None,
        },
        peers,
        attackers,
        wall_seconds,
        peer_rounds_per_second: peer_rounds as f64 / wall_seconds.max(1e-9),
        peer_rounds,
        gossip_messages,
        rejections,
        flagged_attackers,
        flagged_honest,
    };
    let mut file = std::fs::File::create(out.join("summary.json"))?;
    writeln!(file, "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(summary)
}

/// The learner a scenario asked for.
#[derive(Debug)]
enum Either {
    Native(Logistic),
    #[cfg(feature = "torch")]
    Torch(Torch),
}

impl Learner for Either {
    fn train(&mut self, peer: usize, round: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
        match self {
            Either::Native(l) => l.train(peer, round, params),
            #[cfg(feature = "torch")]
            Either::Torch(l) => l.train(peer, round, params),
        }
    }
}

impl Evaluate for Either {
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64 {
        match self {
            Either::Native(l) => l.accuracy(peer, params),
            #[cfg(feature = "torch")]
            Either::Torch(l) => l.accuracy(peer, params),
        }
    }
}

/// Honest peers' accuracy on their own test rows and their consensus distance.
fn measure<L: Learner + Evaluate>(
    sim: &Sim<L>,
    attacker: &[bool],
    seed: u64,
    round: u64,
) -> RoundRow {
    let honest: Vec<usize> = (0..attacker.len()).filter(|&i| !attacker[i]).collect();
    let models: Vec<Vec<f32>> = honest.iter().map(|&i| sim.models()[i].clone()).collect();
    let accuracies: Vec<f64> = honest.iter().map(|&i| sim.evaluate(i)).collect();
    let stats = sim.stats();
    RoundRow {
        seed,
        round,
        virtual_seconds: sim.now().as_secs_f64(),
        mean_accuracy: accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64,
        min_accuracy: accuracies.iter().copied().fold(f64::INFINITY, f64::min),
        consensus_distance: crate::consensus_distance(&models),
        messages: stats.gossip_messages,
        bytes: stats.gossip_bytes + stats.payload_bytes,
        wan_bytes: stats.wan_bytes,
        rejections: stats.rejections.values().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

    #[test]
    fn heart_disease_scenario_matches_flamby_level_accuracy() {
        let mut scenario =
            Scenario::load(&Path::new(SCENARIOS).join("heart-disease.toml")).expect("loads");
        assert_eq!(scenario.seeds, vec![42, 43, 44, 45, 46]);
        scenario.seeds.truncate(2);
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(summary.peers, 4);
        assert!(
            summary.mean_accuracy >= 0.72,
            "mean per-center accuracy {}",
            summary.mean_accuracy
        );
        assert!(
            summary.final_consensus.iter().all(|c| *c < 1e-4),
            "{:?}",
            summary.final_consensus
        );
        let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
        assert!(csv.starts_with("seed,round,virtual_seconds,mean_accuracy"));
        assert_eq!(csv.lines().count(), 1 + 2 * 15, "a row per round per seed");
        let again = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(
            again.final_accuracy, summary.final_accuracy,
            "same seeds, same results"
        );
    }

    #[cfg(feature = "torch")]
    #[test]
    fn the_nodes_libtorch_trainer_runs_inside_the_simulator_deterministically() {
        let mut scenario =
            Scenario::load(&Path::new(SCENARIOS).join("heart-disease-torch.toml")).expect("loads");
        assert!(matches!(
            scenario.training.model,
            Some(ModelSpec::Mlp { .. })
        ));
        scenario.seeds = vec![42];
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(summary.peers, 4);
        assert!(
            summary.mean_accuracy >= 0.72,
            "MLP mean per-center accuracy {}",
            summary.mean_accuracy
        );
        assert!(
            summary.final_consensus[0] < 1e-4,
            "{:?}",
            summary.final_consensus
        );
        let again = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(again.final_accuracy, summary.final_accuracy);

        // A model the simulator cannot score is refused before anything runs.
        scenario.training.model = Some(ModelSpec::Cox { inputs: 13 });
        let error = run(&scenario, dir.path(), |_| {}).expect_err("survival model");
        assert!(error.to_string().contains("binary"), "{error}");
        // A model that does not fit the data names the peer and the mismatch.
        scenario.training.model = Some(ModelSpec::Logistic { inputs: 5 });
        let error = run(&scenario, dir.path(), |_| {}).expect_err("wrong width");
        assert!(error.to_string().contains("peer 0"), "{error}");
    }

    #[test]
    fn robust_rules_survive_sign_flip_attackers_where_the_mean_collapses() {
        let base = Scenario::load(&Path::new(SCENARIOS).join("sign-flip.toml")).expect("loads");
        assert_eq!(base.protocol.rule, Rule::TrimmedMean { trim: 4 });
        let dir = tempfile::tempdir().expect("tempdir");
        let run_with = |rule: Rule, fraction: f64| {
            let mut s = base.clone();
            s.protocol.rule = rule;
            s.attack.fraction = fraction;
            run(&s, dir.path(), |_| {}).expect("runs").mean_accuracy
        };
        let clean = run_with(Rule::Mean, 0.0);
        let attacked_mean = run_with(Rule::Mean, 0.2);
        let attacked_trimmed = run_with(Rule::TrimmedMean { trim: 4 }, 0.2);
        let attacked_median = run_with(Rule::Median, 0.2);
        assert!(clean > 0.72, "clean accuracy {clean}");
        assert!(
            attacked_mean < clean - 0.2,
            "plain mean should collapse: {attacked_mean} vs {clean}"
        );
        assert!(
            attacked_trimmed > clean - 0.02,
            "trimmed mean keeps honest accuracy: {attacked_trimmed} vs {clean}"
        );
        // The median gives up a little more accuracy but stays far from the collapse.
        assert!(
            attacked_median > clean - 0.05,
            "median: {attacked_median} vs {clean}"
        );
    }

    #[test]
    fn fault_settings_parse_and_bad_ranges_are_refused() {
        let text = r#"
            name = "f"
            rounds = 2
            [data]
            split = { kind = "synthetic", peers = 8 }
            [timing]
            stragglers = { fraction = 0.25, slowdown = 3.0 }
            [[network.partition]]
            at = 1.0
            heal = 2.0
            [network.churn]
            fraction = 0.25
            down = 1.0
            every = 4.0
            outages = [{ peer = 1, at = 0.5, down = 1.0 }]
        "#;
        let scenario: Scenario = toml::from_str(text).expect("parses");
        assert_eq!(scenario.network.partition[0].groups, 2, "halves by default");
        assert!(scenario.network.check().is_ok());
        let churn = scenario.network.churn.as_ref().expect("churn");
        assert_eq!(churn.outages[0].peer, 1);
        let bad: Scenario =
            toml::from_str(&text.replace("every = 4.0", "every = 0.5")).expect("parses");
        assert!(bad.network.check().is_err(), "every must exceed down");
        let bad: Scenario =
            toml::from_str(&text.replace("heal = 2.0", "heal = 0.5")).expect("parses");
        assert!(bad.network.check().is_err(), "heal after at");
        assert!(toml::from_str::<Scenario>(&text.replace("slowdown", "slow")).is_err());
    }

    #[test]
    fn synthetic_split_needs_no_schema_and_refuses_unknown_fields() {
        let text = r#"
            name = "s"
            rounds = 2
            [data]
            split = { kind = "synthetic", peers = 8, samples = 20, alpha = 0.5 }
            [protocol]
            gossip_reach = 4
            [attack]
            kind = "stale_replay"
            fraction = 0.25
            placement = "first"
        "#;
        let scenario: Scenario = toml::from_str(text).expect("parses");
        assert_eq!(scenario.data.schema, None);
        assert_eq!(
            scenario.data.split,
            Split::Synthetic(synthetic::Spec {
                peers: 8,
                samples: 20,
                alpha: Some(0.5),
                ..synthetic::Spec::default()
            })
        );
        assert_eq!(scenario.protocol.gossip_reach, Some(4));
        assert_eq!(scenario.attack.placement, Placement::First);
        let data = scenario.peers_data(1).expect("generates");
        assert_eq!(data.len(), 8);
        assert!(
            data.iter().all(|(_, test)| Arc::ptr_eq(test, &data[0].1)),
            "one shared test set"
        );
        let typo = text.replace("samples = 20", "sample = 20");
        assert!(toml::from_str::<Scenario>(&typo).is_err(), "unknown field");
    }
}
