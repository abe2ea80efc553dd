//! Hostile input against a peer: every kind of bad message is refused with its reason, reported
//! as an event, and never panics; the honest mesh keeps converging around an attacker.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Net, chain, inits, keys};
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::identity::{self, ContentId, Digest, Keypair, MemberId, Signed, Verified};
use medmesh_protocol::peer::{Action, Config, Event, Outliers, Peer, Reason, Verdict};
use medmesh_protocol::roster::Role;
use medmesh_protocol::update::Version;
use medmesh_protocol::wire::{self, Message};
use medmesh_testkit::{key, report, signed_by, version_with};

const DIM: usize = 8;

fn cfg() -> Config {
    Config {
        experiment: "hostile".into(),
        fanout: 2,
        rule: Rule::Mean,
        // Plain averaging: these tests pin down the merge itself.
        outer: None,
        ..Config::default()
    }
}

/// Roster: keys 0..4 hospitals, key 4 an observer, key 5 a validator.
fn setup() -> (Vec<Keypair>, Peer) {
    let k = keys(6);
    let roles = [
        Role::Hospital,
        Role::Hospital,
        Role::Hospital,
        Role::Hospital,
        Role::Observer,
        Role::Validator,
    ];
    let c = chain(&roles);
    let peer = Peer::new(cfg(), k[0].clone(), c, vec![0.0; DIM], 10).expect("peer");
    (k, peer)
}

/// A version of this test's experiment (the default model digest, 10 samples, no metrics).
fn hostile(v: &mut Version) {
    v.experiment = "hostile".into();
    v.model = Digest::default();
    v.samples = 10;
    v.metrics.clear();
}

fn version(key: &Keypair, round: u64, value: f32) -> (Verified<Version>, Bytes) {
    version_with(key, round, vec![], &[value; DIM], hostile)
}

fn announce(v: &Verified<Version>) -> Vec<u8> {
    Message::Announce(v.signed().clone()).to_bytes()
}

fn rejected_reason(peer: &mut Peer) -> Option<&'static str> {
    let mut label = None;
    while let Some(a) = peer.poll_action() {
        if let Action::Event(Event::Rejected { reason, .. }) = a {
            label = Some(reason.label());
        }
    }
    label
}

fn reject_label(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Reject(r) => r.label(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

const T: Duration = Duration::from_millis(1);

/// The payloads `peer` asks for next, draining its other actions.
fn fetches(peer: &mut Peer) -> Vec<ContentId> {
    std::iter::from_fn(|| peer.poll_action())
        .filter_map(|a| match a {
            Action::Fetch { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// The peer of `keys[0]` in a mesh of hospitals holding `keys`, its first round trained (zeros)
/// and announced.
fn trained_first_round(keys: &[Keypair], config: Config) -> Peer {
    let c = chain(&vec![Role::Hospital; keys.len()]);
    let mut peer = Peer::new(config, keys[0].clone(), c, vec![0.0; DIM], 10).expect("peer");
    assert!(matches!(
        peer.poll_action(),
        Some(Action::Train { round: 1, .. })
    ));
    peer.handle_trained(T, vec![0.0; DIM], BTreeMap::new())
        .expect("trained");
    peer
}

#[test]
fn forged_signature_is_rejected() {
    let (k, mut peer) = setup();
    let (v, _) = version(&k[1], 1, 1.0);
    let mut bytes = announce(&v);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // inside the signature
    let verdict = peer.handle_message(T, k[1].id(), &bytes);
    assert_eq!(reject_label(&verdict), "bad_signature");
    assert_eq!(rejected_reason(&mut peer), Some("bad_signature"));
}

#[test]
fn valid_signature_by_a_non_member_is_rejected() {
    let (k, mut peer) = setup();
    let outsider = key(200);
    let (v, _) = version(&outsider, 1, 1.0);
    let verdict = peer.handle_message(T, k[1].id(), &announce(&v));
    assert!(matches!(verdict, Verdict::Reject(Reason::NotMember(id)) if id == outsider.id()));
}

#[test]
fn an_observer_may_not_publish_versions() {
    let (k, mut peer) = setup();
    let (v, _) = version(&k[4], 1, 1.0);
    let verdict = peer.handle_message(T, k[4].id(), &announce(&v));
    assert_eq!(reject_label(&verdict), "not_permitted");
}

#[test]
fn replay_of_an_older_round_is_rejected_and_duplicates_ignored() {
    let (k, mut peer) = setup();
    let (v1, _) = version(&k[1], 1, 1.0);
    let (v2, _) = version(&k[1], 2, 2.0);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v1)),
        Verdict::Accept
    );
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v1)),
        Verdict::Ignore(Reason::Duplicate)
    );
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v2)),
        Verdict::Accept
    );
    let verdict = peer.handle_message(T, k[2].id(), &announce(&v1));
    assert_eq!(reject_label(&verdict), "replay");
}

