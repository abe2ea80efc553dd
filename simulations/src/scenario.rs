//! Scenario files: a whole experiment in one TOML file — data and how it is split over peers,
//! the model and local training, the protocol's rule and fan-out, the simulated network, and
//! attackers — run for one or more seeds into `rounds.csv` and `summary.json` (and, with
//! `[output] per_peer`, `peers.csv`).
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
//! [network]
//! payload_loss = 0.1                    # optional: a tenth of payload answers lost (retried)
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
//! [topology]                            # optional: a fixed graph or Epidemic-Learning sampling
//! kind = "ring"                         # see SCENARIOS.md; not with `two_level`
//!
//! [attack]                              # optional: Byzantine members (see the `attack` module)
//! kind = "sign_flip"                    # "noise", "alie", "model_replacement", "ipm",
//!                                       # "label_flip", "stale_replay", "forged_signature",
//!                                       # "equivocation" or "none"
//! fraction = 0.2
//! placement = "random"                  # or "first"
//! scale = 10.0                          # sign flip: start - scale * honest update
//! # epsilon = 0.5                       # ipm: start - epsilon * mean honest update
//!
//! [output]                              # optional
//! per_peer = true                       # also write peers.csv (a row per peer and round)
//! accuracy_axis = "full"                # accuracy.png from 0 to 1 (default "fit": to the data)
//! ```
//!
//! Every key, its type, unit, default and valid range is listed in `simulations/SCENARIOS.md`
//! (a test fails when a key is missing there). Every setting is checked when the file is read
//! ([`Scenario::load`]), and what depends on the number of peers before the first seed runs
//! ([`run`]); an error names the file, the key and the reason.
//!
//! Everything random is derived from the seed; a run never reads the clock except to report its
//! own wall time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use medmesh_learning::data::{Dataset, Table, Task};
use medmesh_learning::learner::{Init, ModelSpec, TrainConfig};
use medmesh_learning::privacy::DpConfig;
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::{Config, Outer, Outliers, TwoLevel};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};
use toml::Value;

pub use crate::attack::{Attack, AttackKind, Placement};
use crate::attack::{Byzantine, Poisoned};
use crate::native::{Local, Logistic};
pub use crate::plot::AccuracyAxis;
use crate::topology::Topology;
#[cfg(feature = "torch")]
use crate::torch::Torch;
use crate::{
    AveragingOnly, Evaluate, Learner, Network, Score, Setup, Sim, Stragglers, Training,
    grouped_genesis, keys, synthetic,
};

/// Salt of the generator of a run's graph (`[topology]`), so that it shifts no other draw.
const GRAPH_SALT: u64 = 0x7090_1097_0000_0005;
/// Salt of the generator of averaging-only runs' initial models.
const INIT_SALT: u64 = 0x1a17_0000_0000_0006;
/// Rounds at the end of a run averaged into `last5_mean_accuracy`.
const LAST_ROUNDS: usize = 5;

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
    /// Who averages with whom: a fixed graph (each peer pulls every neighbour's version each
    /// round, with Metropolis–Hastings weights unless `protocol.rule` says otherwise) or
    /// Epidemic-Learning sampling (`s` fresh random peers per round), e.g.
    /// `topology = { kind = "ring" }`; absent: flat sampling of `protocol.fanout` peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// What a run writes besides `rounds.csv` and `summary.json`, and how it draws its plots
    /// (`[output] per_peer = true`, `accuracy_axis = "full"`).
    #[serde(default)]
    pub output: OutputSpec,
    /// The file this scenario was read from and its text, for the run's outputs
    /// (`scenario.toml`, `summary.json`); `None` for a scenario built in code.
    #[serde(skip)]
    pub source: Option<Source>,
    /// Warnings found while reading the file (deprecated keys, questionable combinations),
    /// printed by [`run`] through its progress callback before the first seed.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Where a scenario was read from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its text, exactly as read.
    pub text: String,
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

/// What peers do between merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainingKind {
    /// Local SGD on each peer's rows (the native logistic regression, or `model`).
    #[default]
    LocalSgd,
    /// No training: peers start from seeded random models (uniform in `[-1, 1)`, the native
    /// model's size) and only average, which isolates consensus. Accuracy is not measured
    /// (empty in `rounds.csv`, `null` in `summary.json`); the consensus distance is the metric.
    AveragingOnly,
}

/// Local training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// `local_sgd` (default) or `averaging_only` (no training; consensus studies).
    pub kind: TrainingKind,
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
    /// Where a libtorch `model` starts (with `model` only): `"auto"` (zeros for logistic and
    /// cox, libtorch's seeded initialization otherwise; the node's default), `"libtorch"` or
    /// `"zeros"` (linear models only). The native logistic regression always starts from zeros.
    pub init: Init,
    /// DP-SGD (with `model` only), e.g. `dp = { noise_multiplier = 1.1, max_grad_norm = 1.0,
    /// delta = 1e-5 }`; its noise is always seeded from the scenario's seed here
    /// (`seeded_noise`), so runs repeat.
    pub dp: Option<DpConfig>,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            kind: TrainingKind::LocalSgd,
            lr: 0.01,
            batch_size: 4,
            local_steps: 100,
            model: None,
            init: Init::Auto,
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
    /// An outer optimizer on each round's merged pseudo-gradient, e.g.
    /// `outer = { optimizer = "nesterov", lr = 0.7, momentum = 0.9 }` (see
    /// `medmesh_protocol::peer::Outer`); plain averaging when absent or `"none"`. (The node's
    /// default is `Outer::RECOMMENDED`; scenarios that reproduce the node set it.)
    #[serde(with = "medmesh_protocol::peer::outer_setting")]
    pub outer: Option<Outer>,
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
            outer: None,
        }
    }
}

/// What a run writes besides `rounds.csv` and `summary.json` (`[output]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSpec {
    /// Also write `peers.csv`: a row per peer for every measured round of every seed (see
    /// [`PeerRow`]); off by default (10,000 peers × 100 rounds is a million rows).
    pub per_peer: bool,
    /// The y axis of `accuracy.png`: fitted to the data (`fit`, the default) or 0 to 1 (`full`).
    pub accuracy_axis: AccuracyAxis,
}

/// One peer in one measured round of one seed, as a `peers.csv` row (with
/// `[output] per_peer = true`). Columns only ever get added at the end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRow {
    /// Seed of the run.
    pub seed: u64,
    /// The round of the `rounds.csv` row measured with it (the lowest round every peer has
    /// completed). The state a run ended in repeats the last round, as in `rounds.csv`.
    pub round: u64,
    /// The peer's index.
    pub peer: usize,
    /// Whether the peer is an attacker.
    pub attacker: bool,
    /// Its latest model's accuracy on its own test rows (empty in averaging-only runs).
    pub accuracy: Option<f64>,
    /// Its binary cross-entropy on those rows (empty where the learner cannot tell).
    pub loss: Option<f64>,
    /// L2 distance of its model to the mean of the honest peers' models.
    pub consensus_distance: Option<f64>,
    /// Its ROC AUC on those rows (empty with one class, or where the learner cannot tell).
    pub auc: Option<f64>,
    /// Its C-index on those rows (a survival model only; empty without a comparable pair).
    pub c_index: Option<f64>,
}

/// One round of one seed, as a `rounds.csv` row. Columns only ever get added at the end.
/// Empty cells (`None`): accuracy in averaging-only runs and survival runs (scored by `c_index`
/// instead), `c_index` in binary runs, and every figure of a round that was not measured (see
/// `note`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    /// Seed of the run.
    pub seed: u64,
    /// Round every honest peer has completed.
    pub round: u64,
    /// Virtual seconds.
    pub virtual_seconds: Option<f64>,
    /// Mean over honest peers of their model's accuracy on their test rows.
    pub mean_accuracy: Option<f64>,
    /// Lowest honest peer's accuracy.
    pub min_accuracy: Option<f64>,
    /// Mean distance of honest peers' models to their average.
    pub consensus_distance: Option<f64>,
    /// Gossip messages delivered so far.
    pub messages: Option<u64>,
    /// Gossip plus payload bytes so far.
    pub bytes: Option<u64>,
    /// Of those, the bytes between groups (the WAN; 0 without `[network.groups]`).
    pub wan_bytes: Option<u64>,
    /// Rejected messages so far.
    pub rejections: Option<u64>,
    /// Merges so far whose rule refused its inputs, so that the peer kept its own model.
    pub failed_merges: Option<u64>,
    /// Why a row has no figures (the slowest peer skipped the round, or never reached it), or
    /// that it is the state the run ended in; empty otherwise.
    pub note: String,
    /// Highest honest peer's accuracy.
    pub max_accuracy: Option<f64>,
    /// Mean over honest peers of their model's binary cross-entropy on their test rows
    /// (over those whose learner reports one: every peer with the native or libtorch learner).
    pub loss: Option<f64>,
    /// Mean over honest peers of their model's ROC AUC on their test rows (over those whose
    /// rows hold both classes).
    pub auc: Option<f64>,
    /// Mean over honest peers of their survival model's C-index on their test rows (over those
    /// whose rows hold a comparable pair).
    pub c_index: Option<f64>,
}

