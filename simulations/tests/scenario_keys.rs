//! Every scenario key is documented: each field of every scenario table (read from serde's own
//! list of a struct's fields, so a field added in code is seen here without touching this
//! file), each field of every kind of the tagged tables (`data.split`, `topology`,
//! `protocol.rule`, `protocol.two_level`, `training.model`; a new kind stops this file from
//! compiling until it is listed) and every value of the named choices (`attack.kind`, …) must
//! appear in `simulations/SCENARIOS.md` in backticks, as a dotted path (`network.groups.size`).

use std::collections::BTreeSet;

use medmesh_learning::learner::{ModelSpec, TaskKind};
use medmesh_learning::privacy::DpConfig;
use medmesh_protocol::aggregate::{Rule, Tau};
use medmesh_protocol::peer::{Outer, Outliers, TwoLevel};
use medmesh_simulations::attack::{Attack, AttackKind, Placement};
use medmesh_simulations::plot::AccuracyAxis;
use medmesh_simulations::scenario::{
    DataSpec, OutputSpec, ProtocolSpec, Scenario, Split, TimingSpec, TrainingKind, TrainingSpec,
};
use medmesh_simulations::topology::Topology;
use medmesh_simulations::{Churn, Groups, Network, Outage, Partition, Stragglers, synthetic};
use serde::Serialize;
use serde::de::{DeserializeOwned, Error as _, Visitor};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/SCENARIOS.md");

/// A deserializer that only answers with the field names a struct asks for.
struct Probe;

impl<'de> serde::Deserializer<'de> for Probe {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom(fields.join(" ")))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The TOML keys of struct `T`, as serde reads them (aliases included).
fn fields<T: DeserializeOwned>() -> Vec<String> {
    match T::deserialize(Probe) {
        Err(e) => {
            let text = e.to_string();
            assert_ne!(
                text,
                "not a struct",
                "{} is a struct",
                std::any::type_name::<T>()
            );
            text.split(' ').map(str::to_owned).collect()
        }
        Ok(_) => unreachable!("the probe never gives a value"),
    }
}

/// The dotted keys (and tag values) of a tagged value at `path`, nested tables included.
fn walk(path: &str, value: &toml::Value, keys: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                let at = format!("{path}.{key}");
                if matches!(key.as_str(), "kind" | "rule" | "across")
                    && let Some(tag) = v.as_str()
                {
                    keys.insert(tag.to_owned());
                }
                walk(&at, v, keys);
                keys.insert(at);
            }
        }
        toml::Value::String(choice) if path.ends_with("task") => {
            keys.insert(choice.clone());
        }
        _ => {}
    }
}

/// Every kind of a tagged table, serialized at `path`.
fn kinds<T: Serialize>(path: &str, all: &[T], keys: &mut BTreeSet<String>) {
    for value in all {
        walk(
            path,
            &toml::Value::try_from(value).expect("serializes"),
            keys,
        );
    }
}

