//! The node's configuration: one TOML file per hospital.
//!
//! ```toml
//! key = "key.pem"              # this member's ed25519 key (`medmesh init`)
//! store = "store.redb"         # crash-safe store of every signed item and the checkpoint
//! genesis = "roster.json"      # the founders' signed roster, used until the store holds one
//! init_seed = 42               # every member initializes the model from the same seed
//! linger_ms = 15000            # keep serving payloads this long after the last round
//! retention_rounds = 10        # keep each author's last 10 rounds of payloads (0: keep all)
//!
//! [data]
//! schema = "../data/heart-disease/schema.toml"
//! site = "cleveland"           # this hospital's site in the schema
//!
//! [model]
//! kind = "logistic"
//! inputs = 13
//!
//! [training]                   # learner::TrainConfig
//! lr = 0.001
//! batch_size = 4
//! local_steps = 100
//! # DP-SGD (noise from the OS; training stops once epsilon would pass max_epsilon):
//! # dp = { noise_multiplier = 1.1, max_grad_norm = 1.0, delta = 1e-5, max_epsilon = 8.0 }
//!
//! [experiment]                 # medmesh_protocol::peer::Config (model digest is filled in)
//! experiment = "heart-disease"
//! fanout = 3
//! max_rounds = 15
//! # rule = { rule = "trimmed_mean", trim = 1 }  # a robust merge (default: the weighted mean)
//! # outliers = { factor = 6.0, rounds = 3 }      # flag members whose versions stay far off
//! # two_level = { across = "every", rounds = 5 }  # fanout inside the roster group, others every 5th round
//!
//! [network]                    # network::NetworkConfig
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! bootstrap = ["/ip4/10.0.0.2/tcp/4001/p2p/12D3Koo..."]
//! payload_request_burst = 64         # payload requests a member may make at once,
//! payload_requests_per_second = 32   # then this many a second (beyond: "not found")
//! ```
//!
//! Relative paths are relative to the config file's folder. Every section has defaults;
//! [`NodeConfig::load`] checks the rules that span sections and names the file on error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medmesh_protocol::peer;
use serde::{Deserialize, Serialize};

use crate::network::NetworkConfig;
use medmesh_learning::learner::{ModelSpec, TrainConfig};
use medmesh_learning::personal::{Personalization, Search};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML for this config (the message names the line and the key).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
    /// A rule spanning fields is broken.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which rule.
        message: String,
    },
}

/// Where a hospital's records are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset's schema file.
    pub schema: PathBuf,
    /// This hospital's site name in the schema (no default: a member that trains or validates
    /// must name it; it must be the site its roster entry lists).
    pub site: String,
    /// Train on part of the site's training rows only, when several nodes share one site's
    /// records (departments of one hospital, or an experiment that splits a site).
    pub shard: Option<Shard>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            schema: "data/heart-disease/schema.toml".into(),
            site: String::new(),
            shard: None,
        }
    }
}

/// A local dataset the operator may validate on, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationData {
    /// What the operator calls it (`medmesh validate --dataset NAME`).
    pub name: String,
    /// Its schema file.
    pub schema: PathBuf,
    /// The site whose test split to validate on.
    pub site: String,
}

/// Training rows `index`, `index + count`, `index + 2·count`, … of a site (the test split is
/// the site's whole test split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// Which part, from 0.
    pub index: usize,
    /// Into how many parts the rows are dealt.
    pub count: usize,
}

