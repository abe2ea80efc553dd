//! A whole mesh on one machine: every site of a dataset becomes a hospital with its own key,
//! store, config and `medmesh run` process on loopback. The founders' genesis roster is signed
//! by all of them; each node knows the others only as bootstrap addresses. This is the README's
//! main job and the multi-process integration test; nothing here is special-cased in the node.
//!
//! The model, budget, metric and certification policy follow the dataset's task: a binary
//! dataset (Fed-Heart-Disease) trains logistic regression and is scored by accuracy and AUC; a
//! survival dataset (Fed-TCGA-BRCA) trains the linear Cox model with FLamby's FedAvg budget
//! ([`Budget::for_task`]) and is scored by Harrell's C-index.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::identity::{ContentId, Keypair};
use medmesh_protocol::peer;
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use medmesh_protocol::validation::Policy;
use serde::Serialize;

use medmesh_learning::data::{Dataset, Task};
use medmesh_learning::frame::Setup;
use medmesh_learning::learner::{Budget, ModelSpec, Optimizer, TrainConfig};
use medmesh_learning::metrics;
use medmesh_node::config::{DataConfig, NodeConfig};
use medmesh_node::network::NetworkConfig;
use medmesh_node::node::{Outcome, write_roster};
use medmesh_node::worker::Worker;
use medmesh_node::{admin, keys, network};

/// Settings of a local mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The dataset's schema; one hospital per site.
    #[arg(long, default_value = "data/heart-disease/schema.toml")]
    pub data: PathBuf,
    /// Working folder for keys, stores, configs and logs (reused runs resume from their stores).
    #[arg(long, default_value = "target/mesh")]
    pub dir: PathBuf,
    /// Rounds of decentralized training [default: the task's budget: 15 for a binary dataset,
    /// 5 for survival (FLamby's Fed-TCGA-BRCA FedAvg)].
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Local optimizer steps per round [default: 100].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Local (plain SGD) learning rate [default: 0.01 for a binary dataset, 0.1 for survival].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the shared initialization and of every peer's choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run the mesh once per seed (e.g. `--seeds 42,43,44,45,46`, each in `DIR/seed-N`) and
    /// print each hospital's figures as mean ± std over them; `--seed` is then unused.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// A round closes this many seconds after its own announcement even if members are missing.
    #[arg(long, default_value_t = 60)]
    pub round_timeout: u64,
    /// Give up if the mesh has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Continue from the stores of a previous run in the same folder instead of starting over.
    #[arg(long)]
    pub resume: bool,
    /// Leave out the validator abroad (by default a fifth peer validates every hospital's
    /// final model on its own patients and the mesh certifies them).
    #[arg(long)]
    pub no_validator: bool,
    /// The outer optimizer of every hospital (`[experiment] outer`), as its TOML value, e.g.
    /// `--outer '{ optimizer = "nesterov", lr = 0.5, momentum = 0.9 }'`, or `none` for plain
    /// averaging [default: the node's, decentralized FedAdam (`peer::Outer::RECOMMENDED`); for a
    /// survival dataset plain averaging, as FLamby's FedAvg budget has it].
    #[arg(long, value_parser = parse_outer)]
    pub outer: Option<OuterArg>,
}

impl Options {
    /// The budget for a dataset of `task`: [`Budget::for_task`] (batch size included), with the
    /// rounds, steps and learning rate given on the command line instead of its own.
    pub fn budget(&self, task: Task) -> Budget {
        let budget = Budget::for_task(task);
        Budget {
            rounds: self.rounds.unwrap_or(budget.rounds),
            local_steps: self.steps.unwrap_or(budget.local_steps),
            lr: self.lr.unwrap_or(budget.lr),
            ..budget
        }
    }
}

/// `--outer`: an optimizer, or none (plain averaging).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterArg(pub Option<peer::Outer>);

/// `--outer`'s TOML inline table, or `none`.
fn parse_outer(text: &str) -> Result<OuterArg, String> {
    if text.trim() == "none" {
        return Ok(OuterArg(None));
    }
    #[derive(serde::Deserialize)]
    struct Wrapper {
        outer: peer::Outer,
    }
    let outer = toml::from_str::<Wrapper>(&format!("outer = {text}"))
        .map_err(|e| format!("not an outer optimizer ({e})"))?
        .outer;
    outer.check()?;
    Ok(OuterArg(Some(outer)))
}

impl Options {}

/// The mesh's results. Its JSON carries the task's own figures: `accuracy`, `auc`,
/// `local_accuracy` per hospital and `mean_accuracy`, `mean_local_accuracy` for a binary
/// dataset; `c_index`, `local_c_index` per hospital and `mean_c_index`, `mean_local_c_index`
/// for survival (the other task's fields are absent).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per hospital: site, final-model test metric on its own split, local-only metric.
    pub hospitals: Vec<Hospital>,
    /// Means over hospitals of the task's metric.
    #[serde(flatten)]
    pub means: Means,
    /// Mean over hospitals of local-only training's mean metric over every test split
    /// (FLamby's "local" metric: how well a model trained alone generalizes); `None` if no
    /// split gave one.
    pub mean_local_generalization: Option<f64>,
    /// Largest L2 distance between two hospitals' final parameters, relative to their norm.
    pub max_relative_distance: f64,
    /// Seconds until every hospital finished.
    pub seconds: f64,
    /// The validator abroad, if the mesh has one.
    pub validator: Option<Validator>,
    /// Whether every node reached the same certification verdict on every final version.
    pub verdicts_agree: Option<bool>,
    /// The certification policy every node applied.
    pub policy: Policy,
    /// The task: `binary` or `survival`.
    pub task: String,
    /// The model every hospital trained.
    pub model: ModelSpec,
    /// The training budget every hospital (and each one alone) had.
    pub budget: Budget,
}