/// `author` sends two different versions of round 3 to `peer`: the first is accepted, the
/// second rejected as equivocation.
fn equivocate(peer: &mut Peer, author: &Keypair) {
    let (a, _) = version(author, 3, 1.0);
    let (b, _) = version(author, 3, -1.0);
    assert_eq!(
        peer.handle_message(T, author.id(), &announce(&a)),
        Verdict::Accept
    );
    let verdict = peer.handle_message(T, author.id(), &announce(&b));
    assert_eq!(reject_label(&verdict), "equivocation");
}

#[test]
fn equivocation_rejects_and_flags_the_author() {
    let (k, mut peer) = setup();
    equivocate(&mut peer, &k[2]);
    let flagged: Vec<_> = peer.flagged().collect();
    assert_eq!(flagged, vec![k[2].id()]);
    let (later, _) = version(&k[2], 4, 0.5);
    assert_eq!(
        reject_label(&peer.handle_message(T, k[2].id(), &announce(&later))),
        "flagged"
    );
    let mut flagged_event = false;
    while let Some(a) = peer.poll_action() {
        flagged_event |=
            matches!(a, Action::Event(Event::Flagged { author, .. }) if author == k[2].id());
    }
    assert!(flagged_event);
}

#[test]
fn relayed_copies_of_a_flagged_or_flooding_author_are_ignored_not_held_against_the_relayer() {
    let (k, mut peer) = setup();
    // k[2] equivocates and is flagged; k[3] is an honest member relaying what it heard.
    equivocate(&mut peer, &k[2]);
    while peer.poll_action().is_some() {}
    let (later, _) = version(&k[2], 4, 0.5);
    assert_eq!(
        peer.handle_message(T, k[3].id(), &announce(&later)),
        Verdict::Ignore(Reason::Flagged)
    );
    assert_eq!(
        rejected_reason(&mut peer),
        None,
        "no rejection charged to the relayer"
    );
    // Sent by the flagged author itself, it is still a rejection.
    assert_eq!(
        reject_label(&peer.handle_message(T, k[2].id(), &announce(&later))),
        "flagged"
    );
    while peer.poll_action().is_some() {}
    // A flood by k[1], relayed by k[3]: over the author's rate the relayed copies are ignored.
    let mut ignored = 0;
    for round in 1..=100u64 {
        let (v, _) = version(&k[1], round, 0.5);
        match peer.handle_message(T, k[3].id(), &announce(&v)) {
            Verdict::Accept => {}
            Verdict::Ignore(Reason::RateLimited(author)) if author == k[1].id() => ignored += 1,
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert!(ignored > 50, "ignored {ignored}");
    assert_eq!(rejected_reason(&mut peer), None);
}

#[test]
fn payload_that_does_not_match_its_announcement_is_refused() {
    let (k, mut peer) = setup();
    let (v, bytes) = version(&k[1], 1, 1.0);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v)),
        Verdict::Accept
    );
    let mut fetch = None;
    while let Some(a) = peer.poll_action() {
        if let Action::Fetch { id, .. } = a {
            fetch = Some(id);
        }
    }
    assert_eq!(fetch, Some(v.id()), "the peer pulls the announced payload");
    let mut tampered = bytes.to_vec();
    tampered[0] ^= 1;
    peer.handle_payload(T, k[1].id(), v.id(), Some(Bytes::from(tampered)));
    assert_eq!(rejected_reason(&mut peer), Some("payload_mismatch"));
    // A second answer to a pull already settled is a late answer, not an attack ...
    peer.handle_payload(T, k[1].id(), v.id(), Some(bytes.clone()));
    assert_eq!(rejected_reason(&mut peer), None);
    // ... but a payload nobody asked for is refused.
    peer.handle_payload(T, k[3].id(), ContentId([7; 32]), Some(bytes));
    assert_eq!(rejected_reason(&mut peer), Some("unexpected_payload"));
}