/// A hospital's node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The member key file.
    pub key: PathBuf,
    /// The store file.
    pub store: PathBuf,
    /// The founders' signed genesis roster (JSON), used until the store holds a roster.
    pub genesis: PathBuf,
    /// Seed of the shared model initialization.
    pub init_seed: u64,
    /// After the last round, keep serving payloads to slower members this long (milliseconds).
    pub linger_ms: u64,
    /// Payloads kept in the store: those of each author's last `retention_rounds` rounds, plus
    /// every payload in the lineage of this node's final version and of every certified version;
    /// older ones are deleted every `retention_rounds / 2` rounds, so the store stops growing.
    /// Version records, reports and rosters are never deleted (lineage and certification stay
    /// checkable; `medmesh export` of a version whose payload is gone says so). 0 keeps every
    /// payload; otherwise at least 2, so a member a round behind still finds what it pulls.
    pub retention_rounds: u64,
    /// Where to write the final result (JSON), if anywhere.
    pub results: Option<PathBuf>,
    /// The admin endpoint (`/status`, `/metrics` and the operator's requests), e.g.
    /// `127.0.0.1:9100`; off when not set. Every request needs the token of `admin_token`.
    pub admin: Option<SocketAddr>,
    /// The admin endpoint's credential file (default: `admin.token` beside the key), made
    /// owner-only with a random token at `medmesh init` or the first start.
    pub admin_token: Option<PathBuf>,
    /// Allow `admin` to be an address other than loopback. Off by default: the endpoint speaks
    /// plain HTTP, so a remote one belongs behind a TLS proxy on a management network.
    pub admin_remote: bool,
    /// Local datasets the operator may validate models on besides `[data]`
    /// (`[[validation]]`, each with a `name`, its `schema` and a `site`): `medmesh validate
    /// --dataset NAME` names one; a request never names a file.
    pub validation: Vec<ValidationData>,
    /// Members that must be connected and subscribed before the first round starts, so the
    /// first announcements reach them (default: every other training member of the roster).
    pub min_peers: Option<usize>,
    /// Start anyway after waiting this long for `min_peers` (milliseconds).
    pub start_timeout_ms: u64,
    /// A member that validates (and does not train) validates the final version of every
    /// training member on its local test split and publishes the reports; it finishes once it
    /// has validated them all.
    pub validate_final: bool,
    /// Local data.
    pub data: DataConfig,
    /// The shared model.
    pub model: ModelSpec,
    /// Local training.
    pub training: TrainConfig,
    /// The hospital's own model, derived from the shared one when its rounds are done
    /// (`medmesh_learning::personal`): kept locally, never announced.
    pub personalization: Personalization,
    /// The protocol's settings.
    pub experiment: peer::Config,
    /// The network.
    pub network: NetworkConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            key: "key.pem".into(),
            store: "store.redb".into(),
            genesis: "roster.json".into(),
            init_seed: 42,
            linger_ms: 15_000,
            retention_rounds: 10,
            results: None,
            admin: None,
            admin_token: None,
            admin_remote: false,
            validation: Vec::new(),
            min_peers: None,
            start_timeout_ms: 60_000,
            validate_final: false,
            data: DataConfig::default(),
            model: ModelSpec::Logistic { inputs: 13 },
            training: TrainConfig::default(),
            personalization: Personalization::default(),
            experiment: peer::Config {
                experiment: "heart-disease".into(),
                max_rounds: Some(15),
                ..peer::Config::default()
            },
            network: NetworkConfig::default(),
        }
    }
}

impl NodeConfig {
    /// The personalization search this config asks for: its settings, with `max_steps`
    /// defaulting to the shared training's budget (`local_steps` × `max_rounds`) but at most 20
    /// rounds' worth (15 when the experiment has no end), and `every` to `local_steps`.
    pub fn personal_search(&self) -> Search {
        let every = self
            .personalization
            .every
            .unwrap_or(self.training.local_steps)
            .max(1);
        let rounds = self.experiment.max_rounds.unwrap_or(15).min(20);
        let budget = self
            .training
            .local_steps
            .saturating_mul(usize::try_from(rounds).unwrap_or(20));
        let max_steps = self.personalization.max_steps.unwrap_or(budget);
        // At most 1000 step counts are tried (`Personalization::check` holds explicit settings
        // to it; a derived budget is capped here).
        Search {
            folds: self.personalization.folds,
            repeats: self.personalization.repeats,
            max_steps: max_steps.min(every.saturating_mul(1000)),
            every,
        }
    }

