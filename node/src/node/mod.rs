//! The running peer: [`run`] opens the node's key, store and swarm, waits for admission if
//! its key is not on the roster yet (`admission`), resumes its checkpoint and privacy ledger, and hands
//! everything to the event loop (`event_loop`), which translates between the libp2p swarm, the sans-IO
//! [`Peer`], the trainer (a thread driving the `medmesh-train` worker process) and the store's
//! writer ([`crate::storage`]) — and decides nothing itself.
//!
//! The loop owns the node's [`admin::Status`] and [`admin::Metrics`]: it updates them as events
//! pass and publishes a snapshot once per turn; the admin endpoint (if the config enables it)
//! runs as its own task and only reads those snapshots.

mod admission;
mod event_loop;
mod limiter;
mod members;
mod outcome;
pub mod personal;
mod retention;
mod validation;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::PeerId;
use medmesh_learning::data::{Dataset, Site, Table};
use medmesh_learning::privacy::{Accountant, AccountantState};
use medmesh_protocol::identity::{ContentId, MemberId, Verified};
use medmesh_protocol::peer::{Checkpoint, Item, Peer};
use medmesh_protocol::roster::{Chain, SignedRoster};
use medmesh_protocol::update::Version;
use medmesh_record::store::Store;

use self::event_loop::{EventLoop, Local, Parts};
pub use self::members::find as find_member;
pub use self::outcome::{Outcome, Personalized};
use self::validation::Certifier;
use crate::config::NodeConfig;
use crate::storage::Storage;
use crate::trainer::Trainer;
use crate::worker::Setup;
use crate::{admin, keys, network};

/// Reads a signed roster file (JSON).
pub fn read_roster(path: &Path) -> anyhow::Result<SignedRoster> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read roster {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a signed roster", path.display()))
}

/// Writes a signed roster file (JSON), atomically.
pub fn write_roster(path: &Path, roster: &SignedRoster) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(roster)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs this hospital's peer until its rounds are done (and the linger after them) or
/// `shutdown`; the outcome, or `None` when it stopped before its rounds were done (or before it
/// was admitted).
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Outcome>> {
    preflight(&config)?;
    let store = Store::open(&config.store)?;
    run_with_store(config, store, shutdown).await
}

/// The checks that need no store, made before the store file is created: the key reads, and
/// for a new store the genesis roster is a genesis and, if this member trains or validates, its
/// `[data]` loads. A mistake in the config then leaves nothing behind on disk.
fn preflight(config: &NodeConfig) -> anyhow::Result<()> {
    let key = keys::load(&config.key).context("`key` of the config")?;
    if config.store.exists() {
        return Ok(());
    }
    let genesis = read_genesis(config)?;
    if let Some(member) = genesis.current().member(&key.id())
        && (member.role.may_train() || member.role.may_validate())
    {
        check_site(config, genesis.current(), key.id())?;
        load_site(config)?;
    }
    Ok(())
}

/// The config's genesis roster as a chain; a later roster version given as `genesis` gets a
/// hint, since a node joining later still starts from the mesh's genesis.
fn read_genesis(config: &NodeConfig) -> anyhow::Result<Chain> {
    let genesis = read_roster(&config.genesis).context("`genesis` of the config")?;
    let version = genesis.roster().version;
    anyhow::ensure!(
        version == 0,
        "`genesis` = {} holds roster version {version}, not the mesh's genesis (version 0): \
         point `genesis` at the founders' roster; the versions after it reach the node from the \
         members (roster sync) or by `medmesh roster publish`",
        config.genesis.display()
    );
    Chain::from_genesis(genesis).with_context(|| {
        format!(
            "the genesis roster {} is not valid",
            config.genesis.display()
        )
    })
}