#[test]
fn non_finite_payload_is_refused() {
    let (k, mut peer) = setup();
    let mut params = [0.5f32; DIM];
    params[3] = f32::INFINITY;
    let (v, bytes) = version_with(&k[1], 1, vec![], &params, hostile);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v)),
        Verdict::Accept
    );
    while peer.poll_action().is_some() {}
    peer.handle_payload(T, k[1].id(), v.id(), Some(bytes));
    assert_eq!(rejected_reason(&mut peer), Some("payload_not_finite"));
}

#[test]
fn wrong_model_shape_and_other_experiments() {
    let (k, mut peer) = setup();
    let (wrong_shape, _) = version_with(&k[1], 1, vec![], &[1.0; DIM + 1], hostile);
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), &announce(&wrong_shape))),
        "wrong_model"
    );
    let (other, _) = version_with(&k[1], 1, vec![], &[1.0; DIM + 1], |v| {
        hostile(v);
        v.experiment = "another".into();
    });
    assert!(matches!(
        peer.handle_message(T, k[1].id(), &announce(&other)),
        Verdict::Ignore(Reason::OtherExperiment(_))
    ));
}

#[test]
fn garbage_oversized_and_wrong_channel_bytes_are_rejected() {
    let (k, mut peer) = setup();
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), b"")),
        "malformed"
    );
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), &[1, 0xFF, 0xFF, 3])),
        "malformed"
    );
    let request = Message::Request(ContentId([1; 32])).to_bytes();
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), &request)),
        "wrong_channel"
    );
    let big = vec![1u8; medmesh_protocol::wire::MAX_GOSSIP + 1];
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), &big)),
        "too_large"
    );
}

#[test]
fn reports_need_a_validating_member_and_a_known_model() {
    let (k, mut peer) = setup();
    let (v, _) = version(&k[1], 1, 1.0);
    let good = report(&k[5], 6, v.id(), 0.83);
    let unknown_first = peer.handle_message(
        T,
        k[5].id(),
        &Message::Report(good.signed().clone()).to_bytes(),
    );
    assert_eq!(reject_label(&unknown_first), "unknown_model");
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&v)),
        Verdict::Accept
    );
    let accepted = peer.handle_message(
        T,
        k[5].id(),
        &Message::Report(good.signed().clone()).to_bytes(),
    );
    assert_eq!(accepted, Verdict::Accept);
    let by_observer = report(&k[4], 5, v.id(), 0.83);
    let verdict = peer.handle_message(
        T,
        k[4].id(),
        &Message::Report(by_observer.signed().clone()).to_bytes(),
    );
    assert_eq!(reject_label(&verdict), "not_permitted");
    let outsider = key(201);
    let forged = report(&outsider, 201, v.id(), 0.83);
    let verdict = peer.handle_message(
        T,
        k[1].id(),
        &Message::Report(forged.signed().clone()).to_bytes(),
    );
    assert_eq!(reject_label(&verdict), "not_member");
}

