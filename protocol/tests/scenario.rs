//! Scenario tests: several real `Peer`s on a fake clock with an in-memory network, no sockets:
//! decentralized averaging reaches consensus with no coordinator.

mod common;

use std::time::Duration;

use common::{Net, inits, keys, norm, weighted_average};
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::identity::{Keypair, MemberId};
use medmesh_protocol::peer::{Config, Event, Peer, TwoLevel};
use medmesh_protocol::roster::Role;

fn config(rule: Rule, fanout: usize, rounds: u64, seed: u64) -> Config {
    Config {
        experiment: "consensus".into(),
        rule,
        fanout,
        max_rounds: Some(rounds),
        round_timeout: Duration::from_secs(5),
        fetch_timeout: Duration::from_secs(2),
        seed,
        // Plain averaging: these tests pin down the merge itself.
        outer: None,
        ..Config::default()
    }
}

#[test]
fn full_fanout_mean_reaches_the_exact_weighted_average() {
    let n = 8;
    let k = keys(n);
    let init = inits(n, 32, 1);
    let samples: Vec<u64> = (0..n as u64).map(|i| 10 * (i + 1)).collect();
    let target = weighted_average(&init, &samples);
    let configs = (0..n)
        .map(|i| config(Rule::Mean, n - 1, 3, i as u64))
        .collect();
    let mut net = Net::new(&k, configs, init, &samples);
    net.run_to_average(
        Duration::from_secs(600),
        &target,
        1e-4,
        "the weighted average",
    );
    let timeouts = net
        .events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Event::RoundCompleted {
                    timed_out: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(timeouts, 0, "with no loss no round should time out");
}

#[test]
fn metropolis_hastings_on_a_ring_converges_to_the_average() {
    let n = 8;
    let k = keys(n);
    let ids: Vec<MemberId> = k.iter().map(Keypair::id).collect();
    let init = inits(n, 16, 2);
    let samples = vec![100u64; n];
    let target = weighted_average(&init, &samples);
    let initial_spread = init
        .iter()
        .map(|v| {
            norm(
                &v.iter()
                    .zip(&target)
                    .map(|(a, b)| f64::from(*a) - b)
                    .collect::<Vec<_>>(),
            )
        })
        .fold(0.0, f64::max);
    let configs = (0..n)
        .map(|i| Config {
            neighbours: Some(vec![ids[(i + 1) % n], ids[(i + n - 1) % n]]),
            ..config(Rule::MetropolisHastings, 0, 80, i as u64)
        })
        .collect();
    let mut net = Net::new(&k, configs, init, &samples);
    net.run(Duration::from_secs(3600));
    assert!(net.peers.iter().all(Peer::is_finished));
    let err = net.max_distance_to(&target) / initial_spread;
    assert!(
        err < 1e-4,
        "MH ring: relative distance to the average {err}"
    );
}

#[test]
fn epidemic_sampling_reaches_consensus_without_a_coordinator() {
    let n = 8;
    let k = keys(n);
    let init = inits(n, 16, 3);
    let samples: Vec<u64> = (0..n as u64).map(|i| 50 + 7 * i).collect();
    let target = weighted_average(&init, &samples);
    let configs = (0..n)
        .map(|i| config(Rule::Mean, 2, 40, 10 + i as u64))
        .collect();
    let start = common::spread(&init);
    let mut net = Net::new(&k, configs, init, &samples);
    net.run_to_consensus(Duration::from_secs(3600), &target, start);
}

/// Four groups of four with unequal samples (inside a group and between groups), averaging
/// only, two-level: each round inside the group with every group mate, every second round (and
/// the last) one version of every other group too.
fn two_level_net(schedule: TwoLevel, rounds: u64) -> (Net, Vec<f64>, f64) {
    let n = 16;
    let k = keys(n);
    let groups: Vec<String> = (0..n).map(|i| format!("centre-{}", i / 4)).collect();
    let chain = common::grouped_chain(&vec![Role::Hospital; n], &groups);
    let init = inits(n, 24, 7);
    let samples: Vec<u64> = (0..n as u64).map(|i| 20 + 13 * i + 40 * (i % 3)).collect();
    let target = weighted_average(&init, &samples);
    let configs = (0..n)
        .map(|i| Config {
            two_level: Some(schedule),
            ..config(Rule::Mean, 3, rounds, 100 + i as u64)
        })
        .collect();
    let start = common::spread(&init);
    (
        Net::with_chain(chain, &k, configs, init, &samples),
        target,
        start,
    )
}

#[test]
fn two_level_averaging_reaches_the_exact_global_weighted_average() {
    let (mut net, target, _) = two_level_net(TwoLevel::Every { rounds: 2 }, 4);
    net.run_to_average(
        Duration::from_secs(600),
        &target,
        1e-4,
        "the global weighted average",
    );
    // Rounds 1 and 3 stay inside the groups; rounds 2 and 4 (and the final versions) do not.
    let rounds_across = net
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::RoundCompleted {
                round,
                contributors,
                ..
            } => Some((*round, contributors.len())),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(
        rounds_across
            .iter()
            .all(|(round, merged)| *merged == if round % 2 == 0 { 7 } else { 4 }),
        "inside rounds merge the group (4), mixing rounds 3 more groups (7): {rounds_across:?}"
    );
}

#[test]
fn two_level_averaging_crosses_groups_less_than_flat_gossip() {
    let (mut two_level, target, start) = two_level_net(TwoLevel::Every { rounds: 4 }, 8);
    two_level.run(Duration::from_secs(600));
    assert!(two_level.peers.iter().all(Peer::is_finished));
    let err = two_level.max_distance_to(&target) / start;
    assert!(err < 1e-4, "two-level: relative distance {err}");

    // The same mesh, flat: every member pulls 3 members from anywhere.
    let n = 16;
    let k = keys(n);
    let groups: Vec<String> = (0..n).map(|i| format!("centre-{}", i / 4)).collect();
    let chain = common::grouped_chain(&vec![Role::Hospital; n], &groups);
    let samples: Vec<u64> = (0..n as u64).map(|i| 20 + 13 * i + 40 * (i % 3)).collect();
    let configs = (0..n)
        .map(|i| config(Rule::Mean, 3, 8, 100 + i as u64))
        .collect();
    let mut flat = Net::with_chain(chain, &k, configs, inits(n, 24, 7), &samples);
    flat.run(Duration::from_secs(600));
    assert!(flat.peers.iter().all(Peer::is_finished));
    assert!(
        two_level.across * 3 <= flat.across,
        "messages between groups: two-level {} against flat {}",
        two_level.across,
        flat.across
    );
}

#[test]
fn two_level_fanout_reaches_consensus() {
    let (mut net, target, start) = two_level_net(TwoLevel::Fanout { groups: 1 }, 30);
    net.run_to_consensus(Duration::from_secs(3600), &target, start);
}

#[test]
fn two_level_refuses_fixed_neighbours_and_empty_schedules() {
    for (two_level, neighbours) in [
        (TwoLevel::Every { rounds: 2 }, Some(vec![])),
        (TwoLevel::Every { rounds: 0 }, None),
        (TwoLevel::Fanout { groups: 0 }, None),
    ] {
        let config = Config {
            two_level: Some(two_level),
            neighbours,
            ..config(Rule::Mean, 3, 4, 0)
        };
        assert!(config.check().is_err(), "{two_level:?} accepted");
    }
}

#[test]
fn an_outer_step_of_one_without_momentum_is_plain_averaging_and_bad_settings_are_refused() {
    use medmesh_protocol::peer::Outer;
    let n = 8;
    let k = keys(n);
    let init = inits(n, 32, 1);
    let samples: Vec<u64> = (0..n as u64).map(|i| 10 * (i + 1)).collect();
    let target = weighted_average(&init, &samples);
    let configs = (0..n)
        .map(|i| Config {
            outer: Some(Outer::Nesterov {
                lr: 1.0,
                momentum: 0.0,
            }),
            ..config(Rule::Mean, n - 1, 3, i as u64)
        })
        .collect();
    let mut net = Net::new(&k, configs, init, &samples);
    net.run_to_average(
        Duration::from_secs(600),
        &target,
        1e-4,
        "the weighted average",
    );
    for outer in [
        Outer::Nesterov {
            lr: 0.0,
            momentum: 0.9,
        },
        Outer::Nesterov {
            lr: 0.7,
            momentum: 1.0,
        },
        Outer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.0,
        },
        Outer::Adagrad {
            lr: f32::NAN,
            tau: 0.1,
        },
    ] {
        let config = Config {
            outer: Some(outer),
            ..config(Rule::Mean, 3, 4, 0)
        };
        assert!(config.check().is_err(), "{outer:?} accepted");
    }
}