/// Means over hospitals of the task's metric.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Means {
    /// A binary dataset.
    Binary {
        /// Mean over hospitals of the final model's test accuracy.
        mean_accuracy: f64,
        /// Mean over hospitals of local-only training's accuracy on its own test split.
        mean_local_accuracy: f64,
        /// Mean over hospitals of the personalized models' accuracy (over those derived).
        mean_personalized_accuracy: Option<f64>,
    },
    /// A survival dataset. A C-index is undefined on a test split without a comparable pair;
    /// the means are over the hospitals whose split gave one.
    Survival {
        /// Mean over hospitals of the final model's test C-index.
        mean_c_index: Option<f64>,
        /// Mean over hospitals of local-only training's C-index on its own test split.
        mean_local_c_index: Option<f64>,
        /// Mean over hospitals of the personalized models' C-index.
        mean_personalized_c_index: Option<f64>,
        /// Hospitals whose test split gave the final model a C-index (those `mean_c_index` is
        /// over).
        hospitals_with_c_index: usize,
    },
}

/// One hospital's line.
#[derive(Debug, Clone, Serialize)]
pub struct Hospital {
    /// Site name.
    pub site: String,
    /// Rows of its test split.
    pub test_rows: Option<usize>,
    /// The mesh's final model, local-only training and the personalized model on this
    /// hospital's test split.
    #[serde(flatten)]
    pub scores: Scores,
    /// Percentile-bootstrap 95 % interval (1000 resamples of the test split) of the mesh's final
    /// model's figure on this hospital's split: wide where the split is small.
    pub interval: Option<[f64; 2]>,
    /// Fine-tuning steps of the personalized model (0: the shared model was kept).
    pub personalized_steps: Option<usize>,
    /// The local-only model's mean metric over every hospital's test split (over those that
    /// give one).
    pub local_generalization: Option<f64>,
    /// Messages this hospital rejected.
    pub rejected: u64,
    /// Its final version (the merged model it announced after the last round).
    pub final_version: Option<ContentId>,
    /// Whether that version is certified (as this hospital judged it); `None` if not judged.
    pub certified: Option<bool>,
    /// Why it is not certified, if it is not ("1 country(ies) of 2 required", ...).
    pub not_certified_because: Vec<String>,
}

/// A hospital's figures for the task.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Scores {
    /// A binary dataset.
    Binary {
        /// Test accuracy of the mesh's final model on this hospital's test split.
        accuracy: f64,
        /// Test AUC of the mesh's final model.
        auc: Option<f64>,
        /// Test accuracy of a model trained on this hospital's data alone, same budget, on
        /// this hospital's test split.
        local_accuracy: f64,
        /// Test accuracy of this hospital's personalized model (the shared one fine-tuned on
        /// its own rows); `None` if it derived none.
        personalized_accuracy: Option<f64>,
    },
    /// A survival dataset.
    Survival {
        /// Test C-index of the mesh's final model on this hospital's test split; `None` when
        /// the split has no comparable pair.
        c_index: Option<f64>,
        /// Test C-index of a model trained on this hospital's data alone, same budget, on this
        /// hospital's test split.
        local_c_index: Option<f64>,
        /// Test C-index of this hospital's personalized model.
        personalized_c_index: Option<f64>,
    },
}

impl Scores {
    /// The final model's figure and the local-only model's, for the task.
    pub fn pair(&self) -> (Option<f64>, Option<f64>) {
        match *self {
            Scores::Binary {
                accuracy,
                local_accuracy,
                ..
            } => (Some(accuracy), Some(local_accuracy)),
            Scores::Survival {
                c_index,
                local_c_index,
                ..
            } => (c_index, local_c_index),
        }
    }

    /// The personalized model's figure, for the task.
    pub fn personalized(&self) -> Option<f64> {
        match *self {
            Scores::Binary {
                personalized_accuracy,
                ..
            } => personalized_accuracy,
            Scores::Survival {
                personalized_c_index,
                ..
            } => personalized_c_index,
        }
    }
}

/// The validator's line.
#[derive(Debug, Clone, Serialize)]
pub struct Validator {
    /// What it validates on.
    pub site: String,
    /// Its country.
    pub country: String,
    /// Final versions it validated.
    pub validated: usize,
    /// The last version it validated, on its split: `auc` for a binary dataset, `c_index` for
    /// survival.
    #[serde(flatten)]
    pub last: Last,
}

/// What the validator measured on the last version it validated.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Last {
    /// A binary dataset.
    Binary {
        /// Its AUC.
        auc: Option<f64>,
    },
    /// A survival dataset.
    Survival {
        /// Its C-index.
        c_index: Option<f64>,
    },
}

/// First port [`free_port`] tries; below Linux's default ephemeral range (32768–60999).
const PORTS_FROM: u16 = 20_000;
/// How many ports [`free_port`] cycles through.
const PORTS: u16 = 12_000;