/// Every documented key, tag and choice.
fn every_key() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = |path: &str, names: Vec<String>| {
        for name in names {
            keys.insert(if path.is_empty() {
                name
            } else {
                format!("{path}.{name}")
            });
        }
    };
    table("", fields::<Scenario>());
    table("data", fields::<DataSpec>());
    table("data.split", fields::<synthetic::Spec>());
    table("training", fields::<TrainingSpec>());
    table("training.dp", fields::<DpConfig>());
    table("protocol", fields::<ProtocolSpec>());
    table("protocol.outliers", fields::<Outliers>());
    table("network", fields::<Network>());
    table("network.groups", fields::<Groups>());
    table("network.partition", fields::<Partition>());
    table("network.churn", fields::<Churn>());
    table("network.churn.outages", fields::<Outage>());
    table("timing", fields::<TimingSpec>());
    table("timing.stragglers", fields::<Stragglers>());
    table("attack", fields::<Attack>());
    table("output", fields::<OutputSpec>());

    // Tagged tables: one value of every kind (the matches fail to compile on a new kind).
    let splits = [
        Split::Natural,
        Split::Sites { per_site: 4 },
        Split::Iid { peers: 8 },
        Split::Dirichlet {
            peers: 8,
            alpha: 0.5,
        },
        Split::Synthetic(synthetic::Spec::default()),
    ];
    for s in &splits {
        match s {
            Split::Natural
            | Split::Sites { .. }
            | Split::Iid { .. }
            | Split::Dirichlet { .. }
            | Split::Synthetic(_) => {}
        }
    }
    kinds("data.split", &splits, &mut keys);
    let topologies = [
        Topology::FullyConnected,
        Topology::Ring,
        Topology::Torus,
        Topology::RandomRegular { degree: 4 },
        Topology::ErdosRenyi { p: 0.1 },
        Topology::SmallWorld { k: 4, beta: 0.1 },
        Topology::Exponential,
        Topology::EpidemicSampling { s: 7 },
    ];
    for t in &topologies {
        match t {
            Topology::FullyConnected
            | Topology::Ring
            | Topology::Torus
            | Topology::RandomRegular { .. }
            | Topology::ErdosRenyi { .. }
            | Topology::SmallWorld { .. }
            | Topology::Exponential
            | Topology::EpidemicSampling { .. } => {}
        }
    }
    kinds("topology", &topologies, &mut keys);
    let rules = [
        Rule::Mean,
        Rule::MetropolisHastings,
        Rule::Median,
        Rule::TrimmedMean { trim: 1 },
        Rule::ClippedGossip {
            tau: Tau::Fixed { radius: 1.0 },
        },
        Rule::ClippedGossip {
            tau: Tau::Adaptive {
                byzantine_fraction: 0.2,
            },
        },
    ];
    for r in &rules {
        match r {
            Rule::Mean
            | Rule::MetropolisHastings
            | Rule::Median
            | Rule::TrimmedMean { .. }
            | Rule::ClippedGossip {
                tau: Tau::Fixed { .. } | Tau::Adaptive { .. },
            } => {}
        }
    }
    kinds("protocol.rule", &rules, &mut keys);
    let two_level = [
        TwoLevel::Every { rounds: 5 },
        TwoLevel::Fanout { groups: 1 },
    ];
    for t in &two_level {
        match t {
            TwoLevel::Every { .. } | TwoLevel::Fanout { .. } => {}
        }
    }
    kinds("protocol.two_level", &two_level, &mut keys);
    let outer = [
        Outer::Nesterov {
            lr: 0.7,
            momentum: 0.9,
        },
        Outer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.001,
        },
        Outer::Yogi {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.001,
        },
        Outer::Adagrad {
            lr: 0.1,
            tau: 0.001,
        },
    ];
    for o in &outer {
        match o {
            Outer::Nesterov { .. }
            | Outer::Adam { .. }
            | Outer::Yogi { .. }
            | Outer::Adagrad { .. } => {}
        }
    }
    kinds("protocol.outer", &outer, &mut keys);
    let models = [
        ModelSpec::Logistic { inputs: 13 },
        ModelSpec::Mlp {
            inputs: 13,
            hidden: vec![16],
        },
        ModelSpec::Cox { inputs: 13 },
        ModelSpec::TorchScript {
            path: "model.pt".into(),
            task: TaskKind::Binary,
        },
        ModelSpec::TorchScript {
            path: "model.pt".into(),
            task: TaskKind::Survival,
        },
    ];
    for m in &models {
        match m {
            ModelSpec::Logistic { .. }
            | ModelSpec::Mlp { .. }
            | ModelSpec::Cox { .. }
            | ModelSpec::TorchScript {
                task: TaskKind::Binary | TaskKind::Survival,
                ..
            } => {}
        }
    }
    kinds("training.model", &models, &mut keys);

    // Named choices.
    let choice = |value: toml::Value| value.as_str().expect("a name").to_owned();
    for kind in [TrainingKind::LocalSgd, TrainingKind::AveragingOnly] {
        match kind {
            TrainingKind::LocalSgd | TrainingKind::AveragingOnly => {}
        }
        keys.insert(choice(toml::Value::try_from(kind).expect("serializes")));
    }
    for axis in [AccuracyAxis::Fit, AccuracyAxis::Full] {
        match axis {
            AccuracyAxis::Fit | AccuracyAxis::Full => {}
        }
        keys.insert(choice(toml::Value::try_from(axis).expect("serializes")));
    }
    for placement in [Placement::Random, Placement::First] {
        match placement {
            Placement::Random | Placement::First => {}
        }
        keys.insert(choice(
            toml::Value::try_from(placement).expect("serializes"),
        ));
    }
    for kind in [
        AttackKind::None,
        AttackKind::SignFlip,
        AttackKind::Noise,
        AttackKind::Alie,
        AttackKind::ModelReplacement,
        AttackKind::Ipm,
        AttackKind::LabelFlip,
        AttackKind::StaleReplay,
        AttackKind::ForgedSignature,
        AttackKind::Equivocation,
    ] {
        match kind {
            AttackKind::None
            | AttackKind::SignFlip
            | AttackKind::Noise
            | AttackKind::Alie
            | AttackKind::ModelReplacement
            | AttackKind::Ipm
            | AttackKind::LabelFlip
            | AttackKind::StaleReplay
            | AttackKind::ForgedSignature
            | AttackKind::Equivocation => {}
        }
        keys.insert(choice(toml::Value::try_from(kind).expect("serializes")));
    }
    keys
}

/// The keys of `every_key` that `doc` does not mention in backticks.
fn missing(doc: &str) -> Vec<String> {
    every_key()
        .into_iter()
        .filter(|key| !doc.contains(&format!("`{key}`")))
        .collect()
}

#[test]
fn every_scenario_key_is_in_scenarios_md() {
    let doc = std::fs::read_to_string(DOC).expect("simulations/SCENARIOS.md");
    let missing = missing(&doc);
    assert!(
        missing.is_empty(),
        "keys missing from SCENARIOS.md (add each in backticks with its type, unit, default and \
         range): {missing:?}"
    );
}

#[test]
fn the_check_sees_fields_nested_tables_kinds_and_choices() {
    let keys = every_key();
    for key in [
        "name",
        "topology",
        "network.loss",
        "network.bandwidth_mb_s",
        "network.bandwidth_mbps",
        "network.groups.bandwidth_mb_s",
        "network.partition.heal",
        "network.churn.outages.peer",
        "data.split.per_site",
        "data.split.test_samples",
        "topology.s",
        "protocol.rule.trim",
        "protocol.rule.tau.byzantine_fraction",
        "protocol.two_level.rounds",
        "training.kind",
        "training.model.hidden",
        "training.dp.delta",
        "epidemic_sampling",
        "averaging_only",
        "sign_flip",
        "label_flip",
        "attack.epsilon",
        "network.payload_loss",
        "output.per_peer",
        "output.accuracy_axis",
        "full",
    ] {
        assert!(keys.contains(key), "{key} not collected: {keys:?}");
    }
    // Dropping one key from the document is caught.
    let doc = std::fs::read_to_string(DOC).expect("simulations/SCENARIOS.md");
    assert_eq!(
        missing(&doc.replace("`network.churn.outages.peer`", "network.churn.outages.peer")),
        vec!["network.churn.outages.peer".to_owned()]
    );
}
