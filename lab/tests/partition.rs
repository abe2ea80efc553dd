//! A network partition of four real `medmesh` processes into two halves that later heals. The
//! cut is made at the node level: each hospital's operator blocks the other half
//! (`POST /block`, what `medmesh block` sends), which closes those connections and refuses new
//! ones. Each half keeps training on its own (rounds close on their timeout, merging only the
//! half's versions); after `medmesh unblock` the nodes dial each other again, the halves
//! re-converge to one model, and every signed item stored before, during and after the cut
//! verifies.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{data, options, wait_for};
use medmesh_lab::mesh::{self, LocalNode};
use medmesh_node::admin;
use medmesh_protocol::identity::MemberId;
use medmesh_record::store::Store;

/// Blocks (or unblocks) `names` on `node`; the members it blocks afterwards.
fn block(node: &LocalNode, names: &[&str], block: bool) -> Vec<String> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(admin::block(
            &node.endpoint().expect("endpoint"),
            &names,
            block,
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", node.name))
}

/// Every record in a stopped node's store verifies; the number of versions it holds.
fn audit(node: &LocalNode) -> usize {
    let store = Store::open(&node.store()).expect("the store opens");
    let audit = store.verify_all().expect("readable");
    assert!(audit.is_clean(), "{}: {:?}", node.name, audit.faults);
    store.versions().expect("versions").len()
}

#[test]
fn a_mesh_cut_in_two_keeps_training_in_each_half_and_reconverges_after_the_heal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // A round missing the other half closes on the 8 s round timeout. 30 rounds: the cut lands
    // wherever the (fast, ~50 ms) rounds have got to by the time every operator has blocked,
    // and the healed mesh needs rounds left to re-converge in.
    let options = options(dir, 30);
    let sites = ["cleveland", "hungarian", "switzerland", "va"];
    let nodes = sites.map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let genesis = common::genesis(dir, &all);
    let spec = common::spec(&options, &genesis);
    let mut children = common::start(&nodes, &spec, 3, |_, _| {});
    let halves = [[0usize, 1], [2, 3]];
    let half_of = |i: usize| usize::from(!halves[0].contains(&i));
    let ids: Vec<MemberId> = nodes.iter().map(|n| n.key.id()).collect();
    let rounds = |nodes: &[LocalNode]| -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n.status().map_or(0, |s| s.round))
            .collect()
    };

    // Cut once every node is a few rounds in.
    wait_for("three rounds everywhere", Duration::from_secs(180), || {
        rounds(&nodes).iter().all(|r| *r >= 3).then_some(())
    });
    for (i, node) in nodes.iter().enumerate() {
        let other = &halves[1 - half_of(i)];
        let names: Vec<&str> = other.iter().map(|&j| sites[j]).collect();
        let expected: Vec<String> = names.iter().map(|n| format!("{n} hospital")).collect();
        if i == 0 {
            // Cleveland's operator uses the CLI.
            let config = node.config_path().to_string_lossy().into_owned();
            let mut args = vec!["block", "--config", &config];
            args.extend(&names);
            let out = common::cli(&args);
            assert_eq!(out.trim(), format!("blocked: {}", expected.join(", ")));
        } else {
            assert_eq!(block(node, &names, true), expected, "{}", node.name);
        }
    }
    let cut_at = rounds(&nodes);
    let timed_out_at: Vec<u64> = nodes
        .iter()
        .map(|n| n.status().map_or(0, |s| s.rounds_timed_out))
        .collect();

    // Each half trains on: three more rounds, each merging only the half's own versions.
    let partitioned = wait_for(
        "three rounds in each half",
        Duration::from_secs(120),
        || {
            let statuses: Vec<admin::Status> =
                nodes.iter().map(|n| n.status()).collect::<Option<_>>()?;
            statuses
                .iter()
                .zip(&cut_at)
                .all(|(s, at)| s.last_round.as_ref().is_some_and(|l| l.round >= at + 3))
                .then_some(statuses)
        },
    );
    for (i, status) in partitioned.iter().enumerate() {
        let last = status.last_round.as_ref().expect("a round closed");
        let own: BTreeSet<&MemberId> = halves[half_of(i)].iter().map(|&j| &ids[j]).collect();
        assert!(
            last.contributors.iter().all(|c| own.contains(c)),
            "{}: round {} merged across the cut: {:?}",
            sites[i],
            last.round,
            last.contributors
        );
        assert!(
            last.timed_out,
            "{}: a cut round must wait for the missing half",
            sites[i]
        );
        assert!(
            status.rounds_timed_out >= timed_out_at[i] + 2,
            "{}",
            sites[i]
        );
        assert!(
            status.peers.connected <= 1,
            "{}: still connected to {} peers",
            sites[i],
            status.peers.connected
        );
        assert_eq!(status.blocked.len(), 2, "{}", sites[i]);
    }

    // Heal: every operator lifts the block; the nodes find each other again.
    for (i, node) in nodes.iter().enumerate() {
        let other = &halves[1 - half_of(i)];
        let names: Vec<&str> = other.iter().map(|&j| sites[j]).collect();
        assert!(block(node, &names, false).is_empty(), "{}", node.name);
    }
    wait_for("the mesh to reconnect", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| {
                n.status()
                    .is_some_and(|s| s.peers.connected == 3 || s.finished)
            })
            .then_some(())
    });

    let outcomes = mesh::wait_for_outcomes(
        &all,
        &mut children,
        &[0, 1, 2, 3],
        Instant::now() + Duration::from_secs(400),
        |line| eprintln!("{line}"),
    )
    .expect("every node finishes");
    for o in &outcomes {
        assert_eq!(Some(o.rounds), options.rounds, "{}", o.site);
        assert!(o.rejections.is_empty(), "{}: {:?}", o.site, o.rejections);
    }
    let mean = outcomes
        .iter()
        .map(|o| o.test.accuracy().expect("a binary outcome"))
        .sum::<f64>()
        / 4.0;
    assert!(mean >= 0.70, "mean accuracy after the heal {mean}");
    let distance = mesh::max_relative_distance(&outcomes);
    assert!(
        distance <= 1e-3,
        "the halves did not re-converge: relative distance {distance}"
    );

    drop(children);
    for node in &nodes {
        let versions = audit(node);
        assert!(
            options.rounds.is_some_and(|r| versions as u64 >= r),
            "{}: {versions} versions",
            node.name
        );
    }
}