/// A port on 127.0.0.1 that is free now. Not one of the OS's ephemeral ports: those are what
/// outgoing connections take their source port from, so between picking one and the node
/// binding it, a connection of an already running node could take it (a node of a local mesh
/// then failed to start, now and then). Ports are handed out in turn from a start that depends
/// on the process, so two picks in one process never repeat and concurrent test processes
/// rarely meet.
pub fn free_port() -> anyhow::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    use std::sync::atomic::Ordering;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % u32::from(PORTS),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..PORTS {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % u32::from(PORTS);
        let port = PORTS_FROM + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Every one taken: let the OS choose.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last lines of a node's log, for an error message (the log may go with a temporary
/// folder).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// One node of a local mesh: its folder (key, store, config, log, result), its ports and its
/// data. The building block of [`run`], and of tests that start, kill and admit nodes.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Folder name and label (a site name, or a name of its own for a shard).
    pub name: String,
    /// Its records.
    pub data: DataConfig,
    /// Its folder.
    pub home: PathBuf,
    /// Its member key (created on first use, kept across runs).
    pub key: Keypair,
    /// Its libp2p TCP port on 127.0.0.1.
    pub port: u16,
    /// Its admin endpoint.
    pub admin: SocketAddr,
}

impl LocalNode {
    /// Creates (or reuses) the node's folder and key under `dir` and picks free ports.
    pub fn new(dir: &Path, name: &str, data: DataConfig) -> anyhow::Result<Self> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home)?;
        let key = keys::load_or_generate(&home.join("key.pem"))?;
        // The admin token the node will use (it would make one at its first start); made now so
        // the lab can talk to the node from the start.
        keys::AdminToken::load_or_create(&keys::token_path(&home.join("key.pem")))?;
        Ok(Self {
            name: name.to_owned(),
            data,
            home,
            key,
            port: free_port()?,
            admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        })
    }

    /// Its full libp2p address, `/ip4/127.0.0.1/tcp/PORT/p2p/PEER_ID`.
    pub fn address(&self) -> anyhow::Result<String> {
        let peer_id = network::peer_id(&self.key.id())?;
        Ok(format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer_id}", self.port))
    }

    /// Its roster entry.
    pub fn member(&self, country: &str, role: Role) -> anyhow::Result<Member> {
        Ok(Member {
            id: self.key.id(),
            name: format!("{} hospital", self.name),
            site: self.data.site.clone(),
            country: country.into(),
            group: String::new(),
            role,
            addresses: vec![self.address()?],
        })
    }

    /// Its store file.
    pub fn store(&self) -> PathBuf {
        self.home.join("store.redb")
    }

    /// Its config file.
    pub fn config_path(&self) -> PathBuf {
        self.home.join("node.toml")
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.home.join("node.log")
    }

    /// Where it writes its [`Outcome`].
    pub fn result(&self) -> PathBuf {
        self.home.join("result.json")
    }

    /// Its config for the mesh `spec`: its model and budget, shared initialization, plain SGD,
    /// pulls from `fanout` members per round, bootstraps from `peers`; `index` varies its seeds.
    pub fn config(
        &self,
        spec: &MeshSpec<'_>,
        index: usize,
        fanout: usize,
        peers: &[&LocalNode],
    ) -> anyhow::Result<NodeConfig> {
        let options = spec.options;
        Ok(NodeConfig {
            key: self.home.join("key.pem"),
            store: self.store(),
            genesis: spec.genesis.to_owned(),
            init_seed: options.seed,
            linger_ms: 20_000,
            results: Some(self.result()),
            admin: Some(self.admin),
            min_peers: None,
            start_timeout_ms: 60_000,
            validate_final: false,
            data: self.data.clone(),
            model: spec.model.clone(),
            training: TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                lr: spec.budget.lr,
                batch_size: spec.budget.batch_size,
                local_steps: spec.budget.local_steps,
                seed: options.seed.wrapping_add(index as u64),
                ..TrainConfig::default()
            },
            experiment: peer::Config {
                experiment: spec.experiment.to_owned(),
                rule: Rule::Mean,
                fanout,
                max_rounds: Some(spec.budget.rounds),
                round_timeout: Duration::from_secs(options.round_timeout),
                fetch_timeout: Duration::from_secs(20),
                seed: options.seed.wrapping_add(100 + index as u64),
                // The task's outer optimizer (`Budget::for_task`) unless `--outer` names one.
                outer: options.outer.map_or(spec.budget.outer, |o| o.0),
                ..peer::Config::default()
            },
            network: NetworkConfig {
                listen: vec![format!("/ip4/127.0.0.1/tcp/{}", self.port).parse()?],
                bootstrap: peers
                    .iter()
                    .filter(|p| p.name != self.name)
                    .map(|p| Ok(p.address()?.parse()?))
                    .collect::<anyhow::Result<_>>()?,
                mdns: false,
                ..NetworkConfig::default()
            },
            ..NodeConfig::default()
        })
    }

    /// Writes `config` to its config file.
    pub fn write_config(&self, config: &NodeConfig) -> anyhow::Result<()> {
        std::fs::write(self.config_path(), toml::to_string(config)?)?;
        Ok(())
    }

    /// Starts `medmesh run` (the binary at `exe`) on its config, logging to its log file
    /// (appended: a restarted node keeps the earlier lines). A previous result is removed.
    pub fn spawn(&self, exe: &Path) -> anyhow::Result<Child> {
        let _ = std::fs::remove_file(self.result());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))
    }

    /// Its outcome, once it has written one.
    pub fn outcome(&self) -> Option<Outcome> {
        let text = std::fs::read_to_string(self.result()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Its admin endpoint, with its token.
    pub fn endpoint(&self) -> anyhow::Result<admin::Endpoint> {
        Ok(admin::Endpoint::new(
            self.admin,
            &keys::token_path(&self.home.join("key.pem")),
        )?)
    }

    /// Its status from its admin endpoint, if it answers.
    pub fn status(&self) -> Option<admin::Status> {
        let endpoint = self.endpoint().ok()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime
            .block_on(admin::fetch_status(&endpoint))
            .ok()
            .map(|(status, _)| status)
    }

    /// Its `/metrics` page, if its admin endpoint answers.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let endpoint = self.endpoint()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let page = runtime.block_on(admin::get(&endpoint, "/metrics"))?;
        Ok(String::from_utf8_lossy(&page).into_owned())
    }
}

