//! The `medmesh` command: the peer a hospital runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medmesh_learning::data::Dataset;
use medmesh_learning::frame::Setup;
use medmesh_learning::learner::{Layout, TrainConfig};
use medmesh_node::config::NodeConfig;
use medmesh_node::worker::Worker;
use medmesh_node::{admin, keys, node};
use medmesh_protocol::identity::{Digest, MemberId};
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use medmesh_record::{bundle, export, lineage, store};

/// medmesh: train medical AI models across hospitals with no central server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Who to block or unblock, and on which node.
#[derive(Debug, clap::Args)]
struct BlockArgs {
    /// Members by roster name, site or member id.
    #[arg(required = true)]
    members: Vec<String>,
    /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
    /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
    #[arg(long, env = "MEDMESH_ADMIN")]
    admin: Option<SocketAddr>,
    /// Take the admin address from this node config.
    #[arg(long, env = "MEDMESH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run this hospital's peer until its rounds are done (or SIGINT/SIGTERM).
    Run {
        /// The node's TOML config.
        #[arg(long, env = "MEDMESH_CONFIG", default_value = "medmesh.toml")]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Ask a running node how it is doing (its local admin endpoint: `admin` in its config).
    Status {
        /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
        /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
        #[arg(long, env = "MEDMESH_ADMIN")]
        admin: Option<SocketAddr>,
        /// Take the admin address from this node config.
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
        /// Print the raw JSON of `GET /status`.
        #[arg(long)]
        json: bool,
    },
    /// Print a running node's Prometheus metrics (`GET /metrics` of its admin endpoint), for a
    /// look without a Prometheus server.
    Metrics {
        /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
        /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
        #[arg(long, env = "MEDMESH_ADMIN")]
        admin: Option<SocketAddr>,
        /// Take the admin address from this node config.
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a login link to the node's read-only dashboard (at its admin address): round
    /// progress, the roster and connections, consensus, rejections, certification, lineage.
    /// The link works once, for two minutes.
    Dashboard {
        /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
        /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
        #[arg(long, env = "MEDMESH_ADMIN")]
        admin: Option<SocketAddr>,
        /// Take the admin address from this node config.
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Block members on a running node: their connections are closed and refused until
    /// `medmesh unblock`, whatever the roster says (quarantine a member while the vote to remove
    /// it gathers signatures, or cut links in a drill). Prints every member blocked afterwards.
    Block(BlockArgs),
    /// Lift `medmesh block`: the node allows the members again and dials them.
    Unblock(BlockArgs),
    /// Write a stored model version as a self-contained bundle: `model.safetensors` plus its
    /// signed metadata (`version.json`, `version.bin`), its model description (`model.json`),
    /// its signed lineage, reports and roster chain, and `MANIFEST.json` (check it with
    /// `medmesh verify`). Run it while the node is stopped (the store is locked).
    Export {
        /// The node's store (default: `store` of `--config`).
        #[arg(long)]
        store: Option<PathBuf>,
        /// A node config: its store, its key (whose versions `latest` means) and its model spec
        /// (which names and shapes the tensors; without it, one flat tensor `params`).
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
        /// A version's content id, or `latest`: this node's newest (the highest round of anyone
        /// without `--config`).
        #[arg(long, default_value = "latest")]
        model: store::Selection,
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Export this hospital's personalized model (derived locally from its final shared
        /// version when its rounds were done; needs `--config`): the shared version's bundle,
        /// plus `personalized.safetensors` and `personalized.json` naming the shared version it
        /// came from. `--model` is then that version.
        #[arg(long, conflicts_with = "model")]
        personalized: bool,
    },
    /// Validate a model version on a running node's local test split (its `[data]`): the node
    /// pulls the version over the mesh if it does not hold it, evaluates it (AUC, accuracy,
    /// balanced accuracy for a classifier, Harrell's C-index for a survival model, each with a
    /// bootstrap 95 % interval) and publishes the signed report.
    Validate {
        /// A version's content id, or `latest` (the highest round the node holds).
        #[arg(long, default_value = "latest")]
        model: String,
        /// Validate on this `[[validation]]` dataset of the node's config (by name) instead of
        /// its own `[data]`.
        #[arg(long)]
        dataset: Option<String>,
        /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
        /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
        #[arg(long, env = "MEDMESH_ADMIN")]
        admin: Option<SocketAddr>,
        /// Take the admin address from this node config.
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show where a stored model version came from: the versions it was averaged from back to
    /// initialization, who trained each (named from the roster chain) and the validation
    /// reports on them. Run it while the node is stopped (the store is locked).
    Lineage {
        /// A version's content id, or `latest`: this node's newest with `--config` (the highest
        /// round of anyone without).
        model: store::Selection,
        /// The node's store (default: `store` of `--config`).
        #[arg(long)]
        store: Option<PathBuf>,
        /// A node config: its store, and its key (whose versions `latest` means).
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
        /// `tree` (indented text), `dot` (Graphviz) or `json`.
        #[arg(long, default_value = "tree")]
        format: lineage::Format,
        /// Follow at most this many generations back (all of them when not given).
        #[arg(long)]
        depth: Option<usize>,
    },
    /// Check an exported bundle offline, on any machine: the manifest's digests, the roster
    /// chain from genesis, every signature, that authors were allowed to train and validators to
    /// validate, the parent links, and the weights against the signed payload digest. Exits
    /// non-zero naming the file and the item that fail.
    Verify {
        /// The bundle folder (what `medmesh export --out` wrote).
        bundle: PathBuf,
        /// Digest of the mesh's genesis roster, from a trusted source: the bundle must belong to
        /// that mesh (without it, only to the roster chain it carries).
        #[arg(long)]
        genesis: Option<Digest>,
    },
    /// Create, sign and inspect signed rosters (who is in the mesh).
    #[command(subcommand)]
    Roster(RosterCommand),
    /// Write a node config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create this hospital's member key (ed25519, PKCS#8 PEM, owner-only) and print its id.
    Init {
        /// Where to write the key; an existing key is never overwritten.
        #[arg(long, env = "MEDMESH_KEY", default_value = "key.pem")]
        key: PathBuf,
    },
    /// Print the member id of a key file (the roster's ID) and its libp2p peer id (what an
    /// address ends with: `/ip4/…/tcp/4001/p2p/PEER`).
    Id {
        /// The key file.
        #[arg(long, env = "MEDMESH_KEY", default_value = "key.pem")]
        key: PathBuf,
        /// Print the peer id alone (for scripts).
        #[arg(long)]
        peer: bool,
    },
    /// Reproduce the non-federated baselines (pooled, and each center alone) on a dataset.
    ///
    /// Runs `medmesh-train baseline` (the training worker program, which links libtorch) with
    /// the same arguments; `medmesh baseline --help` lists them.
    #[command(disable_help_flag = true)]
    Baseline {
        /// Arguments of `medmesh-train baseline`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Node configs.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write a complete, commented config for a role: every key with its unit, default and
    /// range (docs/CONFIG.md). Never overwrites a file.
    Init {
        /// What the node is.
        #[arg(long, value_enum)]
        role: medmesh_node::template::Role,
        /// This hospital's site in the dataset schema (`[data] site`); required at start for a
        /// hospital or validator.
        #[arg(long)]
        site: Option<String>,
        /// The dataset schema (`[data] schema`).
        #[arg(long)]
        schema: Option<String>,
        /// An address to dial at start, ending in `/p2p/PEER_ID` (the relay's, for a member
        /// behind NAT); repeatable.
        #[arg(long)]
        bootstrap: Vec<libp2p::Multiaddr>,
        /// The file to write.
        #[arg(long, default_value = "medmesh.toml")]
        out: PathBuf,
    },
}

/// Roster files are JSON; every member signs the same file in turn until the threshold is met.
#[derive(Debug, Subcommand)]
enum RosterCommand {
    /// Start a genesis roster from a list of members (`--member ID,NAME,SITE,COUNTRY,ROLE[,ADDRESS][,group=GROUP]`).
    Genesis {
        /// Name of the mesh.
        #[arg(long)]
        mesh: String,
        /// Signatures of current members needed to change the roster later.
        #[arg(long)]
        threshold: u32,
        /// A member: `ID,NAME,SITE,COUNTRY,ROLE[,ADDRESS][,group=GROUP]`; ROLE is hospital,
        /// validator, observer or relay (a member at a public address, its ADDRESS, that members
        /// behind NAT connect through); GROUP (e.g. its medical centre) is whom it averages with
        /// first under two-level averaging.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Output file.
        #[arg(long, default_value = "roster.json")]
        out: PathBuf,
    },
    /// Propose the next version: add or remove members (signed later by a threshold of members).
    Propose {
        /// The current roster.
        #[arg(long)]
        current: PathBuf,
        /// A member to admit: `ID,NAME,SITE,COUNTRY,ROLE[,ADDRESS][,group=GROUP]`.
        #[arg(long = "add")]
        add: Vec<String>,
        /// A member to remove: its id, a unique prefix of it (the short id the tools print), or
        /// its name.
        #[arg(long = "remove")]
        remove: Vec<String>,
        /// Move a member to another group: `MEMBER=GROUP` (`MEMBER=` for none); MEMBER is its
        /// id, a unique prefix of it, or its name.
        #[arg(long = "group")]
        regroup: Vec<String>,
        /// New threshold (default: unchanged, capped at the new member count).
        #[arg(long)]
        threshold: Option<u32>,
        /// Output file.
        #[arg(long, default_value = "roster-proposal.json")]
        out: PathBuf,
    },
    /// Hand a signed roster update to a running node (its admin endpoint), which checks it
    /// against its chain, stores it and spreads it to every member over gossip.
    Publish {
        /// The signed roster file.
        file: PathBuf,
        /// The node's admin address, e.g. 127.0.0.1:9100 (default: `admin` of `--config`); its token is
        /// the config's `admin_token`, or the file `MEDMESH_ADMIN_TOKEN` names.
        #[arg(long, env = "MEDMESH_ADMIN")]
        admin: Option<SocketAddr>,
        /// Take the admin address from this node config.
        #[arg(long, env = "MEDMESH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Add this member's signature to a roster file (in place).
    Sign {
        /// The roster file.
        file: PathBuf,
        /// The member key.
        #[arg(long, env = "MEDMESH_KEY", default_value = "key.pem")]
        key: PathBuf,
    },
    /// Print a roster file and who signed it.
    Show {
        /// The roster file.
        file: PathBuf,
    },
}

fn parse_member(text: &str) -> anyhow::Result<Member> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    anyhow::ensure!(
        parts.len() >= 5,
        "member {text:?}: expected {MEMBER_SYNTAX}"
    );
    let role = match parts[4] {
        "hospital" => Role::Hospital,
        "validator" => Role::Validator,
        "observer" => Role::Observer,
        "relay" => Role::Relay,
        other => {
            anyhow::bail!(
                "member {text:?}: unknown role {other:?} (hospital, validator, observer, relay)"
            )
        }
    };
    let mut group = String::new();
    let mut addresses = Vec::new();
    for extra in &parts[5..] {
        match extra.split_once('=') {
            Some(("group", g)) => group = g.to_owned(),
            Some((key, _)) => {
                anyhow::bail!("member {text:?}: unknown field {key:?} (expected {MEMBER_SYNTAX})")
            }
            None if addresses.is_empty() => addresses.push((*extra).to_owned()),
            None => {
                anyhow::bail!("member {text:?}: one ADDRESS at most (expected {MEMBER_SYNTAX})")
            }
        }
    }
    Ok(Member {
        id: parts[0]
            .parse()
            .with_context(|| format!("member {text:?}: bad id"))?,
        name: parts[1].to_owned(),
        site: parts[2].to_owned(),
        country: parts[3].to_owned(),
        group,
        role,
        addresses,
    })
}

/// How `--member` and `--add` spell a member.
const MEMBER_SYNTAX: &str = "ID,NAME,SITE,COUNTRY,ROLE[,ADDRESS][,group=GROUP]";

/// The member of `roster` that `text` names (see [`node::find_member`]).
fn find_member(roster: &Roster, text: &str) -> anyhow::Result<MemberId> {
    node::find_member(roster, text)
        .map(|m| m.id)
        .map_err(anyhow::Error::msg)
}

fn roster_command(command: RosterCommand) -> anyhow::Result<()> {
    match command {
        RosterCommand::Genesis {
            mesh,
            threshold,
            members,
            out,
        } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let roster = Roster::genesis(mesh, threshold, members)?;
            node::write_roster(&out, &SignedRoster::new(roster))?;
            eprintln!(
                "wrote {}: every founder now signs it with `medmesh roster sign`",
                out.display()
            );
        }
        RosterCommand::Propose {
            current,
            add,
            remove,
            regroup,
            threshold,
            out,
        } => {
            let current = node::read_roster(&current)?;
            let roster = current.roster();
            let remove: Vec<MemberId> = remove
                .iter()
                .map(|r| find_member(roster, r).with_context(|| format!("--remove {r:?}")))
                .collect::<anyhow::Result<_>>()?;
            let mut members: Vec<Member> = roster
                .members
                .iter()
                .filter(|m| !remove.contains(&m.id))
                .cloned()
                .collect();
            for a in &add {
                members.push(parse_member(a)?);
            }
            for text in &regroup {
                let (who, group) = text
                    .split_once('=')
                    .with_context(|| format!("--group {text:?}: expected MEMBER=GROUP"))?;
                let id = find_member(roster, who).with_context(|| format!("--group {text:?}"))?;
                let member = members
                    .iter_mut()
                    .find(|m| m.id == id)
                    .with_context(|| format!("--group {text:?}: {who} is being removed"))?;
                member.group = group.trim().to_owned();
            }
            let threshold = threshold
                .unwrap_or(roster.threshold)
                .min(u32::try_from(members.len())?);
            let next = roster.next(members, threshold)?;
            node::write_roster(&out, &SignedRoster::new(next))?;
            eprintln!(
                "wrote {}: {} members of version {} must sign it",
                out.display(),
                roster.threshold,
                roster.version
            );
        }
        RosterCommand::Sign { file, key } => {
            let key = keys::load(&key)?;
            let mut signed = node::read_roster(&file)?;
            anyhow::ensure!(
                signed.roster().contains(&key.id()) || signed.roster().version > 0,
                "{} is not on this genesis roster",
                key.id()
            );
            signed.sign(&key);
            node::write_roster(&file, &signed)?;
            eprintln!("signed {} as {}", file.display(), key.id().short());
        }
        RosterCommand::Publish {
            file,
            admin,
            config,
        } => {
            let update = node::read_roster(&file)?;
            let endpoint = admin_endpoint(admin, config.as_deref())?;
            let addr = endpoint.addr;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let version = runtime
                .block_on(admin::publish_roster(&endpoint, &update))
                .with_context(|| format!("the node refused {}", file.display()))?;
            println!(
                "the node at {addr} now follows roster version {version} of mesh {:?}",
                update.roster().mesh
            );
        }
        RosterCommand::Show { file } => {
            let signed = node::read_roster(&file)?;
            let r = signed.roster();
            println!(
                "mesh {:?} version {} threshold {}",
                r.mesh, r.version, r.threshold
            );
            for m in &r.members {
                let group = if m.group.is_empty() {
                    String::new()
                } else {
                    format!(", group {}", m.group)
                };
                println!(
                    "  {} {:<9} {} ({}, {}{group}) {}",
                    m.id,
                    format!("{:?}", m.role).to_lowercase(),
                    m.name,
                    m.site,
                    m.country,
                    m.addresses.join(" ")
                );
            }
            print!("{}", signature_summary(&signed));
        }
    }
    Ok(())
}

/// What `roster show` says of a roster's digest and signatures: who signed validly, who has not
/// yet, and what is still needed.
fn signature_summary(signed: &SignedRoster) -> String {
    let r = signed.roster();
    let name = |id: &MemberId| {
        r.member(id)
            .map_or_else(|| id.short(), |m| format!("{} ({})", m.name, id.short()))
    };
    let valid = signed.valid_signers(r);
    let missing: Vec<String> = r
        .members
        .iter()
        .filter(|m| !valid.contains(&m.id))
        .map(|m| name(&m.id))
        .collect();
    let claimed = signed.signers().count();
    let mut out = String::new();
    if r.version == 0 {
        out.push_str(&format!(
            "genesis digest {} (pin it with `medmesh verify --genesis`)\n",
            r.digest()
        ));
    } else {
        out.push_str(&format!(
            "digest {}; previous version's digest {}\n",
            r.digest(),
            r.previous.map_or_else(String::new, |d| d.to_string())
        ));
    }
    out.push_str(&format!(
        "signed by {} member(s){}{}\n",
        valid.len(),
        if valid.is_empty() { "" } else { ": " },
        valid.iter().map(name).collect::<Vec<_>>().join(", ")
    ));
    if claimed > valid.len() {
        out.push_str(&format!(
            "{} signature(s) do not verify or are not by members listed here\n",
            claimed - valid.len()
        ));
    }
    if r.version == 0 {
        if missing.is_empty() {
            out.push_str("complete: every founder signed\n");
        } else {
            out.push_str(&format!(
                "missing (a genesis needs every founder): {}\n",
                missing.join(", ")
            ));
        }
    } else {
        out.push_str(&format!(
            "needs the signatures of a threshold of version {}'s members (its `threshold`); not \
             signed yet by: {}\n",
            r.version - 1,
            if missing.is_empty() {
                "-".to_owned()
            } else {
                missing.join(", ")
            }
        ));
    }
    out
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    // Colour only on a terminal: a log file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The admin address given, or the one in the node config given.
/// The environment variable naming an admin token file, for commands given `--admin` without
/// `--config`.
const TOKEN_ENV: &str = "MEDMESH_ADMIN_TOKEN";

/// The admin endpoint a command talks to: `--admin` or the config's `admin`, with the token of
/// the config's `admin_token` (beside its key by default), or of the file `MEDMESH_ADMIN_TOKEN`
/// names.
fn admin_endpoint(
    admin: Option<SocketAddr>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<admin::Endpoint> {
    let config = config.map(NodeConfig::load).transpose()?;
    let addr = match (admin, &config) {
        (Some(addr), _) => addr,
        (None, Some(config)) => config
            .admin
            .context("the config has no `admin` address; set one or pass --admin")?,
        (None, None) => anyhow::bail!("give the node's admin address (--admin) or its --config"),
    };
    let token = match (std::env::var_os(TOKEN_ENV), &config) {
        (Some(path), _) => PathBuf::from(path),
        (None, Some(config)) => config.admin_token_path(),
        (None, None) => anyhow::bail!(
            "the admin endpoint needs the node's token: give its --config (the token is \
             beside its key) or set {TOKEN_ENV} to the token file"
        ),
    };
    admin::Endpoint::new(addr, &token)
        .with_context(|| format!("cannot read the admin token {}", token.display()))
}

fn status_command(
    admin: Option<SocketAddr>,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let endpoint = admin_endpoint(admin, config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, raw) = runtime.block_on(admin::fetch_status(&endpoint))?;
    if json {
        println!("{}", String::from_utf8_lossy(&raw));
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}

fn block_command(args: BlockArgs, block: bool) -> anyhow::Result<()> {
    let BlockArgs {
        members,
        admin,
        config,
    } = args;
    let endpoint = admin_endpoint(admin, config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let blocked = runtime.block_on(admin::block(&endpoint, &members, block))?;
    if blocked.is_empty() {
        println!("no member is blocked");
    } else {
        println!("blocked: {}", blocked.join(", "));
    }
    Ok(())
}

/// The layout of the config's model: by arithmetic for a built-in model; a TorchScript
/// module's tensors are learned from a training worker that loads it on the config's data.
fn model_layout(config: &NodeConfig) -> anyhow::Result<Layout> {
    if let Some(layout) = config.model.layout() {
        return Ok(layout);
    }
    let dataset = Dataset::load(&config.data.schema)?;
    let site = dataset.site(&config.data.site).with_context(|| {
        format!(
            "site {:?} is not in {}",
            config.data.site,
            config.data.schema.display()
        )
    })?;
    let built = Worker::start()?.build(&Setup {
        spec: config.model.clone(),
        training: TrainConfig::default(),
        init_seed: 0,
        data: site.train.clone(),
    })?;
    Ok(built.layout)
}

fn export_command(
    store: Option<PathBuf>,
    config: Option<PathBuf>,
    model: store::Selection,
    out: PathBuf,
) -> anyhow::Result<()> {
    let config = config.map(|path| NodeConfig::load(&path)).transpose()?;
    let store = store
        .or_else(|| config.as_ref().map(|c| c.store.clone()))
        .context("give the store (--store) or the node's --config")?;
    let (author, layout) = match &config {
        Some(config) => {
            let author = match model {
                store::Selection::Latest => Some(keys::load(&config.key)?.id()),
                store::Selection::Id(_) => None,
            };
            (author, Some(model_layout(config)?))
        }
        None => (None, None),
    };
    let spec = config.as_ref().map(|c| &c.model);
    let exported = export::export(&store, model, author, spec, layout.as_deref(), &out)?;
    print!("{}", exported.to_text());
    Ok(())
}

/// `medmesh export --personalized`: the shared version's bundle and, beside it, the
/// personalized model with a manifest that names the shared version it was fine-tuned from.
fn personalized_export_command(
    store: Option<PathBuf>,
    config: Option<PathBuf>,
    out: PathBuf,
) -> anyhow::Result<()> {
    let path = config.context("--personalized needs the node's --config")?;
    let config = NodeConfig::load(&path)?;
    let personal = node::personal::read(&config)?;
    let base = personal.base.with_context(|| {
        format!(
            "the personalized model of {} names no shared version (the node finished without a              final version)",
            config.data.site
        )
    })?;
    let store = store.unwrap_or_else(|| config.store.clone());
    let layout = model_layout(&config)?;
    let exported = export::export(
        &store,
        store::Selection::Id(base),
        None,
        Some(&config.model),
        Some(&layout),
        &out,
    )?;
    print!("{}", exported.to_text());
    let metadata = std::collections::HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        ("medmesh.personalized_from".to_owned(), base.to_string()),
        ("medmesh.site".to_owned(), personal.site.clone()),
        ("medmesh.steps".to_owned(), personal.steps.to_string()),
    ]);
    export::write_derived(
        &out,
        "personalized.safetensors",
        &personal.params,
        Some(&layout),
        metadata,
    )?;
    let manifest = serde_json::json!({
        "personalized_from": base.to_string(),
        "member": personal.member.to_string(),
        "site": personal.site,
        "fine_tuning_steps": personal.steps,
        "folds": personal.folds,
        "criterion": personal.criterion,
        "held_out_scores": personal.scores,
        "local_test": personal.test,
        "note": "derived locally from the shared version in this bundle; not signed, never                  announced: model.safetensors is the mesh's signed artifact",
    });
    let json = out.join("personalized.json");
    std::fs::write(&json, serde_json::to_string_pretty(&manifest)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!(
        "wrote {} and {} (fine-tuned {} steps from {})",
        out.join("personalized.safetensors").display(),
        json.display(),
        personal.steps,
        base.short()
    );
    Ok(())
}

fn lineage_command(
    model: store::Selection,
    store: Option<PathBuf>,
    config: Option<PathBuf>,
    format: lineage::Format,
    depth: Option<usize>,
) -> anyhow::Result<()> {
    let config = config.map(|path| NodeConfig::load(&path)).transpose()?;
    let store = store
        .or_else(|| config.as_ref().map(|c| c.store.clone()))
        .context("give the store (--store) or the node's --config")?;
    let author = match (&config, model) {
        (Some(config), store::Selection::Latest) => Some(keys::load(&config.key)?.id()),
        _ => None,
    };
    let found = lineage::read(&store, model, author, depth)?;
    print!("{}", found.render(format));
    if format != lineage::Format::Tree {
        // The tree ends with it; other formats keep stdout machine-readable.
        eprintln!("{}", found.summary());
    }
    Ok(())
}

fn verify_command(dir: PathBuf, genesis: Option<Digest>) -> anyhow::Result<()> {
    let options = bundle::Options { genesis };
    let checked = bundle::verify(&dir, &options, &mut |line| println!("{line}"))
        .with_context(|| format!("bundle {} does NOT verify", dir.display()))?;
    println!("{}", checked.lineage.summary());
    println!(
        "bundle {} verifies: model version {} of mesh {:?} (genesis {}{}, roster version {})",
        dir.display(),
        checked.root,
        checked.mesh,
        checked.genesis,
        if genesis.is_some() { ", pinned" } else { "" },
        checked.roster_version
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Status {
            admin,
            config,
            json,
        } => status_command(admin, config, json)?,
        Command::Metrics { admin, config } => {
            let endpoint = admin_endpoint(admin, config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let page = runtime.block_on(admin::get(&endpoint, "/metrics"))?;
            print!("{}", String::from_utf8_lossy(&page));
        }
        Command::Dashboard { admin, config } => {
            let endpoint = admin_endpoint(admin, config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = runtime.block_on(admin::post(
                &endpoint,
                "/session",
                bytes::Bytes::from_static(b"{}"),
            ))?;
            let session: serde_json::Value = serde_json::from_slice(&answer)
                .context("the node's answer to POST /session is not JSON")?;
            let code = session["code"]
                .as_str()
                .context("the node's answer to POST /session has no code")?;
            println!("http://{}/dashboard/login?code={code}", endpoint.addr);
            eprintln!(
                "open this link in a browser on this machine within two minutes; it works once \
                 and logs in for twelve hours (the dashboard is read-only)"
            );
        }
        Command::Block(args) => block_command(args, true)?,
        Command::Unblock(args) => block_command(args, false)?,
        Command::Export {
            store,
            config,
            out,
            personalized: true,
            ..
        } => personalized_export_command(store, config, out)?,
        Command::Export {
            store,
            config,
            model,
            out,
            ..
        } => export_command(store, config, model, out)?,
        Command::Lineage {
            model,
            store,
            config,
            format,
            depth,
        } => lineage_command(model, store, config, format, depth)?,
        Command::Verify { bundle, genesis } => verify_command(bundle, genesis)?,
        Command::Run { config, json_logs } => {
            init_logs(json_logs);
            let config = NodeConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            if let Some(outcome) = runtime.block_on(node::run(config, shutdown_signal()))? {
                println!("{}", serde_json::to_string(&outcome)?);
            }
        }
        Command::Validate {
            model,
            dataset,
            admin,
            config,
        } => {
            let endpoint = admin_endpoint(admin, config.as_deref())?;
            let request = admin::ValidateRequest { model, dataset };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            println!(
                "{}",
                runtime.block_on(admin::validate(&endpoint, &request))?
            );
        }
        Command::Roster(command) => roster_command(command)?,
        Command::Config(ConfigCommand::Init {
            role,
            site,
            schema,
            bootstrap,
            out,
        }) => {
            // The schema's task picks the model (and a survival task its budget). The node will
            // read the schema relative to the config's folder; here it may also be relative to
            // the working directory. One that does not load leaves the defaults.
            let dataset = schema.as_ref().and_then(|schema| {
                let beside = out
                    .parent()
                    .unwrap_or(std::path::Path::new(""))
                    .join(schema);
                let loaded =
                    Dataset::load(&beside).or_else(|_| Dataset::load(std::path::Path::new(schema)));
                match loaded {
                    Ok(set) => Some((set.task, set.features.len())),
                    Err(e) => {
                        eprintln!(
                            "note: {schema} does not load here ({e}); [model] is the default \
                             logistic regression on 13 features: check it"
                        );
                        None
                    }
                }
            });
            let text = medmesh_node::template::render(
                role,
                &medmesh_node::template::Options {
                    site,
                    schema,
                    bootstrap,
                    dataset,
                },
            );
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing file is never overwritten)",
                        out.display()
                    )
                })?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "wrote {}: check `[data] site`, `genesis` and `[network] bootstrap`, then `medmesh run --config {}`",
                out.display(),
                out.display()
            );
        }
        Command::Init { key } => {
            let pair = keys::generate()?;
            keys::write(&key, &pair).context("cannot create the member key")?;
            let token = keys::token_path(&key);
            keys::AdminToken::load_or_create(&token)?;
            println!("{}", pair.id());
            eprintln!(
                "wrote {} (keep it secret; back it up offline) and the admin token {}; its peer \
                 id is {} (`medmesh id`)",
                key.display(),
                token.display(),
                medmesh_node::network::peer_id(&pair.id())?
            );
        }
        Command::Id { key, peer } => {
            let pair = keys::load(&key)?;
            let peer_id = medmesh_node::network::peer_id(&pair.id())?;
            if peer {
                println!("{peer_id}");
            } else {
                println!("member id {}", pair.id());
                println!("peer id   {peer_id}");
            }
        }
        Command::Baseline { args } => {
            let program = medmesh_node::worker::program();
            let status = std::process::Command::new(&program)
                .arg("baseline")
                .args(&args)
                .status()
                .with_context(|| {
                    format!(
                        "cannot start {} (built with medmesh; or set {})",
                        program.display(),
                        medmesh_node::worker::PROGRAM_ENV
                    )
                })?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
        }
    }
    Ok(())
}