/// [`run`] on a store the caller opened (on another storage backend, say): the config's
/// `store` is not opened.
pub async fn run_with_store(
    config: NodeConfig,
    store: Store,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Outcome>> {
    let started = Instant::now();
    let key = keys::load(&config.key)?;
    let mut chain = open_chain(&config, &store)?;
    check_site(&config, chain.current(), key.id())?;
    let (certifier, rounds, resume) = read_record(&config, &store, &chain, key.id())?;
    let privacy = read_privacy(&config, &store)?;
    let mut storage = Storage::spawn(store)?;
    if resume.is_none() {
        // A fresh store: its genesis roster goes in first.
        storage
            .put(vec![Item::Roster(chain.current_signed().clone())])
            .await?;
    }
    let me = key.id();
    let peer_id = network::peer_id(&me)?;
    tracing::info!(member = %me.short(), peer_id = %peer_id, site = %config.data.site, "node started");

    let mut status = admin::Status {
        member: me,
        peer_id: peer_id.to_string(),
        site: config.data.site.clone(),
        mesh: chain.current().mesh.clone(),
        roster_version: chain.current().version,
        round: 0,
        ..admin::Status::default()
    };
    let (reporter, mut commands) = admin::Reporter::new(status.clone(), started);
    let mut swarm = network::build_swarm_counting(
        &key,
        &config.network,
        chain.current(),
        reporter.metrics().payload_bytes_receiving.clone(),
    )?;
    network::listening(&mut swarm, &config.network, Duration::from_secs(5)).await;
    network::dial_bootstrap(&mut swarm, &config.network);
    let admin_server = match config.admin {
        Some(addr) => {
            let token = keys::AdminToken::load_or_create(&config.admin_token_path())?;
            Some(reporter.serve(addr, token).await?)
        }
        None => None,
    };
    tokio::pin!(shutdown);

    let mut subscribed = HashSet::new();
    let mut blocked = HashSet::new();
    let mut redial = network::Redial::default();
    if !chain.current().contains(&me) {
        status.phase = admin::Phase::Admission;
        reporter.publish(&status);
        let admitted = admission::Admission {
            swarm: &mut swarm,
            chain: &mut chain,
            storage: &mut storage,
            config: &config,
            commands: &mut commands,
            subscribed: &mut subscribed,
            blocked: &mut blocked,
            redial: &mut redial,
            me,
        }
        .run(shutdown.as_mut())
        .await?;
        if !admitted {
            if let Some(server) = admin_server {
                server.stop().await;
            }
            return Ok(None);
        }
    }
    status.blocked = members::names_of(chain.current(), &blocked);

    let (dataset, site) = load_site(&config)?;
    let trainer = start_trainer(&config, &chain, me, &site, privacy)?;
    let peer = resume_peer(&config, key, chain, trainer.as_ref(), resume)?;
    if peer.is_finished() {
        // Restarted after its last round: there is nothing to train or announce, and the
        // results file (if any) holds the real outcome, which an outcome of this run (no rounds,
        // no final version) would overwrite.
        tracing::info!(
            round = peer.round(),
            "this node finished its rounds before it stopped; nothing left to run (its results \
             file is kept)"
        );
        let mut storage = storage;
        storage.close();
        if let Some(server) = admin_server {
            server.stop().await;
        }
        return Ok(None);
    }
    status.roster_version = peer.chain().current().version;
    status.round = peer.round();
    status.phase = admin::Phase::Starting;

    let parts = Parts {
        local: Local {
            dataset: dataset.name.clone(),
            train: train_rows(&config, &site),
            test: site.test.clone(),
        },
        config,
        swarm,
        peer,
        storage,
        trainer,
        status,
        reporter,
        commands,
        subscribed,
        blocked,
        redial,
        certifier,
        rounds,
        started,
    };
    let outcome = EventLoop::new(parts).run(shutdown.as_mut()).await;
    if let Some(server) = admin_server {
        server.stop().await;
    }
    outcome
}

/// A member that trains must train on its own site's records: the `[data] site` of its config
/// is the site its roster entry names (ignoring case). A node configured with another
/// hospital's data would count that data twice and sign versions in its own name.
fn check_site(
    config: &NodeConfig,
    roster: &medmesh_protocol::roster::Roster,
    me: medmesh_protocol::identity::MemberId,
) -> anyhow::Result<()> {
    if let Some(member) = roster.member(&me)
        && member.role.may_train()
        && !member.site.eq_ignore_ascii_case(&config.data.site)
    {
        anyhow::bail!(
            "the roster lists this member ({}) at site {:?}, but its config's `[data] site` is \
             {:?}: a hospital trains on its own site's records only; fix `[data] site` (or the \
             roster, by a signed update)",
            member.name,
            member.site,
            config.data.site
        );
    }
    Ok(())
}

/// The roster chain the store holds, or the config's genesis for a new store.
fn open_chain(config: &NodeConfig, store: &Store) -> anyhow::Result<Chain> {
    let history = store.roster_history()?;
    if history.is_empty() {
        read_genesis(config)
    } else {
        Chain::from_history(history).context("the stored roster chain does not verify")
    }
}

/// Where a node resumes from: its stored checkpoint with the parameters of its round, and its
/// newest own version with its parameters (each `None` when the store holds none).
type Resume = (
    Option<(Checkpoint, Vec<f32>)>,
    Option<(Verified<Version>, Vec<f32>)>,
);

/// Everything the node reads from its store before the loop starts (the loop itself never
/// reads the disk): the reports, by model, judged under the policy; the round of every
/// version; and where to resume (`None` for a store with no roster yet, a new node).
fn read_record(
    config: &NodeConfig,
    store: &Store,
    chain: &Chain,
    me: MemberId,
) -> anyhow::Result<(Certifier, HashMap<ContentId, u64>, Option<Resume>)> {
    let mut certifier = Certifier::new(store.reports(None)?);
    if let Some(policy) = &config.experiment.certification {
        certifier.judge_all(chain.current(), policy);
    }
    let versions = store.versions()?;
    let rounds = versions.iter().map(|v| (v.id(), v.round)).collect();
    if store.roster_history()?.is_empty() {
        return Ok((certifier, rounds, None));
    }
    let checkpoint = store.checkpoint()?;
    let own = versions
        .into_iter()
        .filter(|v| v.signer() == me)
        .max_by_key(|v| v.round);
    let own = match own {
        Some(own) => store.payload(&own.id())?.and_then(|bytes| {
            let mut params = Vec::new();
            medmesh_protocol::update::decode_payload(&own.payload, &bytes, &mut params)
                .ok()
                .map(|()| (own, params))
        }),
        None => None,
    };
    Ok((certifier, rounds, Some((checkpoint, own))))
}

/// The config's dataset and this node's site in it.
fn load_site(config: &NodeConfig) -> anyhow::Result<(Dataset, Site)> {
    let dataset =
        Dataset::load(&config.data.schema).map_err(|e| anyhow::anyhow!("`[data] schema`: {e}"))?;
    let names = || {
        dataset
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    anyhow::ensure!(
        !config.data.site.is_empty(),
        "`[data] site` is not set: name this hospital's site in {} (one of: {})",
        config.data.schema.display(),
        names()
    );
    let site = dataset
        .site(&config.data.site)
        .with_context(|| {
            format!(
                "`[data] site` = {:?} is not a site of {} (its sites: {})",
                config.data.site,
                config.data.schema.display(),
                names()
            )
        })?
        .clone();
    Ok((dataset, site))
}

/// The hospital's privacy ledger as the store holds it (`None` if it never trained under DP):
/// training continues from it, so ε after a restart is never below ε before it. A damaged ledger
/// stops the node.
fn read_privacy(config: &NodeConfig, store: &Store) -> anyhow::Result<Option<AccountantState>> {
    let ledger = store
        .privacy()
        .context("cannot read the privacy ledger; refusing to start with epsilon reset to 0")?;
    if let Some(ledger) = &ledger
        && let Some(dp) = &config.training.dp
    {
        let spent = Accountant::restore(ledger)?.spent(dp.delta)?;
        tracing::info!(
            epsilon = spent.epsilon,
            delta = dp.delta,
            max_epsilon = ?dp.max_epsilon,
            "continuing the stored privacy ledger"
        );
    }
    Ok(ledger)
}

/// The trainer of a member whose role trains, on its site's training rows (or its shard),
/// continuing the privacy ledger `privacy`.
/// The training rows of this node: its site's, or its shard's.
fn train_rows(config: &NodeConfig, site: &Site) -> Table {
    match config.data.shard {
        Some(shard) => site.train.every(shard.index, shard.count),
        None => site.train.clone(),
    }
}

fn start_trainer(
    config: &NodeConfig,
    chain: &Chain,
    me: MemberId,
    site: &Site,
    privacy: Option<AccountantState>,
) -> anyhow::Result<Option<Trainer>> {
    let trains = chain
        .current()
        .member(&me)
        .is_some_and(|m| m.role.may_train());
    if !trains {
        tracing::info!("this member does not train (its roster role); validating only");
        return Ok(None);
    }
    let train_rows = train_rows(config, site);
    anyhow::ensure!(
        !train_rows.is_empty(),
        "site {:?} has no training rows{}",
        config.data.site,
        if config.data.shard.is_some() {
            " in this shard"
        } else {
            ""
        }
    );
    Ok(Some(Trainer::spawn(
        &config.data.site,
        &crate::worker::program(),
        Setup {
            spec: config.model.clone(),
            training: config.training.clone(),
            init_seed: config.init_seed,
            data: train_rows,
        },
        privacy,
    )?))
}

/// The peer, resumed where a previous run stopped or started from the shared initialization.
fn resume_peer(
    config: &NodeConfig,
    key: medmesh_protocol::identity::Keypair,
    chain: Chain,
    trainer: Option<&Trainer>,
    resume: Option<Resume>,
) -> anyhow::Result<Peer> {
    let mut experiment = config.experiment.clone();
    experiment.model = config.model.digest()?;
    let Some(t) = trainer else {
        return Ok(Peer::resume(
            experiment,
            key,
            chain,
            Vec::new(),
            0,
            Checkpoint::default(),
        )?);
    };
    let (stored, own) = resume.unwrap_or_default();
    let (mut checkpoint, mut params) = match stored {
        Some((c, p)) if p.len() == t.dim => {
            tracing::info!(round = c.round, "resuming from the stored checkpoint");
            (c, p)
        }
        _ => (Checkpoint::default(), t.init.clone()),
    };
    // Never sign a second, different version for a round this key already announced (that is
    // equivocation, and the others would exclude us): a node killed after announcing a round
    // but before its next checkpoint continues after that round, from what it announced.
    if let Some((own, own_params)) = own
        && own_params.len() == t.dim
        && own.round >= checkpoint.round
    {
        tracing::info!(
            round = own.round,
            "this node already announced that round before it stopped; continuing after it"
        );
        checkpoint = Checkpoint {
            round: own.round + 1,
            parents: vec![own.id()],
        };
        params = own_params;
    }
    Ok(Peer::resume(
        experiment,
        key,
        chain,
        params,
        t.samples as u64,
        checkpoint,
    )?)
}

/// The libp2p peer id of a member, for logs and bootstrap addresses.
pub fn peer_id_of(member: &MemberId) -> anyhow::Result<PeerId> {
    Ok(network::peer_id(member)?)
}