/// What every node of a local mesh shares.
#[derive(Debug, Clone)]
pub struct MeshSpec<'a> {
    /// The mesh's settings.
    pub options: &'a Options,
    /// The model every hospital trains.
    pub model: ModelSpec,
    /// Rounds, local steps, batch size and learning rate (the options' overrides applied).
    pub budget: Budget,
    /// The experiment's name.
    pub experiment: &'a str,
    /// The genesis roster file.
    pub genesis: &'a Path,
}

/// The founders' genesis roster of `nodes` (all hospitals in `country`), signed by every one.
/// Threshold: a majority.
pub fn genesis(mesh: &str, nodes: &[&LocalNode], country: &str) -> anyhow::Result<SignedRoster> {
    let members = nodes
        .iter()
        .map(|n| n.member(country, Role::Hospital))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let threshold = u32::try_from(nodes.len() / 2 + 1)?;
    let mut roster = SignedRoster::new(Roster::genesis(mesh, threshold, members)?);
    for node in nodes {
        roster.sign(&node.key);
    }
    Ok(roster)
}

/// Running node processes, each killed (SIGKILL) and reaped when dropped or replaced.
#[derive(Debug, Default)]
pub struct Children(Vec<Option<Child>>);

impl Children {
    /// Holds `child` as process `i`, killing whatever ran there before.
    pub fn set(&mut self, i: usize, child: Child) {
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.kill(i);
        self.0[i] = Some(child);
    }