#[test]
fn roster_forks_and_non_threshold_updates_are_rejected() {
    let (k, mut peer) = setup();
    let current = peer.chain().current().clone();
    let mut members = current.members.clone();
    members.retain(|m| m.id != k[3].id());
    let next = current.next(members, 2).expect("valid next roster");
    // Signed by one member only: below the threshold of 2.
    let weak = signed_by(next.clone(), &[2]);
    let verdict = peer.handle_message(T, k[1].id(), &Message::Roster(weak).to_bytes());
    assert_eq!(reject_label(&verdict), "roster");
    let strong = signed_by(next, &[2, 3]);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &Message::Roster(strong).to_bytes()),
        Verdict::Accept
    );
    assert!(!peer.chain().current().contains(&k[3].id()));
    // The removed hospital's versions are refused from now on.
    let (v, _) = version(&k[3], 1, 1.0);
    assert_eq!(
        reject_label(&peer.handle_message(T, k[3].id(), &announce(&v))),
        "not_member"
    );
    // A different version 1 is a fork.
    let fork = current.next(current.members.clone(), 3).expect("valid");
    let fork = signed_by(fork, &[1, 2, 3, 4]);
    assert_eq!(
        reject_label(&peer.handle_message(T, k[1].id(), &Message::Roster(fork).to_bytes())),
        "roster"
    );
}

#[test]
fn honest_mesh_converges_while_attacked() {
    let n = 6;
    let k = keys(n);
    let init = inits(n, 16, 5);
    let samples = vec![20u64; n];
    let configs = (0..n)
        .map(|i| Config {
            experiment: "hostile".into(),
            fanout: 3,
            max_rounds: Some(30),
            seed: i as u64,
            round_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(2),
            // Plain averaging: these tests pin down the merge itself.
            outer: None,
            ..Config::default()
        })
        .collect();
    let start = common::spread(&init);
    let mut net = Net::new(&k, configs, init, &samples);
    // An outsider floods every peer with forged and non-member announcements for the rounds
    // ahead, and garbage, while the mesh trains.
    let outsider = key(222);
    for round in 1..20u64 {
        let (v, _) = version_with(&outsider, round, vec![], &[1e6; 16], |v| {
            hostile(v);
            v.samples = 1_000_000;
            v.degree = 1;
        });
        let at = Duration::from_millis(100 * round);
        for to in 0..n {
            let msg = Message::Announce(v.signed().clone()).to_bytes();
            net.push(
                at,
                common::Delivery::Gossip {
                    to,
                    from: outsider.id(),
                    bytes: msg,
                },
            );
            net.push(
                at,
                common::Delivery::Gossip {
                    to,
                    from: outsider.id(),
                    bytes: vec![1, 2, 3],
                },
            );
        }
    }
    net.run(Duration::from_secs(3600));
    assert!(net.peers.iter().all(Peer::is_finished));
    let spread = net.spread();
    assert!(spread < 1e-3 * start, "spread {spread} from {start}");
    let rejections = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Rejected { .. }))
        .count();
    assert_eq!(
        rejections,
        2 * 19 * n,
        "every hostile message is rejected, nothing else"
    );
    assert!(
        net.peers
            .iter()
            .all(|p| p.params().iter().all(|x| x.abs() < 2.0)),
        "attacker had no influence"
    );
}