#[test]
fn a_resumed_peer_continues_at_its_checkpoint() {
    use medmesh_protocol::peer::{Action, Checkpoint};

    let k = keys(2);
    let chain = common::chain(&[medmesh_protocol::roster::Role::Hospital; 2]);
    let checkpoint = Checkpoint {
        round: 7,
        parents: vec![medmesh_protocol::identity::ContentId([3; 32])],
    };
    let mut peer = Peer::resume(
        config(Rule::Mean, 1, 10, 0),
        k[0].clone(),
        chain.clone(),
        vec![0.5; 4],
        10,
        checkpoint.clone(),
    )
    .expect("resumes");
    assert_eq!(peer.checkpoint(), checkpoint);
    assert!(matches!(
        peer.poll_action(),
        Some(Action::Train { round: 7, .. })
    ));
    peer.handle_trained(Duration::ZERO, vec![0.5; 4], Default::default())
        .expect("trained");
    let announced = std::iter::from_fn(|| peer.poll_action()).find_map(|a| match a {
        Action::Broadcast(medmesh_protocol::wire::Message::Announce(v)) => {
            Some(v.verify().expect("signed"))
        }
        _ => None,
    });
    let version = announced.expect("announces");
    assert_eq!(version.round, 7);
    assert_eq!(
        version.parents, checkpoint.parents,
        "lineage continues across the restart"
    );
    // A checkpoint past max_rounds is a finished peer.
    let done = Peer::resume(
        config(Rule::Mean, 1, 10, 0),
        k[0].clone(),
        chain,
        vec![0.5; 4],
        10,
        Checkpoint {
            round: 11,
            parents: vec![],
        },
    )
    .expect("resumes");
    assert!(done.is_finished());
    assert_eq!(done.params(), &[0.5; 4]);
}