impl RoundRow {
    /// A row without figures.
    fn unmeasured(seed: u64, round: u64, note: String) -> Self {
        Self {
            seed,
            round,
            virtual_seconds: None,
            mean_accuracy: None,
            min_accuracy: None,
            consensus_distance: None,
            messages: None,
            bytes: None,
            wan_bytes: None,
            rejections: None,
            failed_merges: None,
            note,
            max_accuracy: None,
            loss: None,
            auc: None,
            c_index: None,
        }
    }
}

/// What a scenario run ends with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub name: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Final mean honest accuracy per seed (NaN, written `null`, where nothing is scored by
    /// accuracy: averaging-only and survival runs).
    pub final_accuracy: Vec<f64>,
    /// Final accuracy of each peer on its own test rows, per seed (`None` for attackers), to
    /// compare the same honest peers across runs.
    pub peer_accuracy: Vec<Vec<Option<f64>>>,
    /// Mean over seeds.
    pub mean_accuracy: f64,
    /// A survival run's final mean honest C-index per seed (over the honest peers whose test
    /// rows hold a comparable pair); empty for other runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub final_c_index: Vec<Option<f64>>,
    /// Mean over seeds of `final_c_index` (over the seeds that have one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_c_index: Option<f64>,
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
    /// Merges whose rule refused its inputs (the peer kept its own model), summed over seeds.
    pub failed_merges: u64,
    /// Failed merges per seed.
    pub seed_failed_merges: Vec<u64>,
    /// Gossip messages and payload pulls dropped by partitions, offline peers and lost payload
    /// answers, summed over seeds.
    pub faults: u64,
    /// Of those, payload answers lost on their way (`network.payload_loss`), summed over seeds.
    pub payloads_lost: u64,
    /// Consensus distance of the initial models per seed (0 when every peer starts from the
    /// same model, as trained runs do).
    pub initial_consensus: Vec<f64>,
    /// Per seed, the mean honest accuracy averaged over its last 5 measured rounds (fewer if it
    /// has fewer): steadier than the final round alone.
    pub seed_last5_accuracy: Vec<f64>,
    /// Mean over seeds of `seed_last5_accuracy`.
    pub last5_mean_accuracy: f64,
    /// Sample standard deviation over seeds (n − 1) of the final mean honest accuracy; `None`
    /// with a single seed.
    pub std_accuracy: Option<f64>,
    /// With `[topology]`, the spectral gap of its mixing matrix on these peers
    /// (`topology::Topology::spectral_gap`, for the first seed's graph; Epidemic-Learning
    /// sampling: of the expected mixing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectral_gap: Option<f64>,
    /// The medmesh version that ran.
    pub medmesh_version: String,
    /// The scenario file's text as read (or, for a scenario built in code, as serialized).
    pub scenario: String,
}