    /// Kills process `i` with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.0.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether process `i` has exited, and how.
    pub fn exited(&mut self, i: usize) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.0.get_mut(i).and_then(Option::as_mut) {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

/// Waits until every node in `nodes` wrote its outcome, failing when one exits before that
/// or `deadline` passes. `progress` hears of each finished node.
pub fn wait_for_outcomes(
    nodes: &[&LocalNode],
    children: &mut Children,
    indices: &[usize],
    deadline: Instant,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; nodes.len()];
    while outcomes.iter().any(Option::is_none) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mesh did not finish in time; see the node.log files under {}",
            nodes
                .first()
                .and_then(|n| n.home.parent())
                .map_or(String::new(), |d| d.display().to_string())
        );
        for (k, node) in nodes.iter().enumerate() {
            if outcomes[k].is_some() {
                continue;
            }
            if let Some(outcome) = node.outcome() {
                let (metric, value) = outcome.test.headline();
                progress(&format!(
                    "{} finished round {}: test {metric} {}",
                    node.name,
                    outcome.rounds,
                    value.map_or("undefined".to_owned(), |v| format!("{v:.3}"))
                ));
                outcomes[k] = Some(outcome);
            } else if let Some(status) = children.exited(indices[k])? {
                anyhow::bail!(
                    "{}'s node exited with {status} before finishing; see {}, which ends:\n{}",
                    node.name,
                    node.log().display(),
                    log_tail(&node.log())
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// Largest L2 distance between two parameter vectors of `outcomes`, relative to the first's norm.
pub fn max_relative_distance(outcomes: &[Outcome]) -> f64 {
    let mut max = 0.0f64;
    for a in outcomes {
        let norm = a
            .params
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        for b in outcomes {
            let d = a
                .params
                .iter()
                .zip(&b.params)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                .sqrt();
            max = max.max(d / norm);
        }
    }
    max
}

/// Sets up and runs the mesh with the `medmesh` binary at `exe`; `progress` gets status lines.
pub fn run(
    options: &Options,
    exe: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    let data = medmesh_learning::data::find_shipped(&options.data).map_err(anyhow::Error::msg)?;
    let dataset = Dataset::load(&data)?;
    let schema = std::fs::canonicalize(&data)?;
    std::fs::create_dir_all(&options.dir)?;
    let dir = std::fs::canonicalize(&options.dir)?;
    let inputs = i64::try_from(dataset.features.len())?;
    let task = dataset.task;
    let model = ModelSpec::for_task(task, inputs);
    let budget = options.budget(task);
    let policy = demo_policy(task);
    progress(&format!(
        "{}: {} on {inputs} features, {} rounds × {} local SGD steps of batch {}, lr {}{}",
        dataset.name,
        match task {
            Task::Binary => "logistic regression",
            Task::Survival => "linear Cox model",
        },
        budget.rounds,
        budget.local_steps,
        budget.batch_size,
        budget.lr,
        if budget == Budget::for_task(task) {
            match task {
                Task::Binary => " (the heart-disease mesh's budget)",
                Task::Survival => " (FLamby's Fed-TCGA-BRCA FedAvg budget)",
            }
        } else {
            ""
        }
    ));
    let site_data = |site: &str| DataConfig {
        schema: schema.clone(),
        site: site.to_owned(),
        shard: None,
    };

    let nodes = dataset
        .sites
        .iter()
        .map(|site| LocalNode::new(&dir, &site.name, site_data(&site.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The partner abroad validates on a copy of the first hospital's test split (the largest:
    // 100+ patients for heart disease, 63 for TCGA-BRCA); it never trains.
    let validator_site = &dataset.sites[0].name;
    let validator = if options.no_validator {
        None
    } else {
        Some(LocalNode::new(
            &dir,
            "validator-abroad",
            site_data(validator_site),
        )?)
    };
    let hospitals_only: Vec<&LocalNode> = nodes.iter().collect();
    let everyone: Vec<&LocalNode> = nodes.iter().chain(validator.as_ref()).collect();

    // The founders' genesis roster, signed by every founder. With --resume the stores and the
    // roster of the previous run are kept; new ports reach the configs' bootstrap lists.
    let genesis_path = dir.join("roster.json");
    if !options.resume {
        for node in &everyone {
            if node.store().exists() {
                std::fs::remove_file(node.store())?;
            }
        }
    }
    if !options.resume || !genesis_path.exists() {
        let name = format!("{}-mesh", dataset.name);
        write_roster(
            &genesis_path,
            &founders(&name, &hospitals_only, validator.as_ref())?,
        )?;
    }

    let spec = MeshSpec {
        options,
        model: model.clone(),
        budget,
        experiment: &dataset.name,
        genesis: &genesis_path,
    };
    let mut children = Children::default();
    let started = Instant::now();
    for (i, node) in everyone.iter().enumerate() {
        let mut config = node.config(&spec, i, nodes.len() - 1, &everyone)?;
        config.experiment.certification = Some(policy.clone());
        if validator.as_ref().is_some_and(|v| v.name == node.name) {
            config.validate_final = true;
        }
        node.write_config(&config)?;
        let child = node.spawn(exe)?;
        progress(&format!(
            "started {} (pid {}, port {}, admin {})",
            node.name,
            child.id(),
            node.port,
            node.admin
        ));
        children.set(i, child);
    }

    let indices: Vec<usize> = (0..everyone.len()).collect();
    let deadline = started + Duration::from_secs(options.timeout);
    let mut outcomes =
        wait_for_outcomes(&everyone, &mut children, &indices, deadline, &mut progress)?;
    let seconds = started.elapsed().as_secs_f64();
    let validator_outcome = if validator.is_some() {
        outcomes.pop()
    } else {
        None
    };

    // Certification: every node judges every final version from the reports it holds.
    let verdicts_agree = if validator.is_some() {
        let agree = agree_on_verdicts(&everyone, &mut outcomes);
        if agree {
            progress("every node reaches the same certification verdicts");
        }
        Some(agree)
    } else {
        None
    };

    let hospitals = compare_alone(&spec, &dataset, &outcomes)?;
    let n = hospitals.len() as f64;
    let means = match task {
        Task::Binary => {
            let mean = |pick: fn(&Scores) -> Option<f64>| {
                hospitals
                    .iter()
                    .filter_map(|h| pick(&h.scores))
                    .sum::<f64>()
                    / n
            };
            Means::Binary {
                mean_accuracy: mean(|s| s.pair().0),
                mean_local_accuracy: mean(|s| s.pair().1),
                mean_personalized_accuracy: mean_defined(
                    hospitals.iter().map(|h| h.scores.personalized()),
                ),
            }
        }
        Task::Survival => Means::Survival {
            mean_c_index: mean_defined(hospitals.iter().map(|h| h.scores.pair().0)),
            mean_local_c_index: mean_defined(hospitals.iter().map(|h| h.scores.pair().1)),
            mean_personalized_c_index: mean_defined(
                hospitals.iter().map(|h| h.scores.personalized()),
            ),
            hospitals_with_c_index: hospitals
                .iter()
                .filter(|h| h.scores.pair().0.is_some())
                .count(),
        },
    };
    Ok(Report {
        means,
        mean_local_generalization: mean_defined(hospitals.iter().map(|h| h.local_generalization)),
        hospitals,
        max_relative_distance: max_relative_distance(&outcomes),
        seconds,
        validator: validator_outcome.map(|o| Validator {
            site: format!("{validator_site} test split"),
            country: "DE".into(),
            validated: o.validated.len(),
            last: match task {
                Task::Binary => Last::Binary { auc: o.test.auc() },
                Task::Survival => Last::Survival {
                    c_index: o.test.c_index(),
                },
            },
        }),
        verdicts_agree,
        policy,
        task: match task {
            Task::Binary => "binary",
            Task::Survival => "survival",
        }
        .to_owned(),
        model,
        budget,
    })
}

/// The mean of the defined values; `None` if there are none.
fn mean_defined(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// The founders' genesis roster: every hospital (US) and the validator abroad (DE), a majority
/// to sign updates, signed by every founder.
fn founders(
    mesh: &str,
    hospitals: &[&LocalNode],
    validator: Option<&LocalNode>,
) -> anyhow::Result<SignedRoster> {
    let mut members = hospitals
        .iter()
        .map(|n| n.member("US", Role::Hospital))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(v) = validator {
        let mut member = v.member("DE", Role::Validator)?;
        member.name = "university hospital abroad (validator)".into();
        members.push(member);
    }
    let threshold = u32::try_from(members.len() / 2 + 1)?;
    let mut roster = SignedRoster::new(Roster::genesis(mesh.to_owned(), threshold, members)?);
    for node in hospitals.iter().copied().chain(validator) {
        roster.sign(&node.key);
    }
    Ok(roster)
}

/// Waits (while the nodes linger) until every node has judged every final version, copies the
/// latest verdicts into `outcomes`, and tells whether all nodes reached the same ones.
fn agree_on_verdicts(everyone: &[&LocalNode], outcomes: &mut [Outcome]) -> bool {
    let finals: Vec<ContentId> = outcomes.iter().filter_map(|o| o.final_version).collect();
    let judged_all = |o: &Outcome| {
        finals
            .iter()
            .all(|f| o.certifications.iter().any(|c| c.model == *f))
    };
    let until = Instant::now() + Duration::from_secs(15);
    let mut latest: Vec<Outcome> = Vec::new();
    while Instant::now() < until {
        latest = everyone.iter().filter_map(|n| n.outcome()).collect();
        if latest.len() == everyone.len() && latest.iter().all(judged_all) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let key = |o: &Outcome| {
        let mut v: Vec<(ContentId, bool)> = o
            .certifications
            .iter()
            .filter(|c| finals.contains(&c.model))
            .map(|c| (c.model, c.certified))
            .collect();
        v.sort();
        v
    };
    let agree = latest.len() == everyone.len()
        && latest.iter().all(judged_all)
        && latest.windows(2).all(|w| key(&w[0]) == key(&w[1]));
    for (outcome, fresh) in outcomes.iter_mut().zip(&latest) {
        outcome.certifications = fresh.certifications.clone();
    }
    agree
}

/// Each hospital's row: the mesh's result next to local-only training with the same model and
/// budget (in one training worker), tested on its own split and on every hospital's, by the
/// task's metric (accuracy, or C-index).
fn compare_alone(
    spec: &MeshSpec<'_>,
    dataset: &Dataset,
    outcomes: &[Outcome],
) -> anyhow::Result<Vec<Hospital>> {
    let options = spec.options;
    let task = spec.model.task();
    let mut alone = Worker::start()?;
    let mut hospitals = Vec::new();
    for (site, outcome) in dataset.sites.iter().zip(outcomes) {
        let config = TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            lr: spec.budget.lr,
            batch_size: spec.budget.batch_size,
            seed: options.seed,
            ..TrainConfig::default()
        };
        let built = alone.build(&Setup {
            spec: spec.model.clone(),
            training: config,
            init_seed: options.seed,
            data: site.train.clone(),
        })?;
        let steps = usize::try_from(spec.budget.rounds)?.saturating_mul(spec.budget.local_steps);
        let (trained, _) = alone.train(&built.init, steps)?;
        let mut score = |table: &medmesh_learning::data::Table| -> anyhow::Result<Option<f64>> {
            let predictions = alone.predict(&trained, table)?;
            Ok(metrics::Evaluation::of(task, &predictions, table)?
                .headline()
                .1)
        };
        let mut everywhere = Vec::new();
        for other in &dataset.sites {
            everywhere.push(score(&other.test)?);
        }
        let own = score(&site.test)?;
        let personalized = outcome
            .personalized
            .as_ref()
            .and_then(|p| p.test.headline().1);
        let scores = match outcome.test {
            metrics::Evaluation::Binary(b) => Scores::Binary {
                accuracy: b.accuracy,
                auc: b.auc,
                local_accuracy: own.unwrap_or(f64::NAN),
                personalized_accuracy: personalized,
            },
            metrics::Evaluation::Survival(s) => Scores::Survival {
                c_index: s.c_index,
                local_c_index: own,
                personalized_c_index: personalized,
            },
        };
        let shared = alone.predict(&outcome.params, &site.test)?;
        let interval = interval(task, &shared, &site.test, options.seed);
        let verdict = outcome
            .final_version
            .and_then(|f| outcome.certifications.iter().find(|c| c.model == f));
        let certified = verdict.map(|c| c.certified);
        let not_certified_because = verdict.map(|c| c.reasons.clone()).unwrap_or_default();
        hospitals.push(Hospital {
            site: site.name.clone(),
            test_rows: Some(site.test.rows),
            scores,
            interval,
            personalized_steps: outcome.personalized.as_ref().map(|p| p.steps),
            local_generalization: mean_defined(everywhere.into_iter()),
            rejected: outcome.rejections.values().sum(),
            final_version: outcome.final_version,
            certified,
            not_certified_because,
        });
    }
    Ok(hospitals)
}

/// Percentile-bootstrap 95 % interval (1000 resamples, seeded) of the task's figure of
/// `predictions` on `table`; `None` where it is undefined.
fn interval(
    task: Task,
    predictions: &[f32],
    table: &medmesh_learning::data::Table,
    seed: u64,
) -> Option<[f64; 2]> {
    let found = match task {
        Task::Binary => metrics::bootstrap(predictions, &table.y, 1000, seed, |p, y| {
            metrics::binary(p, y, 0.5).ok().map(|b| b.accuracy)
        }),
        Task::Survival => metrics::bootstrap_survival(
            predictions,
            &table.time,
            &table.event,
            1000,
            seed,
            |r, t, e| metrics::concordance_index(r, t, e).ok().flatten(),
        ),
    };
    found.ok().map(|i| [i.low, i.high])
}

/// The demo's certification policy for a dataset of `task`: a validator reports AUC ≥ 0.80 on
/// ≥ 100 patients (binary), or a C-index ≥ 0.60 on ≥ 60 patients (survival: the validator's
/// split, TCGA-BRCA's Northeast test split, has 63 patients and 14 deaths).
pub fn demo_policy(task: Task) -> Policy {
    match task {
        Task::Binary => Policy {
            metric: "auc".into(),
            min: 0.80,
            min_samples: 100,
            validators: 1,
            countries: 1,
        },
        Task::Survival => Policy {
            metric: "c_index".into(),
            min: 0.60,
            min_samples: 60,
            validators: 1,
            countries: 1,
        },
    }
}

impl Means {
    /// The shared model's mean and the alone models' mean, for the task.
    pub fn pair(&self) -> (Option<f64>, Option<f64>) {
        match *self {
            Means::Binary {
                mean_accuracy,
                mean_local_accuracy,
                ..
            } => (Some(mean_accuracy), Some(mean_local_accuracy)),
            Means::Survival {
                mean_c_index,
                mean_local_c_index,
                ..
            } => (mean_c_index, mean_local_c_index),
        }
    }
}

impl Report {
    /// The task's metric: `accuracy` or `c_index`.
    pub fn metric(&self) -> &'static str {
        match self.means {
            Means::Binary { .. } => "accuracy",
            Means::Survival { .. } => "c_index",
        }
    }

    /// The table as text.
    pub fn to_text(&self) -> String {
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let b = &self.budget;
        let mut out = format!(
            "The mesh's final model is the same at every hospital; each tests it on its own split.\n\
             'alone' trains on one hospital's data with the same budget ({} rounds × {} SGD steps\n\
             of batch {}, lr {}): tested on its own split, and on every hospital's split (mean).\n",
            b.rounds, b.local_steps, b.batch_size, b.lr
        );
        let (mesh, personalized_mean) = match &self.means {
            Means::Binary {
                mean_personalized_accuracy,
                ..
            } => ("mesh acc.", *mean_personalized_accuracy),
            Means::Survival {
                mean_personalized_c_index,
                ..
            } => ("mesh C-index", *mean_personalized_c_index),
        };
        out.push_str(&format!(
            "{:<13} {:>4} {:>12} {:>15} {:>6} {:>11} {:>12} {:>11} {:>8}\n",
            "hospital",
            "rows",
            mesh,
            "95 % interval",
            "AUC",
            "alone (own)",
            "personalized",
            "alone (all)",
            "rejected"
        ));
        for h in &self.hospitals {
            let (shared, alone) = h.scores.pair();
            let auc = match h.scores {
                Scores::Binary { auc, .. } => cell(auc),
                Scores::Survival { .. } => "".to_owned(),
            };
            out.push_str(&format!(
                "{:<13} {:>4} {:>12} {:>15} {:>6} {:>11} {:>12} {:>11} {:>8}\n",
                h.site,
                h.test_rows.map_or("-".to_owned(), |n| n.to_string()),
                cell(shared),
                h.interval
                    .map_or("-".to_owned(), |[l, h]| format!("[{l:.3}, {h:.3}]")),
                auc,
                cell(alone),
                cell(h.scores.personalized()),
                cell(h.local_generalization),
                h.rejected
            ));
        }
        let (shared_mean, alone_mean) = self.means.pair();
        out.push_str(&format!(
            "{:<13} {:>4} {:>12} {:>15} {:>6} {:>11} {:>12} {:>11}\n",
            "mean",
            "",
            cell(shared_mean),
            "",
            "",
            cell(alone_mean),
            cell(personalized_mean),
            cell(self.mean_local_generalization)
        ));
        if let Means::Survival {
            hospitals_with_c_index,
            ..
        } = self.means
            && hospitals_with_c_index < self.hospitals.len()
        {
            out.push_str(&format!(
                "-: no C-index (the test split has no comparable pair); the means are over the \
                 {hospitals_with_c_index} of {} hospitals with one\n",
                self.hospitals.len()
            ));
        }
        out.push_str(
            "personalized: each hospital's own model, the shared one fine-tuned on its own rows for \
             the steps\ncross-validation picks (kept locally; the shared model is the certified one).\n",
        );
        out.push_str(&format!(
            "all hospitals agree within {:.2e} (relative L2); {:.1} s\n",
            self.max_relative_distance, self.seconds
        ));
        if let Some(v) = &self.validator {
            let p = &self.policy;
            let last = match v.last {
                Last::Binary { auc } => format!("AUC {}", cell(auc)),
                Last::Survival { c_index } => format!("C-index {}", cell(c_index)),
            };
            out.push_str(&format!(
                "\nvalidator abroad ({}, {}) validated {} final versions ({last}).\n\
                 policy: certified when {} validator(s) from {} country(ies) report {} >= {:.2} \
                 on >= {} patients\n",
                v.site,
                v.country,
                v.validated,
                p.validators,
                p.countries,
                p.metric,
                p.min,
                p.min_samples
            ));
            for h in &self.hospitals {
                out.push_str(&format!(
                    "  {:<14} final version {} {}\n",
                    h.site,
                    h.final_version.map_or("-".into(), |f| f.short()),
                    match h.certified {
                        Some(true) => "certified".to_owned(),
                        Some(false) =>
                            format!("not certified: {}", h.not_certified_because.join("; ")),
                        None => "not judged".to_owned(),
                    }
                ));
            }
            out.push_str(match self.verdicts_agree {
                Some(true) => "every node reached the same verdicts on its own\n",
                _ => "the nodes' verdicts differ or are incomplete\n",
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(task: Task, scores: &[Scores]) -> Report {
        let hospitals: Vec<Hospital> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| Hospital {
                site: format!("site{i}"),
                test_rows: Some(40),
                scores: *s,
                interval: None,
                personalized_steps: None,
                local_generalization: Some(0.6),
                rejected: 0,
                final_version: None,
                certified: Some(true),
                not_certified_because: vec![],
            })
            .collect();
        let means = match task {
            Task::Binary => Means::Binary {
                mean_accuracy: 0.75,
                mean_local_accuracy: 0.7,
                mean_personalized_accuracy: None,
            },
            Task::Survival => Means::Survival {
                mean_c_index: mean_defined(hospitals.iter().map(|h| h.scores.pair().0)),
                mean_local_c_index: mean_defined(hospitals.iter().map(|h| h.scores.pair().1)),
                mean_personalized_c_index: None,
                hospitals_with_c_index: hospitals
                    .iter()
                    .filter(|h| h.scores.pair().0.is_some())
                    .count(),
            },
        };
        Report {
            hospitals,
            means,
            mean_local_generalization: Some(0.6),
            max_relative_distance: 0.0,
            seconds: 1.0,
            validator: None,
            verdicts_agree: None,
            policy: demo_policy(task),
            task: format!("{task:?}").to_lowercase(),
            model: ModelSpec::for_task(task, 3),
            budget: Budget::for_task(task),
        }
    }

    #[test]
    fn binary_json_keeps_its_fields_and_survival_json_has_the_c_index() {
        let binary = report(
            Task::Binary,
            &[Scores::Binary {
                accuracy: 0.75,
                auc: None,
                local_accuracy: 0.7,
                personalized_accuracy: Some(0.72),
            }],
        );
        let json = serde_json::to_value(&binary).expect("json");
        let h = &json["hospitals"][0];
        for key in [
            "accuracy",
            "auc",
            "local_accuracy",
            "personalized_accuracy",
            "local_generalization",
        ] {
            assert!(h.get(key).is_some(), "{key} in {h}");
        }
        assert!(h.get("c_index").is_none(), "{h}");
        assert_eq!(json["mean_accuracy"], 0.75);
        assert_eq!(json["mean_local_accuracy"], 0.7);
        assert!(json.get("mean_c_index").is_none());
        assert_eq!(json["policy"]["metric"], "auc");

        // One region's split has no comparable pair: its C-index is null, the mean is over the
        // other two and the table says so.
        let survival = report(
            Task::Survival,
            &[
                Scores::Survival {
                    c_index: Some(0.8),
                    local_c_index: Some(0.7),
                    personalized_c_index: Some(0.7),
                },
                Scores::Survival {
                    c_index: None,
                    local_c_index: None,
                    personalized_c_index: None,
                },
                Scores::Survival {
                    c_index: Some(0.6),
                    local_c_index: Some(0.5),
                    personalized_c_index: Some(0.5),
                },
            ],
        );
        let json = serde_json::to_value(&survival).expect("json");
        let h = &json["hospitals"][1];
        assert!(h["c_index"].is_null() && h.get("accuracy").is_none(), "{h}");
        assert!((json["mean_c_index"].as_f64().expect("mean") - 0.7).abs() < 1e-12);
        assert_eq!(json["hospitals_with_c_index"], 2);
        assert!(json.get("mean_accuracy").is_none());
        assert_eq!(json["policy"]["metric"], "c_index");
        assert_eq!(json["budget"]["rounds"], 5);
        let text = survival.to_text();
        assert!(text.contains("mesh C-index"), "{text}");
        assert!(
            text.contains("the means are over the 2 of 3 hospitals"),
            "{text}"
        );
        assert!(text.contains("5 rounds × 100 SGD steps"), "{text}");
    }

    #[test]
    fn the_budget_follows_the_task_unless_the_options_say_otherwise() {
        let mut options = Options {
            data: "data/tcga-brca/schema.toml".into(),
            dir: "target/mesh".into(),
            rounds: None,
            steps: None,
            lr: None,
            seed: 42,
            seeds: Vec::new(),
            round_timeout: 60,
            timeout: 600,
            json: None,
            resume: false,
            no_validator: false,
            outer: None,
        };
        assert_eq!(
            options.budget(Task::Survival),
            Budget::for_task(Task::Survival)
        );
        assert_eq!(
            (
                options.budget(Task::Binary).rounds,
                options.budget(Task::Binary).lr
            ),
            (15, 0.01)
        );
        options.rounds = Some(3);
        options.lr = Some(0.05);
        let budget = options.budget(Task::Survival);
        assert_eq!(
            (
                budget.rounds,
                budget.local_steps,
                budget.batch_size,
                budget.lr
            ),
            (3, 100, 8, 0.05)
        );
    }
}