#[test]
fn a_peer_behind_joins_the_round_of_those_ahead_and_ends_with_them() {
    use medmesh_protocol::peer::{Action, Checkpoint};
    use medmesh_protocol::roster::Role;
    use medmesh_protocol::wire::Message;

    let k = keys(2);
    let chain = common::chain(&[Role::Hospital; 2]);
    // One member is already at the last round (3) ...
    let mut ahead = Peer::resume(
        config(Rule::Mean, 1, 3, 0),
        k[0].clone(),
        chain.clone(),
        vec![1.0; 4],
        10,
        Checkpoint {
            round: 3,
            parents: vec![],
        },
    )
    .expect("resumes");
    assert!(matches!(
        ahead.poll_action(),
        Some(Action::Train { round: 3, .. })
    ));
    ahead
        .handle_trained(Duration::ZERO, vec![1.0; 4], Default::default())
        .expect("trained");
    let announce = announcement(&mut ahead);
    // ... the other starts at round 1, merges that round-3 version and so reaches the end.
    let mut behind = Peer::new(
        config(Rule::Mean, 1, 3, 1),
        k[1].clone(),
        chain,
        vec![0.0; 4],
        10,
    )
    .expect("peer");
    assert!(matches!(
        behind.poll_action(),
        Some(Action::Train { round: 1, .. })
    ));
    pull_announced(&mut behind, &ahead, k[0].id(), &announce);
    // It joins round 3, where the other is gathering, rather than skipping past it ...
    let actions: Vec<Action> = std::iter::from_fn(|| behind.poll_action()).collect();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Train { round: 3, .. })),
        "{actions:?}"
    );
    assert!(!behind.is_finished());
    behind
        .handle_trained(Duration::ZERO, vec![0.25; 4], Default::default())
        .expect("trained");
    let mut announced = None;
    let mut pulled = None;
    for action in std::iter::from_fn(|| behind.poll_action()) {
        match action {
            Action::Broadcast(Message::Announce(v)) => announced = Some(v),
            Action::Fetch { from, id } => pulled = Some((from, id)),
            _ => {}
        }
    }
    let announced = announced
        .expect("announces round 3")
        .verify()
        .expect("signed");
    assert_eq!(announced.round, 3);
    // ... its round-3 version is what the member ahead was waiting for ...
    assert_eq!(
        ahead.handle_message(
            Duration::ZERO,
            k[1].id(),
            &Message::Announce(announced.signed().clone()).to_bytes()
        ),
        medmesh_protocol::peer::Verdict::Accept
    );
    // ... and it ends with the others at the last round, never past it.
    let (from, id) = pulled.expect("pulls round 3 again");
    behind.handle_payload(Duration::ZERO, from, id, ahead.payload(&id));
    let actions: Vec<Action> = std::iter::from_fn(|| behind.poll_action()).collect();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Event(Event::Finished { round: 3 }))),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Train { .. })),
        "trains past the last round: {actions:?}"
    );
    assert!(behind.is_finished());
    assert_eq!(behind.params(), &[0.625; 4]);
    // Its merged model is announced as its final version, after the last round, with the
    // versions it was averaged from as parents.
    let last = actions
        .iter()
        .find_map(|a| match a {
            Action::Broadcast(Message::Announce(v)) => Some(v.clone().verify().expect("signed")),
            _ => None,
        })
        .expect("announces its final version");
    assert_eq!((last.round, last.author), (4, k[1].id()));
    assert_eq!(last.parents, [announced.id(), id]);
    let mut params = Vec::new();
    medmesh_protocol::update::decode_payload(
        &last.payload,
        &behind.payload(&last.id()).expect("served"),
        &mut params,
    )
    .expect("decodes");
    assert_eq!(params, [0.625; 4]);
}

