//! `medmesh config init`: a complete, commented node config for a role, every key with its
//! unit, default and range (docs/CONFIG.md is the reference). Optional keys are written
//! commented out; the values written are [`NodeConfig::default`]'s, so the file and the code
//! cannot drift apart (`tests` parse every role's file back).

use std::fmt::Write as _;

use libp2p::Multiaddr;
use medmesh_learning::data::Task;
use medmesh_learning::learner::{Budget, ModelSpec};

use crate::config::NodeConfig;

/// What the node will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Trains on its own records and validates others' models.
    Hospital,
    /// Validates models on its own records (a partner abroad); does not train.
    Validator,
    /// A member at a public address that members behind NAT connect through.
    Relay,
}

/// What `config init` fills in beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `[data] site` (left empty, and required at start, when not given).
    pub site: Option<String>,
    /// `[data] schema`.
    pub schema: Option<String>,
    /// `[network] bootstrap`: the relay's (or another member's) address.
    pub bootstrap: Vec<Multiaddr>,
    /// The task and feature count of the dataset `schema` names, when the caller could load it:
    /// `[model]` is then the task's built-in model with that many inputs
    /// ([`ModelSpec::for_task`]), and a survival task gets its benchmark budget
    /// ([`Budget::for_task`]: SGD, learning rate, batch size, local steps, rounds) instead of the
    /// binary defaults.
    pub dataset: Option<(Task, usize)>,
}

