//! docs/CONFIG.md lists every key of the node's config, and `medmesh config init` writes every
//! key: a key added to the code without both fails here. The keys are read from the config
//! itself (every optional part set, every variant of the tagged tables), serialized to TOML.

use std::collections::BTreeSet;
use std::time::Duration;

use medmesh_learning::learner::{ModelSpec, Optimizer, TaskKind};
use medmesh_learning::privacy::DpConfig;
use medmesh_node::config::{NodeConfig, Shard, ValidationData};
use medmesh_node::template::{self, Role};
use medmesh_protocol::aggregate::{Rule, Tau};
use medmesh_protocol::peer::{Outer, Outliers, TwoLevel};
use medmesh_protocol::validation::Policy;

/// Every dotted key path of `value` under `prefix` (arrays of tables share their path).
fn paths(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                paths(&path, value, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                paths(prefix, item, out);
            }
        }
        _ => {}
    }
}

/// Configs that, together, set every key: each optional part on, each variant once.
fn variants() -> Vec<NodeConfig> {
    let mut full = NodeConfig {
        results: Some("results.json".into()),
        admin: Some("127.0.0.1:9100".parse().expect("address")),
        admin_token: Some("admin.token".into()),
        min_peers: Some(3),
        validation: vec![ValidationData {
            name: "registry".into(),
            schema: "schema.toml".into(),
            site: "va".into(),
        }],
        ..NodeConfig::default()
    };
    full.data.shard = Some(Shard { index: 0, count: 2 });
    full.personalization.max_steps = Some(1500);
    full.personalization.every = Some(100);
    full.training.dp = Some(DpConfig {
        max_epsilon: Some(8.0),
        ..DpConfig::default()
    });
    full.experiment.neighbours = Some(vec![medmesh_testkit::key(1).id()]);
    full.experiment.certification = Some(Policy {
        metric: "auc".into(),
        min: 0.8,
        min_samples: 100,
        validators: 2,
        countries: 2,
    });
    full.experiment.outliers = Some(Outliers::default());
    full.experiment.two_level = Some(TwoLevel::Every { rounds: 5 });
    full.experiment.outer = Some(Outer::Nesterov {
        lr: 0.7,
        momentum: 0.9,
    });
    full.experiment.round_timeout = Duration::from_secs(3);

    let mut configs = vec![full.clone()];
    for model in [
        ModelSpec::Mlp {
            inputs: 13,
            hidden: vec![16],
        },
        ModelSpec::Cox { inputs: 13 },
        ModelSpec::TorchScript {
            path: "model.pt".into(),
            task: TaskKind::Binary,
        },
    ] {
        configs.push(NodeConfig {
            model,
            ..full.clone()
        });
    }
    let mut other = full.clone();
    other.training.optimizer = Optimizer::Sgd { momentum: 0.9 };
    other.experiment.two_level = Some(TwoLevel::Fanout { groups: 1 });
    other.experiment.rule = Rule::TrimmedMean { trim: 1 };
    other.experiment.outer = Some(Outer::Yogi {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.001,
    });
    configs.push(other.clone());
    for tau in [
        Tau::Fixed { radius: 1.0 },
        Tau::Adaptive {
            byzantine_fraction: 0.2,
        },
    ] {
        let mut clipped = other.clone();
        clipped.experiment.rule = Rule::ClippedGossip { tau };
        configs.push(clipped);
    }
    configs
}

fn keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for config in variants() {
        let value = toml::Value::try_from(&config).expect("a config serializes");
        paths("", &value, &mut keys);
    }
    assert!(
        keys.len() > 80,
        "the walk found too few keys to be right: {keys:?}"
    );
    keys
}

#[test]
fn config_md_lists_every_key() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let missing: Vec<String> = keys()
        .into_iter()
        .filter(|k| {
            !(doc.contains(&format!("`{k}`"))
                || doc.contains(&format!("`[{k}]`"))
                || doc.contains(&format!("`[[{k}]]`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/CONFIG.md does not list {missing:?}"
    );
    // Renamed keys are documented with their old names.
    for (old, new) in medmesh_node::config::DEPRECATED_KEYS {
        assert!(
            doc.contains(&format!("`{old}` → `{new}`")),
            "docs/CONFIG.md does not name the old key {old}"
        );
    }
}

#[test]
fn config_init_writes_every_key() {
    for role in [Role::Hospital, Role::Validator, Role::Relay] {
        let text = template::render(role, &template::Options::default());
        let missing: Vec<String> = keys()
            .into_iter()
            .filter(|k| {
                let last = k.rsplit('.').next().unwrap_or(k);
                // A table's own key appears as `[table]`, `[[table]]` or `key = {` inline.
                !(text.contains(&format!("{last} ="))
                    || text.contains(&format!("[{k}]"))
                    || text.contains(&format!("[[{k}]]")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "`config init --role {role:?}` does not write {missing:?}"
        );
    }
}