    /// Reads, resolves relative paths against the file's folder, and checks.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        for (old, new) in deprecated_keys(&text) {
            tracing::warn!(
                config = %path.display(),
                "`{old}` is deprecated: it is read as `{new}`; rename it (docs/CONFIG.md)"
            );
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.key);
        join(&mut self.store);
        join(&mut self.genesis);
        join(&mut self.data.schema);
        if let Some(r) = &mut self.results {
            join(r);
        }
        if let Some(t) = &mut self.admin_token {
            join(t);
        }
        for v in &mut self.validation {
            join(&mut v.schema);
        }
        if let ModelSpec::TorchScript { path, .. } = &mut self.model {
            join(path);
        }
    }

    /// The rules that span sections.
    pub fn check(&self) -> Result<(), String> {
        if let Some(shard) = self.data.shard
            && shard.index >= shard.count
        {
            return Err(format!(
                "[data] shard index {} must be below its count {}",
                shard.index, shard.count
            ));
        }
        self.training.check().map_err(|e| e.to_string())?;
        self.personalization.check().map_err(|e| e.to_string())?;
        if self.training.dp.is_some_and(|dp| dp.seeded_noise) {
            return Err(
                "[training.dp] seeded_noise = true draws the DP-SGD noise from the config's \
                 seed: anyone who knows the config can regenerate the noise and subtract it, so it \
                 protects no patient. It exists for the simulator and tests only; remove it, and \
                 the node draws its noise from the operating system"
                    .into(),
            );
        }
        self.network.check().map_err(|e| format!("[network] {e}"))?;
        let mut experiment = self.experiment.clone();
        experiment.model = medmesh_protocol::identity::Digest::default();
        experiment
            .check()
            .map_err(|e| format!("[experiment] {e}"))?;
        if let Some(addr) = self.admin
            && !addr.ip().is_loopback()
            && !self.admin_remote
        {
            return Err(format!(
                "admin = \"{addr}\" is not a loopback address: the admin endpoint speaks plain \
                 HTTP, so set admin_remote = true only for a management network, behind a TLS proxy"
            ));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.validation {
            if v.name.trim().is_empty() || !names.insert(v.name.as_str()) {
                return Err(format!(
                    "[[validation]] names must be unique and not empty ({:?})",
                    v.name
                ));
            }
        }
        if self.retention_rounds == 1 {
            return Err(
                "retention_rounds must be 0 (keep every payload) or at least 2 (a member a \
                 round behind still finds the payloads it pulls)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The admin token file: `admin_token`, or `admin.token` beside the key.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token
            .clone()
            .unwrap_or_else(|| crate::keys::token_path(&self.key))
    }

    /// The `[[validation]]` dataset called `name`.
    pub fn validation_data(&self, name: &str) -> Option<&ValidationData> {
        self.validation.iter().find(|v| v.name == name)
    }

    /// How long to keep serving after the last round.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

/// Keys renamed to carry their unit: the old name is still read, with a warning.
pub const DEPRECATED_KEYS: [(&str, &str); 4] = [
    ("experiment.round_timeout", "experiment.round_timeout_ms"),
    ("experiment.fetch_timeout", "experiment.fetch_timeout_ms"),
    (
        "network.idle_connection_timeout",
        "network.idle_connection_timeout_ms",
    ),
    ("network.request_timeout", "network.request_timeout_ms"),
];

/// The deprecated keys ([`DEPRECATED_KEYS`]) a config text uses, with their new names.
pub fn deprecated_keys(text: &str) -> Vec<(&'static str, &'static str)> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    DEPRECATED_KEYS
        .into_iter()
        .filter(|(old, _)| {
            old.split_once('.').is_some_and(|(section, key)| {
                table
                    .get(section)
                    .and_then(toml::Value::as_table)
                    .is_some_and(|t| t.contains_key(key))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_admin_endpoint_needs_the_opt_in_and_validation_names_are_unique() {
        let mut config = NodeConfig {
            admin: Some("0.0.0.0:9100".parse().expect("addr")),
            ..NodeConfig::default()
        };
        let err = config.check().expect_err("not loopback");
        assert!(err.contains("admin_remote") && err.contains("TLS"), "{err}");
        config.admin_remote = true;
        assert_eq!(config.check(), Ok(()));
        config.admin = Some("127.0.0.1:9100".parse().expect("addr"));
        config.admin_remote = false;
        assert_eq!(config.check(), Ok(()));
        assert_eq!(config.admin_token_path(), PathBuf::from("admin.token"));
        let data = ValidationData {
            name: "va".into(),
            schema: "schema.toml".into(),
            site: "va".into(),
        };
        config.validation = vec![data.clone(), data];
        assert!(config.check().expect_err("twice").contains("unique"));
        config.validation.pop();
        assert_eq!(
            config.validation_data("va").map(|v| v.site.as_str()),
            Some("va")
        );
        assert_eq!(config.validation_data("/etc/passwd"), None);
    }

    #[test]
    fn old_key_names_are_read_with_a_deprecation() {
        let text = "[experiment]\nround_timeout = 1500\nfetch_timeout_ms = 700\n\
                    [network]\nrequest_timeout = 9000\n";
        let config: NodeConfig = toml::from_str(text).expect("old names parse");
        assert_eq!(config.experiment.round_timeout, Duration::from_millis(1500));
        assert_eq!(config.experiment.fetch_timeout, Duration::from_millis(700));
        assert_eq!(config.network.request_timeout, Duration::from_millis(9000));
        assert_eq!(
            deprecated_keys(text),
            vec![
                ("experiment.round_timeout", "experiment.round_timeout_ms"),
                ("network.request_timeout", "network.request_timeout_ms"),
            ]
        );
        // Written back, only the new names appear.
        let written = toml::to_string(&config).expect("serializes");
        assert!(written.contains("round_timeout_ms = 1500"), "{written}");
        assert!(deprecated_keys(&written).is_empty(), "{written}");
    }

    #[test]
    fn a_hospital_gets_a_fixed_port_no_mdns_and_no_default_site() {
        let config = NodeConfig::default();
        assert_eq!(
            config.network.listen,
            vec![
                "/ip4/0.0.0.0/tcp/4001"
                    .parse::<libp2p::Multiaddr>()
                    .expect("addr")
            ]
        );
        assert!(!config.network.mdns);
        assert_eq!(config.data.site, "");
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = NodeConfig::default();
        let text = toml::to_string(&config).expect("serializes");
        let back: NodeConfig = toml::from_str(&text).expect("parses");
        assert_eq!(back, config);
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "keyy = \"k.pem\"\n").expect("write");
        let err = NodeConfig::load(&path).expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.contains("node.toml") && text.contains("keyy"),
            "{text}"
        );
        std::fs::write(&path, "[training]\nlr = -1.0\n").expect("write");
        let err = NodeConfig::load(&path).expect_err("bad lr");
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = NodeConfig::load(&dir.path().join("missing.toml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Io { .. }));
    }

    #[test]
    fn retention_keeps_at_least_two_rounds_or_everything() {
        let config = |retention_rounds| NodeConfig {
            retention_rounds,
            ..NodeConfig::default()
        };
        assert!(config(1).check().is_err());
        assert_eq!(config(0).check(), Ok(()));
        assert_eq!(config(2).check(), Ok(()));
        let parsed: NodeConfig = toml::from_str("retention_rounds = 25\n").expect("parses");
        assert_eq!(parsed.retention_rounds, 25);
        let parsed: NodeConfig = toml::from_str("").expect("parses");
        assert_eq!(parsed.retention_rounds, 10, "the default");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "key = \"keys/k.pem\"\n[data]\nschema = \"/abs/schema.toml\"\nsite = \"va\"\n",
        )
        .expect("write");
        let config = NodeConfig::load(&path).expect("loads");
        assert_eq!(config.key, dir.path().join("keys/k.pem"));
        assert_eq!(config.data.schema, PathBuf::from("/abs/schema.toml"));
    }

    #[test]
    fn dp_is_read_with_its_budget_and_seeded_noise_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        let dp = "[training.dp]\nnoise_multiplier = 1.1\nmax_grad_norm = 1.0\ndelta = 1e-5\n";
        std::fs::write(&path, format!("{dp}max_epsilon = 8.0\n")).expect("write");
        let config = NodeConfig::load(&path).expect("loads");
        let read = config.training.dp.expect("dp on");
        assert_eq!((read.max_epsilon, read.seeded_noise), (Some(8.0), false));

        std::fs::write(&path, format!("{dp}seeded_noise = true\n")).expect("write");
        let err = NodeConfig::load(&path).expect_err("seeded noise");
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{text}");
        assert!(
            text.contains("node.toml")
                && text.contains("seeded_noise = true")
                && text.contains("simulator and tests only"),
            "{text}"
        );

        std::fs::write(&path, format!("{dp}max_epsilon = 0.0\n")).expect("write");
        let err = NodeConfig::load(&path).expect_err("no budget at all");
        assert!(err.to_string().contains("max_epsilon 0"), "{err}");
    }
}