#[test]
fn a_flood_of_announcements_is_rate_limited_without_hurting_others() {
    let (k, mut peer) = setup();
    let mut accepted = 0;
    let mut limited = 0;
    // One member announces 200 rounds within a second.
    for round in 1..=200u64 {
        let (v, _) = version(&k[1], round, 0.5);
        let at = Duration::from_millis(round * 5);
        match peer.handle_message(at, k[1].id(), &announce(&v)) {
            Verdict::Accept => accepted += 1,
            Verdict::Reject(r) if r.label() == "rate_limited" => limited += 1,
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert!((32..=40).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + limited, 200);
    // Another member is unaffected, and the flooder gets a fresh allowance in time.
    let (v, _) = version(&k[2], 1, 0.5);
    assert_eq!(
        peer.handle_message(Duration::from_secs(1), k[2].id(), &announce(&v)),
        Verdict::Accept
    );
    let (v, _) = version(&k[1], 500, 0.5);
    assert_eq!(
        peer.handle_message(Duration::from_secs(60), k[1].id(), &announce(&v)),
        Verdict::Accept
    );
}

#[test]
fn one_member_claiming_a_far_round_cannot_drag_the_others_there() {
    // Round 1,000, or round 11: a "final" version while the others are at round 2.
    for claimed in [1000, 11] {
        far_round_claim(claimed);
    }
}

fn far_round_claim(claimed: u64) {
    let k = keys(4);
    let mut peer = trained_first_round(
        &k,
        Config {
            fanout: 3,
            max_rounds: Some(10),
            ..cfg()
        },
    );
    // Two honest members are at round 2; the third claims a far round.
    let mut payloads = BTreeMap::new();
    for (key, round) in [(&k[1], 2), (&k[2], 2), (&k[3], claimed)] {
        let (v, bytes) = version(key, round, 1.0);
        payloads.insert(v.id(), bytes);
        assert_eq!(
            peer.handle_message(T, key.id(), &announce(&v)),
            Verdict::Accept
        );
    }
    let pulls: Vec<_> = std::iter::from_fn(|| peer.poll_action())
        .filter_map(|a| match a {
            Action::Fetch { from, id } => Some((from, id)),
            _ => None,
        })
        .collect();
    assert_eq!(pulls.len(), 3);
    for (from, id) in pulls {
        peer.handle_payload(T, from, id, payloads.get(&id).cloned());
    }
    assert!(!peer.is_finished(), "dragged past max_rounds");
    assert_eq!(peer.round(), 2, "follows the honest majority's round");
}

/// Found by the `signed_envelope` fuzz target (`fuzz/README.md`), input minimized by hand: an
/// envelope "signed" by the identity point (a public key of small order that no one holds the
/// secret of) with `R` the identity and `s = 0`. The strict check refused it, but a batch check
/// accepted it as a verified version, in a batch of copies of itself or next to honest envelopes.
#[test]
fn a_small_order_signer_is_refused_alone_and_in_a_batch() {
    let identity_point: [u8; 32] = std::array::from_fn(|i| u8::from(i == 0));
    let mut input = vec![105]; // body length
    input.extend([0; 105]); // body: a `Version` whose every field is zero or empty
    input.extend(identity_point); // signer
    input.push(64); // signature length
    input.extend(identity_point); // R
    input.extend([0; 32]); // s
    let forged: Signed<Version> = wire::decode(&input).expect("decodes");
    let signer = MemberId(identity_point);
    assert_eq!(forged.signer(), signer);
    let (honest, _) = version(&key(1), 1, 1.0);
    let results = identity::verify_batch(vec![honest.signed().clone(), forged.clone()]);
    assert_eq!(results[0], Ok(honest));
    assert!(
        results[1].is_err(),
        "a made-up signature verified in a batch"
    );
    assert_eq!(results[1], Err(identity::Error::InvalidKey(signer)));
    for result in identity::verify_batch(vec![forged.clone(), forged.clone()]) {
        assert_eq!(result, Err(identity::Error::InvalidKey(signer)));
    }
    assert_eq!(forged.verify(), Err(identity::Error::InvalidKey(signer)));
}

/// The simulator inspects a broadcast once and hands each receiver the result
/// (`Peer::handle_inbound`); a node hands the bytes (`Peer::handle_message`). Over honest,
/// replayed, equivocating, forged, outsider, misrouted and garbage messages both paths give the
/// same verdicts and the same actions.
#[test]
fn inspected_gossip_is_handled_exactly_like_its_bytes() {
    use medmesh_protocol::peer::Inbound;
    let (k, mut by_bytes) = setup();
    let (_, mut by_inbound) = setup();
    let outsider = key(200);
    let (v1, _) = version(&k[1], 1, 1.0);
    let (v2, _) = version(&k[2], 1, 2.0);
    let (twin, _) = version(&k[2], 1, 3.0);
    let (stranger, _) = version(&outsider, 1, 1.0);
    let mut forged = announce(&version(&k[3], 1, 1.0).0);
    let last = forged.len() - 1;
    forged[last] ^= 0x40;
    let messages: Vec<Vec<u8>> = vec![
        announce(&v1),
        announce(&v1),
        announce(&v2),
        announce(&twin),
        announce(&stranger),
        forged,
        Message::Request(v1.id()).to_bytes(),
        vec![0xff; 40],
        Vec::new(),
    ];
    let mut seen = Vec::new();
    for (i, bytes) in messages.iter().enumerate() {
        let at = T * u32::try_from(i + 1).expect("small");
        let a = by_bytes.handle_message(at, k[1].id(), bytes);
        let b = by_inbound.handle_inbound(at, k[1].id(), Inbound::inspect(bytes));
        assert_eq!(a, b, "message {i}");
        let actions =
            |peer: &mut Peer| std::iter::from_fn(|| peer.poll_action()).collect::<Vec<_>>();
        assert_eq!(
            actions(&mut by_bytes),
            actions(&mut by_inbound),
            "message {i}"
        );
        seen.push(match a {
            Verdict::Accept => "accept",
            Verdict::Ignore(_) => "ignore",
            Verdict::Reject(r) => r.label(),
        });
    }
    assert_eq!(
        seen,
        [
            "accept",
            "ignore",
            "accept",
            "equivocation",
            "not_member",
            "bad_signature",
            "wrong_channel",
            "malformed",
            "malformed"
        ]
    );
}

/// Six peers merging with a trimmed mean, one of which sends `50 − 10·x` every round. Returns
/// the honest peers' final models, the `(peer, author)` pairs flagged as outliers, and how many
/// messages honest peers refused because their author was flagged.
fn run_with_an_attacker(
    outliers: Option<Outliers>,
) -> (Vec<Vec<f32>>, Vec<(usize, MemberId)>, usize) {
    let n = 6;
    let attacker = 5;
    let k = keys(n);
    let init = inits(n, 16, 7);
    let configs = (0..n)
        .map(|i| Config {
            experiment: "outliers".into(),
            rule: Rule::TrimmedMean { trim: 1 },
            fanout: 4,
            max_rounds: Some(25),
            seed: i as u64,
            round_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(2),
            outliers,
            // Plain averaging: these tests pin down the merge itself.
            outer: None,
            ..Config::default()
        })
        .collect();
    let mut net = Net::new(&k, configs, init, &[20; 6]);
    net.attackers = vec![attacker];
    net.run(Duration::from_secs(3600));
    let honest: Vec<Vec<f32>> = (0..n)
        .filter(|i| *i != attacker)
        .map(|i| {
            assert!(net.peers[i].is_finished(), "peer {i} finished");
            net.peers[i].params().to_vec()
        })
        .collect();
    let flagged = net
        .events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::Flagged {
                author,
                reason: Reason::Outlier,
            } => Some((*i, *author)),
            _ => None,
        })
        .collect();
    let refused = net
        .events
        .iter()
        .filter(|(i, e)| {
            *i != attacker
                && matches!(
                    e,
                    Event::Rejected {
                        reason: Reason::Flagged,
                        ..
                    }
                )
        })
        .count();
    (honest, flagged, refused)
}