/// A TOML string literal (quoted and escaped).
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The config file for `role`.
pub fn render(role: Role, options: &Options) -> String {
    let d = NodeConfig::default();
    let mut out = String::new();
    let role_name = match role {
        Role::Hospital => "hospital",
        Role::Validator => "validator",
        Role::Relay => "relay",
    };
    let _ = writeln!(
        out,
        "# medmesh node config for a {role_name} (`medmesh config init`). Every key is listed \
         with its\n# unit, default and range; docs/CONFIG.md explains each. Relative paths are \
         relative to this\n# file's folder. Keys commented out are optional.\n"
    );
    let _ = writeln!(
        out,
        "key = {}                 # this member's ed25519 key (`medmesh init --key ...`)",
        quoted(&d.key.to_string_lossy())
    );
    let _ = writeln!(
        out,
        "store = {}            # crash-safe store: signed records, checkpoint, privacy ledger",
        quoted(&d.store.to_string_lossy())
    );
    let _ = writeln!(
        out,
        "genesis = {}         # the founders' signed roster (version 0)",
        quoted(&d.genesis.to_string_lossy())
    );
    let _ = writeln!(
        out,
        "init_seed = {}                 # shared model initialization: the same on every member",
        d.init_seed
    );
    let _ = writeln!(
        out,
        "linger_ms = {}              # ms (>= 0) to keep serving payloads after the last round",
        d.linger_ms
    );
    let _ = writeln!(
        out,
        "retention_rounds = {}          # payload rounds kept per author: 0 (all) or >= 2",
        d.retention_rounds
    );
    let _ = writeln!(
        out,
        "# results = \"results.json\"     # where to write the final result (JSON)"
    );
    let _ = writeln!(
        out,
        "# admin = \"127.0.0.1:9100\"     # admin endpoint (status, metrics, operator requests); off when absent"
    );
    let _ = writeln!(
        out,
        "# admin_token = \"admin.token\"  # its credential file (default: admin.token beside the key)"
    );
    let _ = writeln!(
        out,
        "admin_remote = {}            # allow a non-loopback admin address (plain HTTP: use a TLS proxy)",
        d.admin_remote
    );
    let _ = writeln!(
        out,
        "# min_peers = 3                  # members connected before round 1 (default: every other training member)"
    );
    let _ = writeln!(
        out,
        "start_timeout_ms = {}      # ms to wait for min_peers before starting anyway",
        d.start_timeout_ms
    );
    let _ = writeln!(
        out,
        "validate_final = {}         # validate every hospital's final model as it appears",
        role == Role::Validator
    );
    let _ = writeln!(
        out,
        "\n# [[validation]]                 # more local datasets to validate on, by name (repeatable)\n\
         # name = \"registry-2025\"         # `medmesh validate --dataset registry-2025`\n\
         # schema = \"data/registry/schema.toml\"\n\
         # site = \"registry\""
    );

    let _ = writeln!(
        out,
        "\n[data]{}",
        if role == Role::Relay {
            "                           # a relay neither trains nor validates: unused"
        } else {
            ""
        }
    );
    let schema = options
        .schema
        .clone()
        .unwrap_or_else(|| d.data.schema.to_string_lossy().into_owned());
    let _ = writeln!(
        out,
        "schema = {}   # the dataset's schema file",
        quoted(&schema)
    );
    match &options.site {
        Some(site) => {
            let _ = writeln!(
                out,
                "site = {}  # this hospital's site in the schema; the roster's site for this member",
                quoted(site)
            );
        }
        None if role == Role::Relay => {
            let _ = writeln!(out, "site = \"\"");
        }
        None => {
            let _ = writeln!(
                out,
                "site = \"\"   # REQUIRED: this hospital's site in the schema (the node lists the valid ones)"
            );
        }
    }
    let _ = writeln!(
        out,
        "# shard = {{ index = 0, count = 2 }}  # train on part of the site's rows: index < count"
    );

    // The dataset's task picks the model (and, for survival, the budget); without a dataset
    // the defaults: logistic regression on 13 features.
    let (task, inputs) = options.dataset.unwrap_or((Task::Binary, 13));
    let model = ModelSpec::for_task(task, i64::try_from(inputs).unwrap_or(i64::MAX));
    let (kind, note) = match model {
        ModelSpec::Cox { .. } => ("cox", " (the dataset's task: survival)"),
        _ => ("logistic", ""),
    };
    let _ = writeln!(
        out,
        "\n[model]                          # the same on every member\nkind = {:<25} # logistic, mlp, cox or torch_script{note}\ninputs = {inputs:<23} # features (>= 1)\n# kind = \"mlp\", hidden = [16]    # hidden layer widths\n# kind = \"torch_script\", path = \"model.pt\", task = \"binary\"  # or \"survival\"",
        quoted(kind)
    );

    let mut t = d.training.clone();
    let mut max_rounds = d.experiment.max_rounds.unwrap_or(15);
    let mut optimizer =
        "{ name = \"adam\" }     # or { name = \"sgd\", momentum = 0.9 } (momentum in [0, 1))";
    let mut outer = "{ optimizer = \"adam\", lr = 0.025, beta1 = 0.9, beta2 = 0.99, tau = 0.001 }";
    if task == Task::Survival {
        // FLamby's Fed-TCGA-BRCA FedAvg budget (see `Budget::for_task`): plain SGD locally,
        // and the survival task's outer optimizer on the merge.
        let budget = Budget::for_task(task);
        t.lr = budget.lr;
        t.batch_size = budget.batch_size;
        t.local_steps = budget.local_steps;
        max_rounds = budget.rounds;
        optimizer = "{ name = \"sgd\", momentum = 0.0 }  # FLamby's FedAvg; or { name = \"adam\" }";
        outer = "{ optimizer = \"adam\", lr = 0.4, beta1 = 0.9, beta2 = 0.99, tau = 0.001 }";
    }
    let _ = writeln!(
        out,
        "\n[training]\ninit = \"auto\"                    # auto (zeros for logistic and cox), libtorch or zeros\n\
         optimizer = {optimizer}\n\
         lr = {:?}                       # learning rate (> 0)\n\
         batch_size = {}                   # >= 1\n\
         local_steps = {}                # optimizer steps per round (>= 1)\n\
         seed = {}                        # batch order (never DP noise, which comes from the OS)\n\
         threads = {}                      # libtorch threads (1-256)\n\
         # dp = {{ noise_multiplier = 1.0, max_grad_norm = 1.0, delta = 1e-5, max_epsilon = 8.0 }}\n\
         #                                  DP-SGD: sigma > 0, C > 0, delta in (0, 1), budget > 0;\n\
         #                                  seeded_noise = true is for the simulator only and refused here",
        t.lr, t.batch_size, t.local_steps, t.seed, t.threads
    );

    let p = &d.personalization;
    let _ = writeln!(
        out,
        "\n[personalization]                # this hospital's own model, fine-tuned from the shared one; kept here\n\
         enabled = {}                   # members that train derive it when their rounds are done\n\
         folds = {}                        # cross-validation parts of the training rows (2-20)\n\
         repeats = {}                      # cross-validations, each with its own folds (1-10)\n\
         # max_steps = 1500                 # most fine-tuning steps tried (default: local_steps x max_rounds)\n\
         # every = 100                      # step counts tried are multiples of this (default: local_steps)",
        p.enabled, p.folds, p.repeats
    );

    let e = &d.experiment;
    let _ = writeln!(
        out,
        "\n[experiment]                     # the same on every member\n\
         experiment = {}      # 1-64 bytes\n\
         # model = \"...\"                  # filled in by the node from [model]\n\
         rule = {{ rule = \"mean\" }}          # mean, metropolis_hastings, median,\n\
         #                                  {{ rule = \"trimmed_mean\", trim = 1 }} (> 2 x trim inputs per merge),\n\
         #                                  {{ rule = \"clipped_gossip\", tau = {{ kind = \"adaptive\", byzantine_fraction = 0.2 }} }}\n\
         #                                  or tau = {{ kind = \"fixed\", radius = 1.0 }}\n\
         fanout = {}                       # versions pulled per round (>= 1; two-level: of the own group)\n\
         # neighbours = [\"MEMBER_ID\", ...]  # fixed neighbours instead of sampling\n\
         round_timeout_ms = {}         # ms after the own announcement a round closes at the latest (> 0)\n\
         fetch_timeout_ms = {}         # ms before an unanswered pull is tried elsewhere (> 0)\n\
         max_rounds = {}                  # rounds (>= 1); the final version is numbered max_rounds + 1\n\
         seed = {}                         # whom to pull from\n\
         # certification = {{ metric = \"auc\", min = 0.80, min_samples = 100, validators = 2, countries = 2 }}\n\
         # outliers = {{ factor = 6.0, rounds = 3 }}      # flag members far off: factor > 1, rounds >= 1\n\
         # two_level = {{ across = \"every\", rounds = 5 }}  # or {{ across = \"fanout\", groups = 1 }}: the roster's groups\n\
         outer = {outer}\n\
         #                                  outer optimizer on the merge (default: decentralized FedAdam);\n\
         #                                  \"none\" (plain averaging), nesterov {{ lr, momentum }},\n\
         #                                  adagrad {{ lr, tau }}, or yogi like adam",
        quoted(&e.experiment),
        e.fanout,
        e.round_timeout.as_millis(),
        e.fetch_timeout.as_millis(),
        max_rounds,
        e.seed
    );

    let n = &d.network;
    let listen: Vec<String> = n.listen.iter().map(|a| quoted(&a.to_string())).collect();
    let bootstrap: Vec<String> = options
        .bootstrap
        .iter()
        .map(|a| quoted(&a.to_string()))
        .collect();
    let _ = writeln!(
        out,
        "\n[network]\n\
         listen = [{}]   # a fixed port{}\n\
         bootstrap = [{}]   # addresses ending in /p2p/PEER_ID: the relay's, for a member behind NAT\n\
         mdns = {}                     # announce and find members on the LAN (a demo)\n\
         relay_server = {}{}\n\
         relay_max_circuit_bytes = {}      # as a relay: bytes per relayed connection (0: no limit)\n\
         relay_max_circuit_seconds = {} # as a relay: seconds per relayed connection (>= 1)\n\
         quic = {}                     # QUIC (needs the `quic` build feature)\n\
         idle_connection_timeout_ms = {}  # ms before an unused connection closes (> 0)\n\
         max_connections_per_peer = {}      # >= 1\n\
         max_connections = {}             # >= 1\n\
         max_gossip_bytes = {}         # 1024-262144\n\
         max_payload_bytes = {}     # 1-536870912\n\
         request_timeout_ms = {}          # ms before a payload request fails (> 0)\n\
         payload_request_burst = {}          # requests one member may make at once (>= 1)\n\
         payload_requests_per_second = {}    # then this many a second (>= 1)",
        listen.join(", "),
        if role == Role::Relay {
            ": open it inbound to the members' sites"
        } else {
            "; nothing to open inbound behind NAT"
        },
        bootstrap.join(", "),
        n.mdns,
        role == Role::Relay,
        if role == Role::Relay {
            "              # a roster role `relay` relays in any case"
        } else {
            "             # relay for members behind NAT (a public address)"
        },
        n.relay_max_circuit_bytes,
        n.relay_max_circuit_seconds,
        n.quic,
        n.idle_connection_timeout.as_millis(),
        n.max_connections_per_peer,
        n.max_connections,
        n.max_gossip_bytes,
        n.max_payload_bytes,
        n.request_timeout.as_millis(),
        n.payload_request_burst,
        n.payload_requests_per_second
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_gets_a_config_the_node_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("medmesh.toml");
        for role in [Role::Hospital, Role::Validator, Role::Relay] {
            let options = Options {
                site: (role != Role::Relay).then(|| "va".to_owned()),
                schema: None,
                bootstrap: vec![
                    "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                        .parse()
                        .expect("address"),
                ],
                dataset: None,
            };
            std::fs::write(&path, render(role, &options)).expect("write");
            let config = NodeConfig::load(&path).expect("the written config loads");
            let mut expected = NodeConfig::default();
            expected.resolve(dir.path());
            assert_eq!(config.validate_final, role == Role::Validator);
            assert_eq!(config.network.relay_server, role == Role::Relay);
            assert_eq!(config.network.bootstrap, options.bootstrap);
            assert_eq!(config.data.site, options.site.clone().unwrap_or_default());
            // Everything else is the defaults, written out.
            assert_eq!(config.experiment, expected.experiment);
            assert_eq!(config.training, expected.training);
            assert_eq!(config.model, expected.model);
            assert_eq!(config.network.listen, expected.network.listen);
            assert_eq!(config.key, expected.key);
            assert_eq!(config.linger_ms, expected.linger_ms);
        }
    }

    #[test]
    fn a_survival_dataset_gets_the_cox_model_and_its_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("medmesh.toml");
        let options = Options {
            site: Some("northeast".into()),
            dataset: Some((Task::Survival, 39)),
            ..Options::default()
        };
        std::fs::write(&path, render(Role::Hospital, &options)).expect("write");
        let config = NodeConfig::load(&path).expect("the written config loads");
        assert_eq!(config.model, ModelSpec::Cox { inputs: 39 });
        let budget = Budget::for_task(Task::Survival);
        assert_eq!(
            (
                config.training.optimizer,
                config.training.lr,
                config.training.batch_size,
                config.training.local_steps,
                config.experiment.max_rounds
            ),
            (
                medmesh_learning::learner::Optimizer::Sgd { momentum: 0.0 },
                0.1,
                8,
                100,
                Some(5)
            )
        );
        assert_eq!(budget.rounds, 5);
        assert_eq!(
            config.experiment.outer, budget.outer,
            "the task's outer optimizer"
        );
        // A binary dataset keeps the defaults but for its feature count.
        let options = Options {
            dataset: Some((Task::Binary, 20)),
            ..options
        };
        std::fs::write(&path, render(Role::Hospital, &options)).expect("write");
        let config = NodeConfig::load(&path).expect("the written config loads");
        assert_eq!(config.model, ModelSpec::Logistic { inputs: 20 });
        assert_eq!(config.training, NodeConfig::default().training);
    }

    #[test]
    fn a_hospital_without_a_site_is_told_it_is_required() {
        let text = render(Role::Hospital, &Options::default());
        assert!(text.contains("site = \"\"   # REQUIRED"), "{text}");
    }
}