impl Scenario {
    /// Reads a scenario file; relative data paths become relative to its folder. Every setting
    /// is checked (see [`Scenario::from_toml`]).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml(&text, path)
    }

    /// Reads a scenario from `text`, the contents of the file `path` (relative data paths
    /// become relative to its folder; errors name it). Refuses any setting out of range with
    /// the file, the key and the reason; collects warnings (deprecated keys) in
    /// [`Scenario::warnings`]. With a fixed-graph `[topology]` and no `protocol.rule`, the rule
    /// is Metropolis–Hastings (the weights whose spectral gap `topology` computes).
    pub fn from_toml(text: &str, path: &Path) -> anyhow::Result<Self> {
        let file = path.display().to_string();
        let raw: toml::Table =
            toml::from_str(text).with_context(|| format!("{file} is not valid TOML"))?;
        let mut scenario: Scenario =
            toml::from_str(text).with_context(|| format!("{file} is not a valid scenario"))?;
        if let Some(schema) = &mut scenario.data.schema
            && schema.is_relative()
        {
            let base = path.parent().unwrap_or(Path::new("."));
            *schema = base.join(&*schema);
        }
        let has = |key: &str| lookup(&raw, key).is_some();
        // Serde ignores extra keys next to a unit variant's tag (`{ kind = "ring", k = 2 }`):
        // refuse every key the parsed value does not have.
        let extra = |key: &str, parsed: Option<toml::Value>| -> anyhow::Result<()> {
            if let (Some(Value::Table(given)), Some(Value::Table(known))) =
                (lookup(&raw, key), parsed)
                && let Some(unknown) = given.keys().find(|k| !known.contains_key(*k))
            {
                anyhow::bail!("{file}: `{key}.{unknown}` is not a setting of this `{key}` kind");
            }
            Ok(())
        };
        extra(
            "topology",
            scenario
                .topology
                .as_ref()
                .and_then(|t| Value::try_from(t).ok()),
        )?;
        extra("data.split", Value::try_from(&scenario.data.split).ok())?;
        let mut warnings = Vec::new();
        for table in ["network", "network.groups"] {
            if has(&format!("{table}.bandwidth_mbps")) {
                warnings.push(format!(
                    "{file}: `{table}.bandwidth_mbps` is deprecated: the value is megabytes (not \
                     megabits) per second, so the key is now `{table}.bandwidth_mb_s` (same value)"
                ));
            }
        }
        if let Some(topology) = &scenario.topology {
            anyhow::ensure!(
                scenario.protocol.two_level.is_none(),
                "{file}: `topology` cannot be combined with `protocol.two_level`: two-level \
                 averaging picks its partners from `[network.groups]`, a topology from its graph \
                 (remove one of them)"
            );
            anyhow::ensure!(
                !has("protocol.fanout"),
                "{file}: `protocol.fanout` cannot be combined with `topology`: a fixed graph pulls \
                 every neighbour's version each round, and `epidemic_sampling` pulls `s` peers (its \
                 `s` is the fan-out)"
            );
            if topology.is_fixed() {
                anyhow::ensure!(
                    !has("protocol.gossip_reach"),
                    "{file}: `protocol.gossip_reach` cannot be combined with a fixed-graph \
                     `topology`: announcements travel along the graph's edges"
                );
                if !has("protocol.rule") {
                    scenario.protocol.rule = Rule::MetropolisHastings;
                } else if scenario.protocol.rule == Rule::Mean {
                    warnings.push(format!(
                        "{file}: `protocol.rule` = mean on a fixed-graph `topology` weighs \
                         neighbours by their samples, not by Metropolis–Hastings weights: on an \
                         irregular graph the average drifts toward well-connected peers, and the \
                         reported `spectral_gap` (which assumes metropolis_hastings) does not \
                         describe it"
                    ));
                }
            }
        }
        scenario.check(&file)?;
        scenario.source = Some(Source {
            path: path.to_owned(),
            text: text.to_owned(),
        });
        scenario.warnings = warnings;
        Ok(scenario)
    }

    /// Where errors say the scenario comes from: its file, else its name.
    fn origin(&self) -> String {
        self.source.as_ref().map_or_else(
            || format!("scenario {:?}", self.name),
            |s| s.path.display().to_string(),
        )
    }

    /// Checks every setting that does not depend on the number of peers; errors read
    /// `FILE: `key` = value: reason`.
    fn check(&self, file: &str) -> anyhow::Result<()> {
        let within =
            |result: anyhow::Result<()>| result.map_err(|e| anyhow::anyhow!("{file}: {e:#}"));
        anyhow::ensure!(
            !self.name.is_empty(),
            "{file}: `name` must not be empty (it names the experiment and its outputs)"
        );
        anyhow::ensure!(
            !self.seeds.is_empty(),
            "{file}: `seeds` must list at least one seed"
        );
        anyhow::ensure!(self.rounds > 0, "{file}: `rounds` must be positive");
        // [data]
        match &self.data.split {
            Split::Natural => {}
            Split::Sites { per_site } => anyhow::ensure!(
                *per_site >= 1,
                "{file}: `data.split.per_site` = 0 must be at least 1"
            ),
            Split::Iid { peers } => anyhow::ensure!(
                *peers >= 2,
                "{file}: `data.split.peers` = {peers} must be at least 2"
            ),
            Split::Dirichlet { peers, alpha } => {
                anyhow::ensure!(
                    *peers >= 2,
                    "{file}: `data.split.peers` = {peers} must be at least 2"
                );
                anyhow::ensure!(
                    alpha.is_finite() && *alpha > 0.0,
                    "{file}: `data.split.alpha` = {alpha} must be finite and > 0"
                );
            }
            Split::Synthetic(spec) => spec
                .check()
                .map_err(|e| anyhow::anyhow!("{file}: `data.split` (synthetic): {e}"))?,
        }
        anyhow::ensure!(
            matches!(self.data.split, Split::Synthetic(_)) || self.data.schema.is_some(),
            "{file}: `data.schema` is needed unless `data.split` is synthetic"
        );
        // [training]
        let training = &self.training;
        anyhow::ensure!(
            training.lr.is_finite() && training.lr >= 0.0,
            "{file}: `training.lr` = {} must be finite and >= 0",
            training.lr
        );
        anyhow::ensure!(
            training.batch_size >= 1,
            "{file}: `training.batch_size` = 0 must be at least 1"
        );
        anyhow::ensure!(
            training.dp.is_none() || training.model.is_some(),
            "{file}: `training.dp` needs `training.model` (DP-SGD runs in the libtorch trainer, \
             not the native logistic regression)"
        );
        if let Some(model) = &training.model {
            training
                .init
                .check(model)
                .map_err(|e| anyhow::anyhow!("{file}: `training.init`: {e}"))?;
        } else {
            anyhow::ensure!(
                training.init == Init::Auto,
                "{file}: `training.init` needs `training.model` (the native logistic regression \
                 always starts from zeros)"
            );
        }
        if let Some(dp) = &training.dp {
            dp.check()
                .map_err(|e| anyhow::anyhow!("{file}: `training.dp`: {e}"))?;
        }
        if training.kind == TrainingKind::AveragingOnly {
            anyhow::ensure!(
                training.model.is_none() && training.dp.is_none(),
                "{file}: `training.model` and `training.dp` have no effect with `training.kind` = \
                 \"averaging_only\" (nothing is trained): remove them"
            );
            anyhow::ensure!(
                !self.attack.kind.poisons(),
                "{file}: `attack.kind` = {:?} poisons trained parameters, and \
                 `training.kind` = \"averaging_only\" trains nothing",
                self.attack.kind
            );
        }
        // [protocol]
        let protocol = &self.protocol;
        within(
            protocol
                .rule
                .check()
                .map_err(|e| anyhow::anyhow!("`protocol.rule`: {e}")),
        )?;
        anyhow::ensure!(
            protocol.fanout >= 1,
            "{file}: `protocol.fanout` = 0 must be at least 1"
        );
        if let Rule::TrimmedMean { trim } = protocol.rule
            && self.topology.is_none()
        {
            anyhow::ensure!(
                protocol.fanout + 1 > 2 * trim,
                "{file}: `protocol.rule.trim` = {trim} is too large for `protocol.fanout` = {}: a \
                 merge sees at most fanout + 1 = {} models and a trimmed mean needs more than \
                 2 × trim = {} (use trim <= {} or fanout >= {})",
                protocol.fanout,
                protocol.fanout + 1,
                2 * trim,
                protocol.fanout / 2,
                2 * trim
            );
        }
        anyhow::ensure!(
            protocol.round_timeout_ms >= 1,
            "{file}: `protocol.round_timeout_ms` = 0 must be at least 1"
        );
        anyhow::ensure!(
            protocol.gossip_reach != Some(0),
            "{file}: `protocol.gossip_reach` = 0 must be at least 1 (leave it out for every peer)"
        );
        if let Some(o) = &protocol.outliers {
            anyhow::ensure!(
                o.factor.is_finite() && o.factor > 1.0,
                "{file}: `protocol.outliers.factor` = {} must be finite and > 1",
                o.factor
            );
            anyhow::ensure!(
                o.rounds >= 1,
                "{file}: `protocol.outliers.rounds` = 0 must be at least 1"
            );
        }
        if let Some(outer) = &protocol.outer {
            outer
                .check()
                .map_err(|e| anyhow::anyhow!("{file}: `protocol.outer`: {e}"))?;
        }
        match protocol.two_level {
            None => {}
            Some(TwoLevel::Every { rounds: 0 }) => {
                anyhow::bail!("{file}: `protocol.two_level.rounds` = 0 must be at least 1")
            }
            Some(TwoLevel::Fanout { groups: 0 }) => {
                anyhow::bail!("{file}: `protocol.two_level.groups` = 0 must be at least 1")
            }
            Some(_) => anyhow::ensure!(
                self.network.groups.is_some(),
                "{file}: `protocol.two_level` needs `[network.groups]` (whom to average with first)"
            ),
        }
        // [network], [timing]
        within(self.network.check())?;
        let timing = &self.timing;
        anyhow::ensure!(
            timing.min_ms.is_finite() && timing.min_ms >= 0.0,
            "{file}: `timing.min_ms` = {} must be finite and >= 0",
            timing.min_ms
        );
        anyhow::ensure!(
            timing.max_ms.is_finite() && timing.max_ms >= timing.min_ms,
            "{file}: `timing.max_ms` = {} must be finite and >= `timing.min_ms` = {}",
            timing.max_ms,
            timing.min_ms
        );
        if let Some(stragglers) = &timing.stragglers {
            within(stragglers.check())?;
        }
        // [attack]
        within(self.attack.check())?;
        anyhow::ensure!(
            self.attack.fraction == 0.0 || self.attack.kind != AttackKind::None,
            "{file}: `attack.fraction` = {} has no `attack.kind`: say what the attackers do \
             (e.g. kind = \"sign_flip\"), or set the fraction to 0",
            self.attack.fraction
        );
        Ok(())
    }

    /// The dataset of `data.schema`.
    fn dataset(&self) -> anyhow::Result<Dataset> {
        let schema = self
            .data
            .schema
            .as_deref()
            .context("`data.schema` is needed unless `data.split` is synthetic")?;
        Dataset::load(schema)
            .with_context(|| format!("`data.schema`: cannot load {}", schema.display()))
    }

    /// The number of peers, after checking everything that depends on it (fan-out, reach,
    /// graph, partitions, outages, groups, trim, rows per peer); run by [`run`] before the
    /// first seed.
    pub fn preflight(&self) -> anyhow::Result<usize> {
        let file = self.origin();
        let within =
            |result: anyhow::Result<()>| result.map_err(|e| anyhow::anyhow!("{file}: {e:#}"));
        let (peers, rows) = match &self.data.split {
            Split::Synthetic(spec) => (spec.peers, None),
            Split::Natural => {
                let dataset = self
                    .dataset()
                    .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?;
                for site in &dataset.sites {
                    anyhow::ensure!(
                        site.train.rows >= 1,
                        "{file}: `data.split` natural: site {:?} has no train rows, so its peer \
                         would have no data",
                        site.name
                    );
                }
                (dataset.sites.len(), None)
            }
            Split::Sites { per_site } => {
                let dataset = self
                    .dataset()
                    .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?;
                for site in &dataset.sites {
                    anyhow::ensure!(
                        site.train.rows >= *per_site,
                        "{file}: `data.split.per_site` = {per_site} is more than site {:?}'s {} \
                         train rows: some peers would have no data",
                        site.name,
                        site.train.rows
                    );
                }
                (dataset.sites.len() * per_site, None)
            }
            Split::Iid { peers } | Split::Dirichlet { peers, .. } => {
                let dataset = self
                    .dataset()
                    .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?;
                (*peers, Some(dataset.pooled_train().rows))
            }
        };
        if let Some(rows) = rows {
            anyhow::ensure!(
                peers <= rows,
                "{file}: `data.split.peers` = {peers} is more than the {rows} train rows: some \
                 peers would have no data (at most {rows})"
            );
        }
        anyhow::ensure!(
            peers >= 2,
            "{file}: `data.split` gives {peers} peer(s); a scenario needs at least 2"
        );
        let protocol = &self.protocol;
        let most = peers - 1;
        match &self.topology {
            None => {
                anyhow::ensure!(
                    (1..=most).contains(&protocol.fanout),
                    "{file}: `protocol.fanout` = {} must be between 1 and the number of other \
                     peers, {most} ({peers} peers)",
                    protocol.fanout
                );
            }
            Some(topology) => {
                for &seed in &self.seeds {
                    topology
                        .neighbours(peers, seed ^ GRAPH_SALT)
                        .map_err(|e| anyhow::anyhow!("{file}: `topology`: {e}"))?;
                }
            }
        }
        if let Some(reach) = protocol.gossip_reach {
            anyhow::ensure!(
                reach <= most,
                "{file}: `protocol.gossip_reach` = {reach} is more than the other peers: at most \
                 {most} ({peers} peers)"
            );
        }
        within(self.network.check_peers(peers))?;
        if let (Some(groups), Some(_)) = (&self.network.groups, protocol.two_level) {
            anyhow::ensure!(
                groups.size < peers,
                "{file}: `network.groups.size` = {} puts all {peers} peers in one group, and \
                 `protocol.two_level` needs at least 2 groups",
                groups.size
            );
            anyhow::ensure!(
                protocol.fanout < groups.size,
                "{file}: `protocol.fanout` = {} must be below `network.groups.size` = {} under \
                 `protocol.two_level` (it counts versions of the own group: at most {})",
                protocol.fanout,
                groups.size,
                groups.size - 1
            );
        }
        if let Rule::TrimmedMean { trim } = protocol.rule {
            // The most models one merge sees (its own included).
            let (inputs, what) = match (&self.topology, protocol.two_level, &self.network.groups) {
                (Some(Topology::EpidemicSampling { s }), _, _) => (s + 1, "`topology.s` + 1"),
                (Some(topology), _, _) => {
                    let mut fewest = usize::MAX;
                    for &seed in &self.seeds {
                        if let Ok(Some(graph)) = topology.neighbours(peers, seed ^ GRAPH_SALT) {
                            fewest = fewest.min(graph.iter().map(Vec::len).min().unwrap_or(0));
                        }
                    }
                    (fewest.saturating_add(1), "the graph's lowest degree + 1")
                }
                (None, Some(_), Some(groups)) => (
                    protocol.fanout.min(groups.size - 1) + 1,
                    "a merge inside a group: `protocol.fanout` + 1",
                ),
                _ => (protocol.fanout + 1, "`protocol.fanout` + 1"),
            };
            anyhow::ensure!(
                inputs > 2 * trim,
                "{file}: `protocol.rule.trim` = {trim} is too large: a merge here sees at most \
                 {inputs} models ({what}) and a trimmed mean needs more than 2 × trim = {} (use \
                 trim <= {})",
                2 * trim,
                inputs.saturating_sub(1) / 2
            );
        }
        Ok(peers)
    }

    /// Splits the data over peers: (train, test) per peer; peers that test on the same rows
    /// share one table.
    fn peers_data(&self, seed: u64) -> anyhow::Result<Vec<(Table, Arc<Table>)>> {
        let dataset = || self.dataset();
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

/// The value at dotted `key` of a TOML table, if any.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
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

/// Runs every seed, writing `scenario.toml` (the file it was read from, see
/// [`write_scenario`]), `rounds.csv` and `summary.json` into `out`; `progress` gets the
/// scenario's warnings, a line per finished seed, and a warning per seed with failed merges or
/// rounds not every peer reached. Everything that depends on the number of peers is checked
/// first ([`Scenario::preflight`]), so a bad setting fails before any seed runs.
pub fn run(
    scenario: &Scenario,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Summary> {
    scenario.preflight()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for warning in &scenario.warnings {
        progress(&format!("warning: {warning}"));
    }
    let scenario_text = write_scenario(scenario, out)?;
    let started = Instant::now();
    let mut csv = csv::Writer::from_path(out.join("rounds.csv"))?;
    let per_peer = scenario.output.per_peer;
    let mut peers_csv = if per_peer {
        let path = out.join("peers.csv");
        Some(
            csv::Writer::from_path(&path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )
    } else {
        None
    };
    // A row per peer of the row being measured (with `[output] per_peer`).
    let mut peer_rows: Vec<PeerRow> = Vec::new();
    let mut final_accuracy = Vec::new();
    let mut final_c_index = Vec::new();
    let survival = scenario
        .training
        .model
        .as_ref()
        .is_some_and(|m| m.task() == Task::Survival);
    let mut peer_accuracy = Vec::new();
    let mut final_consensus = Vec::new();
    let mut initial_consensus = Vec::new();
    let mut seed_wan_bytes = Vec::new();
    let mut seed_failed_merges = Vec::new();
    let (mut faults, mut payloads_lost) = (0u64, 0u64);
    let mut seed_last5_accuracy = Vec::new();
    let mut spectral_gap = None;
    let mut peers = 0;
    let mut attackers = 0;
    let mut peer_rounds = 0u64;
    let mut gossip_messages = 0u64;
    let mut rejections = BTreeMap::<String, u64>::new();
    let (mut flagged_attackers, mut flagged_honest) = (0, 0);
    let averaging = scenario.training.kind == TrainingKind::AveragingOnly;
    for &seed in &scenario.seeds {
        let mut data = scenario.peers_data(seed)?;
        peers = data.len();
        anyhow::ensure!(peers >= 2, "a scenario needs at least 2 peers");
        let is_attacker = scenario.attack.attackers(peers, seed);
        attackers = is_attacker.iter().filter(|a| **a).count();
        if scenario.attack.kind.flips_labels() {
            // Label flippers train on their own rows with every label flipped (their test rows
            // stay true: `peers.csv` scores them as any peer).
            for ((train, _), _) in data.iter_mut().zip(&is_attacker).filter(|(_, a)| **a) {
                crate::attack::flip_labels(train);
            }
        }
        let samples: Vec<u64> = data.iter().map(|(t, _)| t.rows.max(1) as u64).collect();
        // The native model's size: the features and a bias.
        let native_dim = data.first().map_or(1, |(t, _)| t.cols + 1);
        let training = &scenario.training;
        let learner = match &training.model {
            _ if averaging => Either::Averaging(AveragingOnly),
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
                &TrainConfig {
                    init: training.init,
                    lr: f64::from(training.lr),
                    batch_size: training.batch_size,
                    local_steps: training.local_steps,
                    dp: training.dp,
                    ..TrainConfig::default()
                },
                seed,
            )?),
            #[cfg(not(feature = "torch"))]
            Some(_) => anyhow::bail!(
                "{}: `[training] model` needs the libtorch trainer, and this medmesh-sim was built \
                 without it (build with the default `torch` feature)",
                scenario.name
            ),
        };
        // The shared initialization: zeros for the native logistic regression, the libtorch
        // learner's start (`training.init`) otherwise; averaging-only runs start every peer from its own seeded random model.
        let inits = match &learner {
            Either::Averaging(_) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ INIT_SALT);
                (0..peers)
                    .map(|_| {
                        (0..native_dim)
                            .map(|_| rng.random_range(-1.0f32..1.0))
                            .collect()
                    })
                    .collect()
            }
            Either::Native(native) => vec![vec![0.0; native.dim()]; peers],
            #[cfg(feature = "torch")]
            Either::Torch(torch) => vec![torch.init().to_vec(); peers],
        };
        let k = keys(peers, seed);
        let groups = scenario
            .network
            .groups
            .as_ref()
            .map(|g| g.names(peers))
            .unwrap_or_default();
        let chain = grouped_genesis(&k, &groups)?;
        let (neighbours, fanout) = match &scenario.topology {
            None => (None, scenario.protocol.fanout.min(peers - 1).max(1)),
            Some(topology) => {
                let graph = topology
                    .neighbours(peers, seed ^ GRAPH_SALT)
                    .map_err(|e| anyhow::anyhow!("{}: `topology`: {e}", scenario.origin()))?;
                if spectral_gap.is_none() {
                    spectral_gap = Some(match &graph {
                        Some(graph) => crate::topology::spectral_gap(graph),
                        None => topology
                            .spectral_gap(peers, seed ^ GRAPH_SALT)
                            .map_err(|e| anyhow::anyhow!("`topology`: {e}"))?,
                    });
                }
                let fanout = match topology {
                    Topology::EpidemicSampling { s } => *s,
                    _ => scenario.protocol.fanout,
                };
                (graph, fanout)
            }
        };
        let config = Config {
            experiment: scenario.name.chars().take(64).collect(),
            rule: scenario.protocol.rule.clone(),
            fanout,
            max_rounds: Some(scenario.rounds),
            round_timeout: Duration::from_millis(scenario.protocol.round_timeout_ms),
            fetch_timeout: Duration::from_millis(scenario.protocol.round_timeout_ms / 2 + 1),
            outliers: scenario.protocol.outliers,
            two_level: scenario.protocol.two_level,
            outer: scenario.protocol.outer,
            ..Config::default()
        };
        let mut sim = Sim::new(
            Setup {
                keys: &k,
                chain: &chain,
                config,
                inits,
                samples,
                network: scenario.network.clone(),
                training: scenario.timing.training(),
                seed,
                neighbours,
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
        let start = measure(&sim, &is_attacker, seed, 0, false, None);
        initial_consensus.push(start.consensus_distance.unwrap_or(f64::NAN));
        // (round, mean accuracy) of every measured row, for the last rounds' mean.
        let mut measured: Vec<(u64, f64)> = Vec::new();
        let mut shown = 0;
        let mut last = None;
        while !sim.all_finished() && sim.step()? {
            let done = sim.min_completed();
            if done > shown {
                // The slowest peer went past several rounds at once (it caught up): those rounds
                // were never the lowest everyone had completed, so nothing was measured there.
                for skipped in shown + 1..done {
                    csv.serialize(RoundRow::unmeasured(
                        seed,
                        skipped,
                        format!(
                            "not measured: the slowest peer went from round {shown} to {done} at \
                             once"
                        ),
                    ))?;
                }
                shown = done;
                peer_rows.clear();
                let row = measure(
                    &sim,
                    &is_attacker,
                    seed,
                    done,
                    !averaging,
                    per_peer.then_some(&mut peer_rows),
                );
                csv.serialize(&row)?;
                if let Some(peers_csv) = &mut peers_csv {
                    for p in &peer_rows {
                        peers_csv.serialize(p)?;
                    }
                }
                measured.push((done, row.mean_accuracy.unwrap_or(f64::NAN)));
                last = Some(row);
            }
        }
        #[cfg(feature = "torch")]
        if let Either::Torch(torch) = sim.learner().inner()
            && let Some(failure) = torch.failure()
        {
            anyhow::bail!("{} seed {seed}: libtorch failed: {failure}", scenario.name);
        }
        peer_rows.clear();
        let mut row = measure(
            &sim,
            &is_attacker,
            seed,
            sim.min_completed(),
            !averaging,
            per_peer.then_some(&mut peer_rows),
        );
        let accuracy = row.mean_accuracy.unwrap_or(f64::NAN);
        final_accuracy.push(accuracy);
        if survival {
            final_c_index.push(row.c_index);
        }
        peer_accuracy.push(
            (0..peers)
                .map(|i| (!is_attacker[i] && !averaging).then(|| sim.evaluate(i)))
                .collect(),
        );
        final_consensus.push(row.consensus_distance.unwrap_or(f64::NAN));
        seed_wan_bytes.push(row.wan_bytes.unwrap_or(0));
        let stats = sim.stats();
        peer_rounds += stats.rounds;
        gossip_messages += stats.gossip_messages;
        for (reason, count) in &stats.rejections {
            *rejections.entry(reason.clone()).or_default() += count;
        }
        seed_failed_merges.push(stats.failed_merges);
        faults += stats.faults;
        payloads_lost += stats.payloads_lost;
        let (of_attackers, of_honest) = crate::attack::flags(sim.peers(), &is_attacker);
        flagged_attackers += of_attackers;
        flagged_honest += of_honest;
        let scored = if averaging {
            String::new()
        } else if survival {
            format!(
                ", mean honest C-index {}",
                row.c_index
                    .map_or("undefined".to_owned(), |c| format!("{c:.3}"))
            )
        } else {
            format!(", mean honest accuracy {accuracy:.3}")
        };
        progress(&format!(
            "{} seed {seed}: {} rounds{scored}, consensus distance {:.2e}",
            scenario.name,
            row.round,
            row.consensus_distance.unwrap_or(f64::NAN)
        ));
        if let Some((peer, round)) = stats.first_failed_merge {
            progress(&format!(
                "warning: {} seed {seed}: {} merges failed (the rule refused its inputs, e.g. a \
                 trimmed mean over too few versions after losses or timeouts, and the peer kept \
                 its own model), the first by peer {peer} in round {round}; see `failed_merges` \
                 in rounds.csv",
                scenario.name, stats.failed_merges
            ));
        }
        let end = row.round;
        if last.as_ref() != Some(&row) {
            if last.is_some() {
                row.note = "the state the run ended in".into();
            }
            measured.retain(|(r, _)| *r != row.round);
            measured.push((row.round, accuracy));
            csv.serialize(&row)?;
            if let Some(peers_csv) = &mut peers_csv {
                for p in &peer_rows {
                    peers_csv.serialize(p)?;
                }
            }
        }
        if end < scenario.rounds {
            progress(&format!(
                "warning: {} seed {seed}: the run ended with every peer past round {end} only; \
                 rounds {} to {} are written without figures",
                scenario.name,
                end + 1,
                scenario.rounds
            ));
            for round in end + 1..=scenario.rounds {
                csv.serialize(RoundRow::unmeasured(
                    seed,
                    round,
                    format!("not reached: the run ended with every peer past round {end} only"),
                ))?;
            }
        }
        let tail = &measured[measured.len().saturating_sub(LAST_ROUNDS)..];
        seed_last5_accuracy
            .push(tail.iter().map(|(_, a)| a).sum::<f64>() / tail.len().max(1) as f64);
    }
    csv.flush()?;
    if let Some(peers_csv) = &mut peers_csv {
        peers_csv.flush()?;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let mean_accuracy = mean(&final_accuracy);
    let std_accuracy = (final_accuracy.len() >= 2).then(|| {
        let n = final_accuracy.len() as f64;
        (final_accuracy
            .iter()
            .map(|a| (a - mean_accuracy).powi(2))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt()
    });
    let defined_c_index: Vec<f64> = final_c_index.iter().flatten().copied().collect();
    let summary = Summary {
        name: scenario.name.clone(),
        seeds: scenario.seeds.clone(),
        mean_accuracy,
        mean_c_index: (!defined_c_index.is_empty()).then(|| mean(&defined_c_index)),
        final_c_index,
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
        failed_merges: seed_failed_merges.iter().sum(),
        seed_failed_merges,
        faults,
        payloads_lost,
        initial_consensus,
        last5_mean_accuracy: mean(&seed_last5_accuracy),
        seed_last5_accuracy,
        std_accuracy,
        spectral_gap,
        medmesh_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenario: scenario_text,
    };
    let mut file = std::fs::File::create(out.join("summary.json"))?;
    writeln!(file, "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(summary)
}

/// Writes `out/scenario.toml` and returns the scenario's text (for `summary.json`): the file it
/// was read from, byte for byte, when that replays from `out` as it is (no `data.schema`, or an
/// absolute one); else the file with `data.schema` made absolute (its comments are lost), as
/// `compare` writes each combination's; a scenario built in code is serialized.
pub fn write_scenario(scenario: &Scenario, out: &Path) -> anyhow::Result<String> {
    let path = out.join("scenario.toml");
    let (text, copy) = match &scenario.source {
        Some(source) => {
            let mut table: toml::Table = toml::from_str(&source.text)
                .with_context(|| format!("{} is not valid TOML", source.path.display()))?;
            let relative = lookup(&table, "data.schema")
                .and_then(Value::as_str)
                .is_some_and(|s| Path::new(s).is_relative());
            let copy = match (relative, &scenario.data.schema) {
                (true, Some(schema)) => {
                    if let Some(Value::Table(data)) = table.get_mut("data") {
                        let schema = std::path::absolute(schema).unwrap_or_else(|_| schema.clone());
                        data.insert(
                            "schema".into(),
                            Value::String(schema.to_string_lossy().into_owned()),
                        );
                    }
                    format!(
                        "# {} with `data.schema` made absolute\n{}",
                        source.path.display(),
                        toml::to_string(&table)
                            .with_context(|| { format!("cannot write {}", path.display()) })?
                    )
                }
                _ => source.text.clone(),
            };
            (source.text.clone(), copy)
        }
        None => {
            let text = toml::to_string(scenario)
                .with_context(|| format!("scenario {:?} cannot be written", scenario.name))?;
            (text.clone(), text)
        }
    };
    std::fs::write(&path, copy).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(text)
}

/// The learner a scenario asked for.
#[derive(Debug)]
enum Either {
    Native(Logistic),
    Averaging(AveragingOnly),
    #[cfg(feature = "torch")]
    Torch(Torch),
}

impl Learner for Either {
    fn train(&mut self, peer: usize, round: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
        match self {
            Either::Native(l) => l.train(peer, round, params),
            Either::Averaging(l) => l.train(peer, round, params),
            #[cfg(feature = "torch")]
            Either::Torch(l) => l.train(peer, round, params),
        }
    }
}

impl Evaluate for Either {
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64 {
        match self {
            Either::Native(l) => l.accuracy(peer, params),
            Either::Averaging(l) => l.accuracy(peer, params),
            #[cfg(feature = "torch")]
            Either::Torch(l) => l.accuracy(peer, params),
        }
    }

    fn score(&self, peer: usize, params: &[f32]) -> Score {
        match self {
            Either::Native(l) => l.score(peer, params),
            Either::Averaging(l) => l.score(peer, params),
            #[cfg(feature = "torch")]
            Either::Torch(l) => l.score(peer, params),
        }
    }
}

/// Honest peers' accuracy, loss and AUC (a survival model's C-index) on their own test rows
/// (unless not `score`d: averaging-only runs) and their consensus distance; with `peers`, a
/// [`PeerRow`] for every peer, attackers included.
fn measure<L: Learner + Evaluate>(
    sim: &Sim<L>,
    attacker: &[bool],
    seed: u64,
    round: u64,
    score: bool,
    peers: Option<&mut Vec<PeerRow>>,
) -> RoundRow {
    let honest: Vec<usize> = (0..attacker.len()).filter(|&i| !attacker[i]).collect();
    let models: Vec<Vec<f32>> = honest.iter().map(|&i| sim.models()[i].clone()).collect();
    let scores: Vec<Option<Score>> = (0..attacker.len())
        .map(|i| (score && (!attacker[i] || peers.is_some())).then(|| sim.score(i)))
        .collect();
    let honest_scores: Vec<Score> = honest.iter().filter_map(|&i| scores[i]).collect();
    // A survival model has no accuracy (NaN): its cells stay empty, as when nothing is scored.
    let accuracies: Vec<f64> = honest_scores
        .iter()
        .map(|s| s.accuracy)
        .filter(|a| !a.is_nan())
        .collect();
    let score = score && !accuracies.is_empty();
    let mean_of = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    if let Some(peers) = peers {
        let centre = mean_model(&models);
        peers.extend(scores.iter().enumerate().map(|(i, s)| PeerRow {
            seed,
            round,
            peer: i,
            attacker: attacker[i],
            accuracy: s.map(|s| s.accuracy).filter(|a| !a.is_nan()),
            loss: s.and_then(|s| s.loss),
            consensus_distance: distance(&sim.models()[i], centre.as_deref()),
            auc: s.and_then(|s| s.auc),
            c_index: s.and_then(|s| s.c_index),
        }));
    }
    let stats = sim.stats();
    RoundRow {
        seed,
        round,
        virtual_seconds: Some(sim.now().as_secs_f64()),
        mean_accuracy: score
            .then(|| accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64),
        min_accuracy: score.then(|| accuracies.iter().copied().fold(f64::INFINITY, f64::min)),
        consensus_distance: Some(crate::consensus_distance(&models)),
        messages: Some(stats.gossip_messages),
        bytes: Some(stats.gossip_bytes + stats.payload_bytes),
        wan_bytes: Some(stats.wan_bytes),
        rejections: Some(stats.rejections.values().sum()),
        failed_merges: Some(stats.failed_merges),
        note: String::new(),
        max_accuracy: score.then(|| accuracies.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        loss: mean_of(honest_scores.iter().filter_map(|s| s.loss).collect()),
        auc: mean_of(honest_scores.iter().filter_map(|s| s.auc).collect()),
        c_index: mean_of(honest_scores.iter().filter_map(|s| s.c_index).collect()),
    }
}

/// The coordinate-wise mean of the non-empty `models` (`None` if there are none).
fn mean_model(models: &[Vec<f32>]) -> Option<Vec<f64>> {
    let models: Vec<&Vec<f32>> = models.iter().filter(|m| !m.is_empty()).collect();
    let n = models.len() as f64;
    let mut mean = vec![0.0f64; models.first()?.len()];
    for m in &models {
        for (a, x) in mean.iter_mut().zip(m.iter()) {
            *a += f64::from(*x) / n;
        }
    }
    Some(mean)
}

/// L2 distance of `model` to `centre`; `None` without a centre or a model of another size.
fn distance(model: &[f32], centre: Option<&[f64]>) -> Option<f64> {
    let centre = centre.filter(|c| c.len() == model.len())?;
    Some(
        model
            .iter()
            .zip(centre)
            .map(|(x, c)| (f64::from(*x) - c).powi(2))
            .sum::<f64>()
            .sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

    #[test]
    fn heart_disease_scenario_matches_flamby_level_accuracy() {
        let scenario =
            Scenario::load(&Path::new(SCENARIOS).join("heart-disease.toml")).expect("loads");
        assert_eq!(scenario.seeds, vec![42, 43, 44, 45, 46]);
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(summary.peers, 4);
        // README's figure: 0.725 over all five seeds.
        assert!(
            summary.mean_accuracy >= 0.72 && (summary.mean_accuracy - 0.725).abs() < 0.0005,
            "mean per-center accuracy {} over seeds {:?}",
            summary.mean_accuracy,
            summary.final_accuracy
        );
        assert!(
            summary.final_consensus.iter().all(|c| *c < 1e-4),
            "{:?}",
            summary.final_consensus
        );
        let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
        assert!(csv.starts_with("seed,round,virtual_seconds,mean_accuracy"));
        assert_eq!(csv.lines().count(), 1 + 5 * 15, "a row per round per seed");
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

        // A survival model on a binary dataset has no times to learn from: refused before
        // anything runs, naming the peer.
        scenario.training.model = Some(ModelSpec::Cox { inputs: 13 });
        let error = run(&scenario, dir.path(), |_| {}).expect_err("survival model");
        let text = error.to_string();
        assert!(
            text.contains("peer 0") && text.contains("time and event"),
            "{error}"
        );
        // A model that does not fit the data names the peer and the mismatch.
        scenario.training.model = Some(ModelSpec::Logistic { inputs: 5 });
        let error = run(&scenario, dir.path(), |_| {}).expect_err("wrong width");
        assert!(error.to_string().contains("peer 0"), "{error}");
    }

    #[cfg(feature = "torch")]
    #[test]
    fn tcga_brca_trains_the_cox_model_and_reports_its_c_index() {
        let scenario = Scenario::load(&Path::new(SCENARIOS).join("tcga-brca.toml")).expect("loads");
        assert_eq!(scenario.training.model, Some(ModelSpec::Cox { inputs: 39 }));
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&scenario, dir.path(), |_| {}).expect("runs");
        assert_eq!(summary.peers, 6);
        assert!(
            summary.final_accuracy.iter().all(|a| a.is_nan()),
            "no accuracy"
        );
        // Mean per-region test C-index per seed, with the node's survival outer optimizer
        // (decentralized FedAdam, outer lr 0.4, as the scenario sets): 0.843, 0.845, 0.813,
        // 0.828, 0.835; mean 0.833, the six-process mesh's over the same seeds
        // (`medmesh-lab mesh --seeds 42,43,44,45,46`), whose seed 42 is 0.843. FLamby's
        // FedAdam/FedYogi: 0.815 ± 0.026; its FedAvg 0.732 ± 0.181.
        let seeds: Vec<f64> = summary.final_c_index.iter().flatten().copied().collect();
        assert_eq!(
            seeds.len(),
            5,
            "a C-index per seed: {:?}",
            summary.final_c_index
        );
        assert!((seeds[0] - 0.843).abs() < 0.001, "seed 42: {seeds:?}");
        assert!(seeds.iter().all(|&c| c > 0.80), "{seeds:?}");
        let mean = summary.mean_c_index.expect("C-index");
        assert!(
            (mean - 0.833).abs() < 0.01,
            "mean C-index {mean} against the mesh's 0.833"
        );
        let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
        let header = csv.lines().next().expect("header");
        assert!(header.ends_with(",c_index"), "{header}");
        let json = std::fs::read_to_string(dir.path().join("summary.json")).expect("json");
        assert!(json.contains("\"mean_c_index\""), "{json}");
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

    /// A valid scenario of 8 synthetic peers, to break one setting at a time by appending.
    const GOOD: &str = r#"
        name = "good"
        rounds = 2
        [data]
        split = { kind = "synthetic", peers = 8, samples = 10, test_samples = 20 }
    "#;

    fn from(text: &str) -> anyhow::Result<Scenario> {
        Scenario::from_toml(text, Path::new("dir/bad.toml"))
    }

    /// `extra` appended to [`GOOD`] is refused, by the loader or before the run, with an error
    /// naming the file and `key`.
    fn refused(extra: &str, key: &str) -> String {
        let text = format!("{GOOD}\n{extra}");
        let error = match from(&text) {
            Err(e) => e,
            Ok(s) => s
                .preflight()
                .expect_err(&format!("{key} is refused: {extra}")),
        };
        let message = format!("{error:#}");
        assert!(
            message.contains("dir/bad.toml") && message.contains(&format!("`{key}`")),
            "{key}: {message}"
        );
        message
    }

    #[test]
    fn the_good_scenario_loads() {
        let s = from(GOOD).expect("loads");
        assert_eq!(s.preflight().expect("preflight"), 8);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn bad_network_settings_name_their_key() {
        refused("[network]\nloss = 1.5", "network.loss");
        refused("[network]\nloss = -0.1", "network.loss");
        refused("[network]\nloss = nan", "network.loss");
        refused("[network]\nbandwidth_mb_s = 0.0", "network.bandwidth_mb_s");
        refused("[network]\nbandwidth_mb_s = -5.0", "network.bandwidth_mb_s");
        refused("[network]\nbandwidth_mb_s = inf", "network.bandwidth_mb_s");
        refused("[network]\nbandwidth_mbps = nan", "network.bandwidth_mb_s");
        refused("[network]\nlatency_ms = -1.0", "network.latency_ms");
        refused("[network]\njitter_ms = -1.0", "network.jitter_ms");
        refused(
            "[network.groups]\nsize = 4\nbandwidth_mb_s = 0.0",
            "network.groups.bandwidth_mb_s",
        );
        refused(
            "[network.groups]\nsize = 4\nlatency_ms = -2.0",
            "network.groups.latency_ms",
        );
        refused("[network.groups]\nsize = 0", "network.groups.size");
        refused(
            "[[network.partition]]\nat = 2.0\nheal = 1.0",
            "network.partition[0].heal",
        );
        refused("[network.churn]\nfraction = 1.5", "network.churn.fraction");
    }

    #[test]
    fn bad_timing_training_protocol_and_attack_settings_name_their_key() {
        refused("[timing]\nmin_ms = 100.0\nmax_ms = 50.0", "timing.max_ms");
        refused("[timing]\nmin_ms = -1.0", "timing.min_ms");
        refused(
            "[timing]\nstragglers = { fraction = 2.0, slowdown = 2.0 }",
            "timing.stragglers.fraction",
        );
        refused("[training]\nbatch_size = 0", "training.batch_size");
        refused("[training]\nlr = nan", "training.lr");
        refused(
            "[training]\ndp = { noise_multiplier = 1.0, max_grad_norm = 1.0, delta = 1e-5 }",
            "training.dp",
        );
        refused(
            "[training]\nkind = \"averaging_only\"\nmodel = { kind = \"logistic\", inputs = 13 }",
            "training.model",
        );
        refused("[protocol]\nfanout = 0", "protocol.fanout");
        refused(
            "[protocol]\nround_timeout_ms = 0",
            "protocol.round_timeout_ms",
        );
        refused("[protocol]\ngossip_reach = 0", "protocol.gossip_reach");
        refused(
            "[protocol]\noutliers = { factor = 0.5, rounds = 3 }",
            "protocol.outliers.factor",
        );
        refused(
            "[protocol]\ntwo_level = { across = \"every\", rounds = 2 }",
            "protocol.two_level",
        );
        let trim = refused(
            "[protocol]\nfanout = 3\nrule = { rule = \"trimmed_mean\", trim = 2 }",
            "protocol.rule.trim",
        );
        assert!(trim.contains("more than 2 × trim = 4"), "{trim}");
        refused("[attack]\nfraction = 0.25", "attack.fraction");
        refused(
            "[attack]\nkind = \"noise\"\nfraction = 0.6",
            "attack.fraction",
        );
    }

    #[test]
    fn settings_that_depend_on_the_number_of_peers_are_refused_before_any_run() {
        let fanout = refused("[protocol]\nfanout = 8", "protocol.fanout");
        assert!(fanout.contains("7"), "names the most: {fanout}");
        refused("[protocol]\ngossip_reach = 8", "protocol.gossip_reach");
        refused(
            "[[network.partition]]\nat = 1.0\nheal = 2.0\ngroups = 9",
            "network.partition[0].groups",
        );
        refused(
            "[network.churn]\noutages = [{ peer = 8, at = 1.0, down = 1.0 }]",
            "network.churn.outages[0].peer",
        );
        refused(
            "[topology]\nkind = \"epidemic_sampling\"\ns = 8",
            "topology",
        );
        refused(
            "[topology]\nkind = \"random_regular\"\ndegree = 9",
            "topology",
        );
        refused(
            "[protocol]\nrule = { rule = \"trimmed_mean\", trim = 2 }\n[topology]\nkind = \"ring\"",
            "protocol.rule.trim",
        );
        refused(
            "[protocol]\nfanout = 4\ntwo_level = { across = \"every\", rounds = 2 }\n\
             [network.groups]\nsize = 4",
            "protocol.fanout",
        );
        // More peers than train rows: some would have no data.
        let schema = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/heart-disease/schema.toml"
        );
        let text = format!(
            "name = \"rows\"\nrounds = 1\n[data]\nschema = \"{}\"\nsplit = {{ kind = \"iid\", \
             peers = 100000 }}",
            schema.replace('\\', "/")
        );
        let error = from(&text)
            .expect("loads")
            .preflight()
            .expect_err("too many peers");
        assert!(
            format!("{error:#}").contains("`data.split.peers`"),
            "{error:#}"
        );

        // `run` checks before writing anything.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = from(&format!("{GOOD}\n[protocol]\nfanout = 8")).expect("loads");
        assert!(run(&s, dir.path(), |_| {}).is_err());
        assert!(!dir.path().join("rounds.csv").exists());
    }

    #[test]
    fn topology_sets_neighbours_or_fanout_and_refuses_what_it_overrides() {
        let ring = from(&format!("{GOOD}\n[topology]\nkind = \"ring\"")).expect("loads");
        assert_eq!(ring.topology, Some(Topology::Ring));
        assert_eq!(
            ring.protocol.rule,
            Rule::MetropolisHastings,
            "fixed graph: MH"
        );
        let mean = from(&format!(
            "{GOOD}\n[protocol]\nrule = {{ rule = \"mean\" }}\n[topology]\nkind = \"torus\""
        ))
        .expect("an explicit mean is kept");
        assert_eq!(mean.protocol.rule, Rule::Mean);
        assert_eq!(mean.warnings.len(), 1, "{:?}", mean.warnings);
        let el = from(&format!(
            "{GOOD}\n[topology]\nkind = \"epidemic_sampling\"\ns = 3"
        ))
        .expect("loads");
        assert_eq!(el.protocol.rule, Rule::Mean, "sampling keeps the mean");
        refused(
            "[protocol]\nfanout = 2\n[topology]\nkind = \"ring\"",
            "protocol.fanout",
        );
        refused(
            "[protocol]\ngossip_reach = 2\n[topology]\nkind = \"ring\"",
            "protocol.gossip_reach",
        );
        refused(
            "[protocol]\ntwo_level = { across = \"every\", rounds = 2 }\n[network.groups]\nsize = 4\n\
             [topology]\nkind = \"ring\"",
            "protocol.two_level",
        );
        assert!(from(&format!("{GOOD}\n[topology]\nkind = \"ring\"\nk = 2")).is_err());

        // A ring run: every peer merges exactly its two neighbours.
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&ring, dir.path(), |_| {}).expect("runs");
        let gap = Topology::Ring.spectral_gap(8, 0).expect("gap");
        assert_eq!(summary.spectral_gap, Some(gap));
        assert_eq!(summary.failed_merges, 0);
    }

    #[test]
    fn bandwidth_mbps_still_reads_with_one_deprecation_warning() {
        let old = from(&format!(
            "{GOOD}\n[network]\nbandwidth_mbps = 5.0\n[network.groups]\nsize = 4\nbandwidth_mbps = 50.0"
        ))
        .expect("loads");
        assert_eq!(old.network.bandwidth_mb_s, 5.0);
        assert_eq!(
            old.network.groups.as_ref().map(|g| g.bandwidth_mb_s),
            Some(50.0)
        );
        assert_eq!(old.warnings.len(), 2, "{:?}", old.warnings);
        assert!(old.warnings[0].contains("`network.bandwidth_mb_s`"));
        let new = from(&format!("{GOOD}\n[network]\nbandwidth_mb_s = 5.0")).expect("loads");
        assert_eq!(
            new.network,
            Network {
                bandwidth_mb_s: 5.0,
                ..Network::default()
            }
        );
        assert!(new.warnings.is_empty());
        // Both at once is ambiguous.
        assert!(
            from(&format!(
                "{GOOD}\n[network]\nbandwidth_mb_s = 5.0\nbandwidth_mbps = 5.0"
            ))
            .is_err()
        );
        // The warning is printed once per run, through progress.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lines = Vec::new();
        run(&old, dir.path(), |l| lines.push(l.to_owned())).expect("runs");
        assert_eq!(
            lines.iter().filter(|l| l.contains("deprecated")).count(),
            2,
            "{lines:?}"
        );
    }

    #[test]
    fn every_round_of_every_seed_has_a_row_and_the_summary_has_spread_and_provenance() {
        let mut s = Scenario::load(&Path::new(SCENARIOS).join("faults.toml")).expect("loads");
        s.seeds = vec![42, 43];
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&s, dir.path(), |_| {}).expect("runs");
        let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
        let header = csv.lines().next().unwrap_or_default();
        assert_eq!(
            header,
            "seed,round,virtual_seconds,mean_accuracy,min_accuracy,consensus_distance,messages,\
             bytes,wan_bytes,rejections,failed_merges,note,max_accuracy,loss,auc,c_index"
        );
        let mut skipped = 0;
        for seed in [42u64, 43] {
            let rounds: Vec<u64> = csv
                .lines()
                .skip(1)
                .filter(|l| l.starts_with(&format!("{seed},")))
                .map(|l| {
                    l.split(',')
                        .nth(1)
                        .and_then(|r| r.parse().ok())
                        .expect("round")
                })
                .collect();
            let mut distinct = rounds.clone();
            distinct.dedup();
            assert_eq!(
                distinct,
                (1..=20).collect::<Vec<u64>>(),
                "seed {seed}: {csv}"
            );
        }
        for line in csv.lines().filter(|l| l.contains("not measured")) {
            skipped += 1;
            let cells: Vec<&str> = line.split(',').collect();
            assert!(cells[2..11].iter().all(|c| c.is_empty()), "{line}");
            assert!(cells[12..].iter().all(|c| c.is_empty()), "{line}");
        }
        assert!(skipped > 0, "the faults scenario skips rounds: {csv}");
        assert_eq!(summary.seed_last5_accuracy.len(), 2);
        let mean = summary.seed_last5_accuracy.iter().sum::<f64>() / 2.0;
        assert!((summary.last5_mean_accuracy - mean).abs() < 1e-12);
        let spread = summary.std_accuracy.expect("two seeds");
        let (a, b) = (summary.final_accuracy[0], summary.final_accuracy[1]);
        assert!(
            (spread - (a - b).abs() / 2f64.sqrt()).abs() < 1e-12,
            "{spread}"
        );
        assert_eq!(summary.medmesh_version, env!("CARGO_PKG_VERSION"));
        let text = std::fs::read_to_string(Path::new(SCENARIOS).join("faults.toml")).expect("toml");
        assert_eq!(summary.scenario, text);
        let json = std::fs::read_to_string(dir.path().join("summary.json")).expect("json");
        for key in [
            "\"last5_mean_accuracy\"",
            "\"std_accuracy\"",
            "\"scenario\"",
            "\"medmesh_version\"",
            "\"failed_merges\"",
        ] {
            assert!(json.contains(key), "{key}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("scenario.toml")).expect("copied"),
            text,
            "copied byte for byte"
        );
        // A scenario with a relative data schema is copied with the schema made absolute, and
        // replays from the output folder.
        let heart =
            Scenario::load(&Path::new(SCENARIOS).join("heart-disease.toml")).expect("loads");
        write_scenario(&heart, dir.path()).expect("writes");
        let copy = Scenario::load(&dir.path().join("scenario.toml")).expect("replays");
        assert_eq!(copy.data, heart.data);
    }

    #[test]
    fn merges_that_fail_at_run_time_are_counted_and_warned_about() {
        // A trim of 1 needs 3 models; with most announcements lost and short rounds, many
        // merges see only one other version and the rule refuses them.
        let text = format!(
            "{GOOD}\n[protocol]\nrule = {{ rule = \"trimmed_mean\", trim = 1 }}\nfanout = 3\n\
             round_timeout_ms = 300\n[network]\nloss = 0.8"
        );
        let s = from(&text).expect("loads");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lines = Vec::new();
        let summary = run(&s, dir.path(), |l| lines.push(l.to_owned())).expect("runs");
        assert!(summary.failed_merges > 0, "{summary:?}");
        assert_eq!(summary.seed_failed_merges, vec![summary.failed_merges]);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("warning: good seed 42:") && l.contains("merges failed")),
            "{lines:?}"
        );
        let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
        let last = csv.lines().last().unwrap_or_default();
        assert!(
            last.split(',')
                .nth(10)
                .is_some_and(|c| c.parse::<u64>().is_ok_and(|n| n > 0)),
            "{csv}"
        );
    }

    /// The measured rows of a `rounds.csv` (or `peers.csv`) as maps from column to cell.
    fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
        let mut reader = csv::Reader::from_path(path).expect("csv");
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_owned)
            .collect();
        reader
            .records()
            .map(|r| {
                header
                    .iter()
                    .cloned()
                    .zip(r.expect("record").iter().map(str::to_owned))
                    .collect()
            })
            .collect()
    }

    fn number(row: &BTreeMap<String, String>, column: &str) -> f64 {
        row[column]
            .parse()
            .unwrap_or_else(|_| panic!("{column} in {row:?}"))
    }

    #[test]
    fn rounds_have_max_accuracy_loss_and_auc_and_peers_csv_has_every_peer() {
        let mut s = Scenario::load(&Path::new(SCENARIOS).join("sign-flip.toml")).expect("loads");
        s.rounds = 6;
        s.output.per_peer = true;
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&s, dir.path(), |_| {}).expect("runs");
        let rounds = rows(&dir.path().join("rounds.csv"));
        assert_eq!(rounds.len(), 6, "{rounds:?}");
        for row in &rounds {
            let (min, mean, max) = (
                number(row, "min_accuracy"),
                number(row, "mean_accuracy"),
                number(row, "max_accuracy"),
            );
            assert!(min <= mean && mean <= max && max <= 1.0, "{row:?}");
            assert!(number(row, "loss") > 0.0, "{row:?}");
            assert!((0.0..=1.0).contains(&number(row, "auc")), "{row:?}");
        }
        // Training lowers the honest loss and ranks the test rows well.
        let (first, last) = (&rounds[0], &rounds[5]);
        assert!(number(last, "loss") < number(first, "loss"), "{rounds:?}");
        assert!(number(last, "auc") > 0.75, "{last:?}");

        let peers = rows(&dir.path().join("peers.csv"));
        assert_eq!(peers.len(), 6 * summary.peers, "a row per peer per round");
        let last_round: Vec<_> = peers.iter().filter(|p| p["round"] == "6").collect();
        assert_eq!(
            last_round
                .iter()
                .filter(|p| p["attacker"] == "true")
                .count(),
            summary.attackers
        );
        // The honest rows average to rounds.csv's figures of that round.
        let honest: Vec<_> = last_round
            .iter()
            .filter(|p| p["attacker"] == "false")
            .collect();
        let mean = |column: &str| {
            honest.iter().map(|p| number(p, column)).sum::<f64>() / honest.len() as f64
        };
        assert!((mean("accuracy") - number(last, "mean_accuracy")).abs() < 1e-12);
        assert!((mean("loss") - number(last, "loss")).abs() < 1e-12);
        assert!(
            (mean("consensus_distance") - number(last, "consensus_distance")).abs() < 1e-9,
            "the honest distances to the honest mean average to the consensus distance"
        );
        // Attackers are scored and placed too (their merged model, on their own test rows).
        for attacker in last_round.iter().filter(|p| p["attacker"] == "true") {
            assert!(
                (0.0..=1.0).contains(&number(attacker, "accuracy")),
                "{attacker:?}"
            );
            assert!(
                number(attacker, "consensus_distance") >= 0.0,
                "{attacker:?}"
            );
        }
        // Off by default: no peers.csv.
        s.output.per_peer = false;
        let plain = tempfile::tempdir().expect("tempdir");
        run(&s, plain.path(), |_| {}).expect("runs");
        assert!(!plain.path().join("peers.csv").exists());
        let typo = format!("{GOOD}\n[output]\nper_peers = true");
        assert!(from(&typo).is_err(), "unknown output key");
        let full = from(&format!("{GOOD}\n[output]\naccuracy_axis = \"full\"")).expect("loads");
        assert_eq!(full.output.accuracy_axis, AccuracyAxis::Full);
        assert!(from(&format!("{GOOD}\n[output]\naccuracy_axis = \"wide\"")).is_err());
    }

    #[test]
    fn payload_loss_is_checked_and_drawn_only_when_set() {
        refused("[network]\npayload_loss = 1.5", "network.payload_loss");
        refused("[network]\npayload_loss = nan", "network.payload_loss");
        let dir = tempfile::tempdir().expect("tempdir");
        let clean = run(&from(GOOD).expect("loads"), dir.path(), |_| {}).expect("runs");
        assert_eq!((clean.faults, clean.payloads_lost), (0, 0));
        let lossy = from(&format!("{GOOD}\n[network]\npayload_loss = 0.3")).expect("loads");
        let summary = run(&lossy, dir.path(), |_| {}).expect("runs");
        assert!(summary.payloads_lost > 0, "{summary:?}");
        assert!(summary.faults >= summary.payloads_lost);
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