#[test]
fn a_peer_that_arrives_after_the_end_adopts_the_final_consensus() {
    use medmesh_protocol::peer::Action;
    use medmesh_protocol::roster::Role;
    use medmesh_protocol::wire::Message;

    // Four members; three train all 4 rounds without the fourth (their rounds close on the
    // timeout) and agree on one final model.
    let k = keys(4);
    let chain = common::chain(&[Role::Hospital; 4]);
    let configs = (0..3).map(|i| config(Rule::Mean, 3, 4, i)).collect();
    let mut net = Net::with_chain(
        chain.clone(),
        &k[..3],
        configs,
        inits(3, 8, 7),
        &[10, 20, 30],
    );
    net.run(Duration::from_secs(600));
    assert!(net.peers.iter().all(Peer::is_finished));
    let consensus = net.peers[0].params().to_vec();
    assert!(net.spread() < 1e-6, "the three agree: {}", net.spread());

    // The fourth starts (or restarts) only now, trains round 1 on a model far from theirs, and
    // hears their final versions.
    let mut late = Peer::new(
        config(Rule::Mean, 3, 4, 9),
        k[3].clone(),
        chain,
        vec![9.0; 8],
        40,
    )
    .expect("peer");
    assert!(matches!(
        late.poll_action(),
        Some(Action::Train { round: 1, .. })
    ));
    late.handle_trained(Duration::ZERO, vec![9.0; 8], Default::default())
        .expect("trained");
    while late.poll_action().is_some() {}
    let mut finals = Vec::new();
    for (i, key) in k.iter().enumerate().take(3) {
        let (_, bytes) = net.sent.iter().rev().find(|(s, _)| *s == i).expect("sent");
        let Ok(Message::Announce(v)) =
            Message::from_bytes(bytes, medmesh_protocol::wire::MAX_GOSSIP)
        else {
            panic!("the last message of a peer is its final announcement");
        };
        let v = v.verify().expect("signed");
        assert_eq!(v.round, 5);
        finals.push(v.id());
        late.handle_message(Duration::ZERO, key.id(), bytes);
    }
    let pulls: Vec<_> = std::iter::from_fn(|| late.poll_action())
        .filter_map(|a| match a {
            Action::Fetch { from, id } => Some((from, id)),
            _ => None,
        })
        .collect();
    assert_eq!(pulls.len(), 3, "pulls each final");
    for (from, id) in pulls {
        let server = &net.peers[net.index[&from]];
        late.handle_payload(Duration::ZERO, from, id, server.payload(&id));
    }
    // It ends with them: its final version is their consensus, not a mix with its stale model,
    // and its lineage names the finals it adopted.
    assert!(late.is_finished());
    assert_eq!(late.params(), consensus.as_slice());
    let last = std::iter::from_fn(|| late.poll_action())
        .find_map(|a| match a {
            Action::Broadcast(Message::Announce(v)) => Some(v.verify().expect("signed")),
            _ => None,
        })
        .expect("announces its final version");
    assert_eq!(last.round, 5);
    let mut parents = last.parents.clone();
    parents.sort();
    finals.sort();
    assert_eq!(parents, finals);
}

