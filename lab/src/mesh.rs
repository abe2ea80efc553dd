//! A whole mesh on one machine: every site of a dataset becomes a hospital with its own key,
//! store, config and `medmesh run` process on loopback. The founders' genesis roster is signed
//! by all of them; each node knows the others only as bootstrap addresses. This is the README's
//! main job and the multi-process integration test; nothing here is special-cased in the node.

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

use medmesh_learning::data::Dataset;
use medmesh_learning::frame::Setup;
use medmesh_learning::learner::{ModelSpec, Optimizer, TrainConfig};
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
    /// An outer optimizer for every hospital (`[experiment] outer`), as its TOML value, e.g.
    /// `--outer '{ optimizer = "adam", lr = 0.01, beta1 = 0.9, beta2 = 0.99, tau = 0.001 }'`;
    /// plain averaging without it.
    #[arg(long, value_parser = parse_outer)]
    pub outer: Option<peer::Outer>,
}

/// `--outer`'s TOML inline table.
fn parse_outer(text: &str) -> Result<peer::Outer, String> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        outer: peer::Outer,
    }
    let outer = toml::from_str::<Wrapper>(&format!("outer = {text}"))
        .map_err(|e| format!("not an outer optimizer ({e})"))?
        .outer;
    outer.check()?;
    Ok(outer)
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
    /// The validator abroad, if the mesh has one.
    pub validator: Option<Validator>,
    /// Whether every node reached the same certification verdict on every final version.
    pub verdicts_agree: Option<bool>,
    /// The certification policy every node applied.
    pub policy: Policy,
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
    /// Its final version (the merged model it announced after the last round).
    pub final_version: Option<ContentId>,
    /// Whether that version is certified (as this hospital judged it); `None` if not judged.
    pub certified: Option<bool>,
    /// Why it is not certified, if it is not ("1 country(ies) of 2 required", ...).
    pub not_certified_because: Vec<String>,
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
    /// AUC of the last version it validated.
    pub auc: Option<f64>,
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

    /// Its config for the mesh `spec`: shared initialization, SGD, pulls from `fanout` members
    /// per round, bootstraps from `peers`; `index` varies its seeds.
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
            model: ModelSpec::Logistic {
                inputs: spec.inputs,
            },
            training: TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                lr: options.lr,
                batch_size: 4,
                local_steps: options.steps,
                seed: options.seed.wrapping_add(index as u64),
                ..TrainConfig::default()
            },
            experiment: peer::Config {
                experiment: spec.experiment.to_owned(),
                rule: Rule::Mean,
                fanout,
                max_rounds: Some(options.rounds),
                round_timeout: Duration::from_secs(options.round_timeout),
                fetch_timeout: Duration::from_secs(20),
                seed: options.seed.wrapping_add(100 + index as u64),
                outer: options.outer,
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
#[derive(Debug, Clone, Copy)]
pub struct MeshSpec<'a> {
    /// The mesh's settings.
    pub options: &'a Options,
    /// Features of the dataset (the logistic model's inputs).
    pub inputs: i64,
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
                progress(&format!(
                    "{} finished round {}: test accuracy {:.3}",
                    node.name, outcome.rounds, outcome.test.accuracy
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
    // The partner abroad validates on a copy of the first hospital's test split (the only
    // split with at least 100 patients); it never trains.
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
        inputs,
        experiment: &dataset.name,
        genesis: &genesis_path,
    };
    let mut children = Children::default();
    let started = Instant::now();
    for (i, node) in everyone.iter().enumerate() {
        let mut config = node.config(&spec, i, nodes.len() - 1, &everyone)?;
        config.experiment.certification = Some(demo_policy());
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

    let hospitals = compare_alone(options, &dataset, inputs, &outcomes)?;
    let n = hospitals.len() as f64;
    Ok(Report {
        mean_accuracy: hospitals.iter().map(|h| h.accuracy).sum::<f64>() / n,
        mean_local_accuracy: hospitals.iter().map(|h| h.local_accuracy).sum::<f64>() / n,
        mean_local_generalization: hospitals
            .iter()
            .map(|h| h.local_generalization)
            .sum::<f64>()
            / n,
        hospitals,
        max_relative_distance: max_relative_distance(&outcomes),
        seconds,
        validator: validator_outcome.map(|o| Validator {
            site: format!("{validator_site} test split"),
            country: "DE".into(),
            validated: o.validated.len(),
            auc: o.test.auc,
        }),
        verdicts_agree,
        policy: demo_policy(),
    })
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

/// Each hospital's row: the mesh's result next to local-only training with the same budget (in
/// one training worker), tested on its own split and on every hospital's.
fn compare_alone(
    options: &Options,
    dataset: &Dataset,
    inputs: i64,
    outcomes: &[Outcome],
) -> anyhow::Result<Vec<Hospital>> {
    let mut alone = Worker::start()?;
    let mut hospitals = Vec::new();
    for (site, outcome) in dataset.sites.iter().zip(outcomes) {
        let config = TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            lr: options.lr,
            batch_size: 4,
            seed: options.seed,
            ..TrainConfig::default()
        };
        let built = alone.build(&Setup {
            spec: ModelSpec::Logistic { inputs },
            training: config,
            init_seed: options.seed,
            data: site.train.clone(),
        })?;
        let (trained, _) = alone.train(&built.init, options.steps * options.rounds as usize)?;
        let mut accuracy = |table: &medmesh_learning::data::Table| -> anyhow::Result<f64> {
            let probs = alone.predict(&trained, table)?;
            Ok(metrics::binary(&probs, &table.y, 0.5)?.accuracy)
        };
        let mut generalization = 0.0;
        for other in &dataset.sites {
            generalization += accuracy(&other.test)? / dataset.sites.len() as f64;
        }
        let verdict = outcome
            .final_version
            .and_then(|f| outcome.certifications.iter().find(|c| c.model == f));
        let certified = verdict.map(|c| c.certified);
        let not_certified_because = verdict.map(|c| c.reasons.clone()).unwrap_or_default();
        hospitals.push(Hospital {
            site: site.name.clone(),
            accuracy: outcome.test.accuracy,
            auc: outcome.test.auc,
            local_accuracy: accuracy(&site.test)?,
            local_generalization: generalization,
            rejected: outcome.rejections.values().sum(),
            final_version: outcome.final_version,
            certified,
            not_certified_because,
        });
    }
    Ok(hospitals)
}

/// The demo's certification policy: a validator reports AUC ≥ 0.80 on ≥ 100 patients.
pub fn demo_policy() -> Policy {
    Policy {
        metric: "auc".into(),
        min: 0.80,
        min_samples: 100,
        validators: 1,
        countries: 1,
    }
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
        if let Some(v) = &self.validator {
            let p = &self.policy;
            out.push_str(&format!(
                "\nvalidator abroad ({}, {}) validated {} final versions (AUC {}).\n\
                 policy: certified when {} validator(s) from {} country(ies) report {} >= {:.2} \
                 on >= {} patients\n",
                v.site,
                v.country,
                v.validated,
                v.auc.map_or("-".into(), |a| format!("{a:.3}")),
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