#[test]
fn a_member_whose_versions_stay_outliers_is_flagged_by_every_honest_peer() {
    let attacker = keys(6)[5].id();
    let (honest, flagged, refused) = run_with_an_attacker(Some(Outliers::default()));
    let mut flaggers: Vec<usize> = flagged
        .iter()
        .map(|(i, author)| {
            assert_eq!(*author, attacker, "only the attacker is flagged");
            *i
        })
        .collect();
    flaggers.sort_unstable();
    flaggers.dedup();
    assert_eq!(flaggers, [0, 1, 2, 3, 4], "every honest peer flags it once");
    // Excluded, it no longer drags the honest peers: they agree, inside the honest range.
    let spread = common::spread(&honest);
    assert!(spread < 1e-3, "honest spread {spread}");
    assert!(honest.iter().flatten().all(|x| x.abs() < 2.0), "{honest:?}");

    // Once flagged, what it sends is refused as such.
    assert!(refused > 0, "later announcements refused as flagged");

    // Without the policy it keeps being merged (the trimmed mean alone bounds each round; on
    // real training its bias adds up: simulations/tests/heart_disease_byzantine.rs).
    let (_, none, refused) = run_with_an_attacker(None);
    assert!(none.is_empty());
    assert_eq!(refused, 0);
}

