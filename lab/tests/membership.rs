//! Admission is decided by the members, not by an operator: a fifth `medmesh` process whose key
//! is not on the roster is refused by every member; once a threshold of members sign a roster
//! that admits it and one of them publishes it, the update spreads, the newcomer learns it over
//! roster sync, joins mid-run and catches up to the mesh's round and model.

mod common;

use std::time::Duration;

use common::{cli, data, options, wait_for};
use medmesh_lab::mesh::{self, Children, LocalNode};
use medmesh_node::admin::Phase;
use medmesh_node::config::ValidationData;

#[test]
fn a_hospital_off_the_roster_is_refused_then_admitted_mid_run_and_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // 200 rounds, not FLamby's 15: a round of this small model takes ~50 ms here now that the
    // store is off the event loop, and showing the refusals, refusing the one-signature roster
    // and publishing the full one (status polls and two CLI processes) take a few seconds, so a
    // short run could end before the newcomer had anything to catch up with.
    let options = options(dir, 200);
    // Cleveland's records are split between the founding clinic and a second one that joins.
    let founders = [
        LocalNode::new(dir, "cleveland", data("cleveland", Some((0, 2)))),
        LocalNode::new(dir, "hungarian", data("hungarian", None)),
        LocalNode::new(dir, "switzerland", data("switzerland", None)),
        LocalNode::new(dir, "va", data("va", None)),
    ]
    .map(|n| n.expect("node"));
    let newcomer =
        LocalNode::new(dir, "cleveland-annex", data("cleveland", Some((1, 2)))).expect("node");
    let founding: Vec<&LocalNode> = founders.iter().collect();
    let genesis = common::genesis(dir, &founding);
    let spec = common::spec(&options, &genesis);

    // The members agree to admit it ahead of time: one proposes, a threshold (3 of 4) signs.
    // A copy with one signature is kept to show that it does not suffice.
    let proposal = dir.join("roster-v1.json");
    let proposal_text = proposal.to_string_lossy().into_owned();
    let entry = format!(
        "{},cleveland annex,cleveland,US,hospital,{}",
        newcomer.key.id(),
        newcomer.address().expect("address")
    );
    cli(&[
        "roster",
        "propose",
        "--current",
        &genesis.to_string_lossy(),
        "--add",
        &entry,
        "--out",
        &proposal_text,
    ]);
    let sign = |node: &LocalNode| {
        cli(&[
            "roster",
            "sign",
            &proposal_text,
            "--key",
            &node.home.join("key.pem").to_string_lossy(),
        ]);
    };
    sign(&founders[0]);
    let one_signature = dir.join("roster-v1-one-signature.json");
    std::fs::copy(&proposal, &one_signature).expect("copy");
    sign(&founders[1]);
    sign(&founders[2]);

    let mut children = Children::default();
    let everyone: Vec<&LocalNode> = founders.iter().chain([&newcomer]).collect();
    for (i, node) in everyone.iter().enumerate() {
        // Everyone pulls from every other trainer (3 before the admission, 4 after); the
        // newcomer knows the founders' addresses, and they do not know it.
        let mut config = node.config(&spec, i, 4, &founding).expect("config");
        if i == 2 {
            // Switzerland may validate on VA's test split too (a dataset it declares, by name).
            config.validation.push(ValidationData {
                name: "va-test".into(),
                schema: common::schema(),
                site: "va".into(),
            });
        }
        node.write_config(&config).expect("write config");
        children.set(i, node.spawn(common::exe()).expect("spawn"));
    }

    // Before admission: the founders train while the newcomer waits, refused by all of them.
    wait_for(
        "the founders' second round",
        Duration::from_secs(180),
        || {
            founders
                .iter()
                .all(|f| f.status().is_some_and(|s| s.round >= 2))
                .then_some(())
        },
    );
    let waiting = newcomer.status().expect("newcomer's admin endpoint");
    assert_eq!(waiting.phase, Phase::Admission);
    assert_eq!((waiting.roster_version, waiting.peers.connected), (0, 0));
    for f in &founders {
        let status = f.status().expect("status");
        assert_eq!(status.peers.connected, 3, "{}: only the founders", f.name);
        assert_eq!(status.roster_version, 0);
    }
    // The newcomer dials the founders from its start and again every 2 s; each dial is refused
    // and counted (it may not have dialed yet when the founders are this far on a busy machine).
    let refused = || -> u64 {
        founders
            .iter()
            .map(|f| {
                f.metrics()
                    .expect("metrics")
                    .lines()
                    .find_map(|l| l.strip_prefix("medmesh_connections_refused_total "))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    wait_for(
        "the newcomer's dials to be refused",
        Duration::from_secs(60),
        || (refused() > 0).then_some(()),
    );

    // Mid-run, one member publishes it. One signature is not enough: the node refuses to follow
    // it, and says why.
    let admin = founders[1].config_path().to_string_lossy().into_owned();
    let refused = std::process::Command::new(common::exe())
        .args([
            "roster",
            "publish",
            &one_signature.to_string_lossy(),
            "--config",
            &admin,
        ])
        .output()
        .expect("medmesh runs");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("409") && why.contains("signature"), "{why}");
    let published = cli(&["roster", "publish", &proposal_text, "--config", &admin]);
    assert!(published.contains("roster version 1"), "{published}");
    let admitted_at = founders[1].status().expect("status").round;

    // It spreads to every founder, and the newcomer learns it and starts training.
    wait_for(
        "every node on roster version 1",
        Duration::from_secs(60),
        || {
            everyone
                .iter()
                .all(|n| n.status().is_some_and(|s| s.roster_version == 1))
                .then_some(())
        },
    );
    wait_for(
        "the newcomer to leave admission",
        Duration::from_secs(60),
        || {
            newcomer
                .status()
                .filter(|s| s.phase != Phase::Admission)
                .map(|_| ())
        },
    );

    let indices: Vec<usize> = (0..everyone.len()).collect();
    let outcomes = mesh::wait_for_outcomes(
        &everyone,
        &mut children,
        &indices,
        std::time::Instant::now() + Duration::from_secs(400),
        |line| eprintln!("{line}"),
    )
    .expect("every node finishes");
    assert!(
        options.rounds.is_some_and(|r| admitted_at + 5 <= r),
        "admitted too late to test catching up (round {admitted_at})"
    );
    // Caught up: it finished the same last round as the founders, though it joined late.
    for outcome in &outcomes {
        assert_eq!(Some(outcome.rounds), options.rounds, "{}", outcome.site);
    }
    let joined = &outcomes[4];
    assert!(
        joined.test.accuracy().is_some_and(|a| a >= 0.65),
        "{:?}",
        joined.test
    );
    let mean = outcomes[..4]
        .iter()
        .map(|o| o.test.accuracy().expect("a binary outcome"))
        .sum::<f64>()
        / 4.0;
    assert!(mean >= 0.70, "founders' mean accuracy {mean}");
    for o in &outcomes {
        eprintln!(
            "{}: {} rounds timed out, {:?} rejected, digest {}",
            o.site, o.timeouts, o.rejections, o.params_digest
        );
    }
    let distance = mesh::max_relative_distance(&outcomes);
    assert!(distance <= 1e-3, "the five nodes disagree: {distance}");
    // While the members linger, one validates the newest model on another site's test split
    // on demand (hospitals may validate too) and publishes the signed report.
    let line = cli(&[
        "validate",
        "--config",
        &founders[2].config_path().to_string_lossy(),
        "--model",
        "latest",
        "--dataset",
        "va-test",
    ]);
    assert!(
        line.contains("on 45 samples") && line.contains("auc"),
        "{line}"
    );
    let log = common::log(&newcomer.log());
    assert!(log.contains("not on the roster"), "{log}");
    assert!(log.contains("admitted"), "{log}");
}