/// Honest members whose rounds are faster than the per-second announcement allowance (here
/// about 4.6 rounds a second of the fake clock against 4 a second, for 400 rounds: the burst
/// runs out after a minute) are never refused: the allowance also grows with every round a peer
/// completes.
#[test]
fn fast_honest_rounds_are_never_rate_limited() {
    let n = 4;
    let k = keys(n);
    let configs = (0..n)
        .map(|i| config(Rule::Mean, n - 1, 400, i as u64))
        .collect();
    let mut net = Net::new(&k, configs, inits(n, 8, 3), &[10; 4]);
    net.run(Duration::from_secs(3600));
    assert!(net.peers.iter().all(Peer::is_finished), "all peers finish");
    let limited = net
        .events
        .iter()
        .filter(|(_, e)| {
            matches!(e, Event::Rejected { reason, .. } if reason.label() == "rate_limited")
        })
        .count();
    eprintln!("400 rounds in {:?}, {limited} refused", net.now);
    assert_eq!(
        limited, 0,
        "honest announcements refused as over their rate"
    );
    assert!(
        net.now < Duration::from_secs(100),
        "the rounds were not faster than the per-second rate: {:?}",
        net.now
    );
}

/// A peer that merges versions of a later round than its own (restarted, or newly admitted) is
/// catching up: it adopts the merge as it is, without the outer optimizer's step, whose bounded
/// moves would otherwise keep it apart from the mesh for many rounds; in step with the others
/// it steps again.
#[test]
fn a_peer_catching_up_adopts_the_merge_without_an_outer_step() {
    use medmesh_protocol::peer::{Action, Checkpoint, Outer};
    use medmesh_protocol::roster::Role;

    let k = keys(2);
    let chain = common::chain(&[Role::Hospital; 2]);
    let with_outer = |seed| Config {
        outer: Some(Outer::RECOMMENDED),
        ..config(Rule::Mean, 1, 5, seed)
    };
    let mut ahead = Peer::resume(
        with_outer(0),
        k[0].clone(),
        chain.clone(),
        vec![1.0; 4],
        10,
        Checkpoint {
            round: 3,
            parents: vec![],
        },
    )
    .expect("resumes");
    while ahead.poll_action().is_some() {}
    ahead
        .handle_trained(Duration::ZERO, vec![1.0; 4], Default::default())
        .expect("trained");
    let announce = announcement(&mut ahead);
    let mut behind = Peer::new(with_outer(1), k[1].clone(), chain, vec![0.0; 4], 10).expect("peer");
    while behind.poll_action().is_some() {}
    pull_announced(&mut behind, &ahead, k[0].id(), &announce);
    let start = std::iter::from_fn(|| behind.poll_action())
        .find_map(|a| match a {
            Action::Train { round: 3, params } => Some(params),
            _ => None,
        })
        .expect("joins round 3");
    // The plain sample-weighted mean of 0 and 1: FedAdam's first step from 0 would move each
    // coordinate by about its learning rate (0.02) instead.
    assert_eq!(start, vec![0.5; 4]);
}

/// The announcement `peer` broadcasts once it has trained.
fn announcement(peer: &mut Peer) -> medmesh_protocol::wire::Message {
    use medmesh_protocol::peer::Action;
    use medmesh_protocol::wire::Message;
    std::iter::from_fn(|| peer.poll_action())
        .find_map(|a| match a {
            Action::Broadcast(m @ Message::Announce(_)) => Some(m),
            _ => None,
        })
        .expect("announces")
}

/// `behind` trains its round (on zeros), then hears `author`'s `announce` and pulls that version
/// from `ahead`.
fn pull_announced(
    behind: &mut Peer,
    ahead: &Peer,
    author: MemberId,
    announce: &medmesh_protocol::wire::Message,
) {
    use medmesh_protocol::peer::Action;
    behind
        .handle_trained(Duration::ZERO, vec![0.0; 4], Default::default())
        .expect("trained");
    while behind.poll_action().is_some() {}
    behind.handle_message(Duration::ZERO, author, &announce.to_bytes());
    let (from, id) = std::iter::from_fn(|| behind.poll_action())
        .find_map(|a| match a {
            Action::Fetch { from, id } => Some((from, id)),
            _ => None,
        })
        .expect("pulls the newer version");
    behind.handle_payload(Duration::ZERO, from, id, ahead.payload(&id));
}