#[test]
fn outlier_settings_are_checked() {
    let with = |factor: f32, rounds: u32| Config {
        outliers: Some(Outliers { factor, rounds }),
        // Plain averaging: these tests pin down the merge itself.
        outer: None,
        ..Config::default()
    };
    assert!(with(4.0, 3).check().is_ok());
    for (factor, rounds) in [
        (1.0, 3),
        (0.5, 3),
        (f32::NAN, 3),
        (f32::INFINITY, 3),
        (4.0, 0),
    ] {
        assert!(with(factor, rounds).check().is_err(), "{factor} {rounds}");
    }
}

/// Gossip does not keep order: in the last round a peer may hear an author's final version
/// (its merge of that round) before the author's version of the round. It waits for the latter,
/// so that it merges what everyone else merges, instead of mixing the final in.
#[test]
fn in_the_last_round_a_final_heard_first_is_not_merged_in_place_of_the_round_version() {
    let k = keys(3);
    let mut peer = trained_first_round(
        &k,
        Config {
            max_rounds: Some(1),
            ..cfg()
        },
    );
    while peer.poll_action().is_some() {}
    // k[1]'s final (round 2) arrives first: accepted, not pulled.
    let (final_version, _) = version(&k[1], 2, 5.0);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&final_version)),
        Verdict::Accept
    );
    assert!(
        fetches(&mut peer).is_empty(),
        "pulled the final in the last round"
    );
    // Its round-1 version, late, is accepted (not ignored as stale) and pulled.
    let (round_one, bytes_one) = version(&k[1], 1, 1.0);
    assert_eq!(
        peer.handle_message(T, k[1].id(), &announce(&round_one)),
        Verdict::Accept
    );
    assert_eq!(fetches(&mut peer), [round_one.id()]);
    let (other, bytes_other) = version(&k[2], 1, 2.0);
    assert_eq!(
        peer.handle_message(T, k[2].id(), &announce(&other)),
        Verdict::Accept
    );
    assert_eq!(fetches(&mut peer), [other.id()]);
    peer.handle_payload(T, k[1].id(), round_one.id(), Some(bytes_one));
    peer.handle_payload(T, k[2].id(), other.id(), Some(bytes_other));
    // The merge of the three round-1 versions (equal weights): (0 + 1 + 2) / 3.
    assert!(peer.is_finished());
    assert_eq!(peer.params(), &[1.0; DIM]);
}

/// A pull that fails (a connection closed under it) is asked once more in the same round, so
/// that the peer still merges what the others merge; a second failure gives the author up.
#[test]
fn a_failed_pull_is_asked_once_more_in_the_round() {
    let k = keys(3);
    let mut peer = trained_first_round(
        &k,
        Config {
            max_rounds: Some(1),
            ..cfg()
        },
    );
    while peer.poll_action().is_some() {}
    let (one, bytes_one) = version(&k[1], 1, 1.0);
    let (two, bytes_two) = version(&k[2], 1, 2.0);
    peer.handle_message(T, k[1].id(), &announce(&one));
    peer.handle_message(T, k[2].id(), &announce(&two));
    let mut asked = fetches(&mut peer);
    asked.sort();
    let mut expected = vec![one.id(), two.id()];
    expected.sort();
    assert_eq!(asked, expected);
    // k[1]'s pull fails: asked again; it fails again: given up.
    peer.handle_payload(T, k[1].id(), one.id(), None);
    assert_eq!(fetches(&mut peer), [one.id()], "not asked again");
    peer.handle_payload(T, k[2].id(), two.id(), Some(bytes_two));
    peer.handle_payload(T, k[1].id(), one.id(), Some(bytes_one));
    // The round merged all three: (0 + 1 + 2) / 3.
    assert!(peer.is_finished());
    assert_eq!(peer.params(), &[1.0; DIM]);
    // Twice failed is given up (on a fresh peer).
    let mut peer = trained_first_round(
        &k,
        Config {
            max_rounds: Some(1),
            ..cfg()
        },
    );
    while peer.poll_action().is_some() {}
    peer.handle_message(T, k[1].id(), &announce(&one));
    let _ = fetches(&mut peer);
    peer.handle_payload(T, k[1].id(), one.id(), None);
    assert_eq!(fetches(&mut peer), [one.id()]);
    peer.handle_payload(T, k[1].id(), one.id(), None);
    assert!(fetches(&mut peer).is_empty(), "asked a third time");
}
