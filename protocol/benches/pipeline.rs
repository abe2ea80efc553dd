//! The protocol's hot paths, each next to an in-run baseline over the same bytes (issue 7):
//!
//! - `update_1M`, `update_10M`: a model version's path for 1M and 10M parameters. The author
//!   encodes its parameters into a reused buffer (which hashes them) and signs the `Version`; the
//!   receiver decodes the announcement, verifies its signature, checks and decodes the payload
//!   into a reused vector (hash + finiteness scan) and averages it with its own parameters into a
//!   reused output. Baseline: BLAKE3 alone over the payload bytes. Each component is measured on
//!   its own too, so a missed goal shows where the time goes.
//! - `aggregate_8x1M`: every rule over the own vector and 8 neighbours of 1M floats. Baseline: a
//!   memcpy of the same 9 × 4 MB, each input copied into one reused 4 MB buffer (the rules, too,
//!   read 36 MB and write 4 MB).
//! - `verify_64`: 64 signed announcements from 64 members, `verify_batch` against one by one.
//! - `wire_decode`: an announcement message and a 4 MiB payload message from bytes. Baseline: a
//!   memcpy of the message bytes.
//!
//! Function ids are `<case>/<what>`; `scripts/bench` pairs every figure with the baseline of its
//! case (`blake3`, `memcpy`, `one_by_one`) and prints the ratio.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use medmesh_protocol::aggregate::{self, Contribution, Rule, Scratch, Tau};
use medmesh_protocol::identity::{self, ContentId, Digest, Keypair, Signed};
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::wire::{self, Message};

/// Deterministic parameters: small finite values around `centre`, different for every `seed`
/// (splitmix64), as a trained model's weights would be.
fn params(n: usize, seed: u64, centre: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            centre + ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// A version as a peer announces it after merging with 8 neighbours.
fn version(author: &Keypair, payload: update::PayloadDescriptor) -> Version {
    Version {
        experiment: "heart-disease".into(),
        model: Digest([3; 32]),
        round: 42,
        author: author.id(),
        samples: 199,
        degree: 8,
        parents: (0..8u8).map(|i| ContentId([i; 32])).collect(),
        metrics: BTreeMap::from([("accuracy".to_string(), 0.76), ("loss".to_string(), 0.51)]),
        payload,
    }
}

fn announce(signed: &Signed<Version>) -> Vec<u8> {
    Message::Announce(signed.clone()).to_bytes()
}

fn update_pipeline(c: &mut Criterion, name: &str, n: usize) {
    let author = Keypair::from_seed([1; 32]);
    let neighbour = params(n, 1, 0.0);
    let own = params(n, 2, 0.01);
    let mut payload = Vec::new();
    let descriptor = update::encode_f32(&neighbour, &mut payload);
    let signed = author.sign(version(&author, descriptor));
    let announcement = announce(signed.signed());
    let template = version(&author, descriptor);

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(payload.len() as u64));
    if n > 1_000_000 {
        group.sample_size(10);
    }

    group.bench_function("blake3", |b| b.iter(|| blake3::hash(black_box(&payload))));
    group.bench_function("memcpy", |b| {
        let mut copy = vec![0u8; payload.len()];
        b.iter(|| copy.copy_from_slice(black_box(&payload)))
    });

    // Author: encode (copy + BLAKE3 of the payload) and sign the small version.
    let mut buffer = Vec::new();
    group.bench_function("author", |b| {
        b.iter(|| {
            let descriptor = update::encode_f32(black_box(&neighbour), &mut buffer);
            let mut v = template.clone();
            v.payload = descriptor;
            author.sign(v)
        })
    });
    group.bench_function("author/encode_f32", |b| {
        b.iter(|| update::encode_f32(black_box(&neighbour), &mut buffer))
    });
    // The small steps are counted per message, the rest per payload byte.
    group.throughput(Throughput::Elements(1));
    group.bench_function("author/sign_version", |b| {
        b.iter(|| author.sign(black_box(template.clone())))
    });
    group.throughput(Throughput::Bytes(payload.len() as u64));

    // Receiver: announcement from bytes, signature, rules, payload, merge with the own vector.
    let mut decoded = Vec::new();
    let mut out = vec![0.0f32; n];
    let mut scratch = Scratch::default();
    group.bench_function("receiver", |b| {
        b.iter(|| {
            let Ok(Message::Announce(envelope)) =
                Message::from_bytes(black_box(&announcement), wire::MAX_GOSSIP)
            else {
                panic!("announcement decodes")
            };
            let v = envelope.verify().expect("signature verifies");
            v.check(v.signer()).expect("version is valid");
            update::decode_payload(&v.payload, black_box(&payload), &mut decoded)
                .expect("payload decodes");
            let own = Contribution {
                params: &own,
                weight: 150.0,
                degree: 8,
            };
            let other = Contribution {
                params: &decoded,
                weight: v.samples as f64,
                degree: v.degree,
            };
            Rule::Mean
                .apply(own, &[other], &mut out, &mut scratch)
                .expect("merges")
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("receiver/verify_announcement", |b| {
        b.iter(|| {
            let Ok(Message::Announce(envelope)) =
                Message::from_bytes(black_box(&announcement), wire::MAX_GOSSIP)
            else {
                panic!("announcement decodes")
            };
            envelope.verify().expect("signature verifies")
        })
    });
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("receiver/decode_payload", |b| {
        b.iter(|| {
            update::decode_payload(&descriptor, black_box(&payload), &mut decoded)
                .expect("payload decodes")
        })
    });
    // What `Peer::handle_payload` does today: a fresh vector per payload, dropped after the merge.
    group.bench_function("receiver/decode_payload_fresh_vec", |b| {
        b.iter(|| {
            let mut fresh = Vec::new();
            update::decode_payload(&descriptor, black_box(&payload), &mut fresh)
                .expect("payload decodes");
            fresh
        })
    });
    group.bench_function("receiver/mean_of_2", |b| {
        let own = Contribution {
            params: &own,
            weight: 150.0,
            degree: 8,
        };
        let other = Contribution {
            params: &neighbour,
            weight: 199.0,
            degree: 8,
        };
        b.iter(|| {
            Rule::Mean
                .apply(own, &[other], &mut out, &mut scratch)
                .expect("merges")
        })
    });
    group.finish();
}

fn update_1m(c: &mut Criterion) {
    update_pipeline(c, "update_1M", 1_000_000);
}

fn update_10m(c: &mut Criterion) {
    update_pipeline(c, "update_10M", 10_000_000);
}

fn aggregation(c: &mut Criterion) {
    const N: usize = 1_000_000;
    const NEIGHBOURS: usize = 8;
    let own = params(N, 100, 0.0);
    // Neighbours at different distances, so a fixed radius clips some of them and not others.
    let neighbours: Vec<Vec<f32>> = (0..NEIGHBOURS)
        .map(|j| params(N, j as u64 + 1, 0.002 * j as f32))
        .collect();
    let others: Vec<Contribution<'_>> = neighbours
        .iter()
        .enumerate()
        .map(|(j, p)| Contribution {
            params: p,
            weight: 100.0 + 10.0 * j as f64,
            degree: 8,
        })
        .collect();
    let own_contribution = Contribution {
        params: &own,
        weight: 120.0,
        degree: 8,
    };
    let mut distances: Vec<f64> = neighbours
        .iter()
        .map(|p| aggregate::distance(&own, p))
        .collect();
    distances.sort_by(f64::total_cmp);
    let radius = distances[NEIGHBOURS / 2] as f32;

    let mut group = c.benchmark_group("aggregate_8x1M");
    let bytes = (NEIGHBOURS + 1) * N * 4;
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(20);
    // Every input byte read once, as the rules do, into one output-sized buffer.
    group.bench_function("memcpy", |b| {
        let mut copy = vec![0.0f32; N];
        b.iter(|| {
            for src in std::iter::once(&own).chain(&neighbours) {
                copy.copy_from_slice(black_box(src));
            }
            black_box(&copy);
        })
    });
    let rules = [
        ("mean", Rule::Mean),
        ("metropolis_hastings", Rule::MetropolisHastings),
        ("median", Rule::Median),
        ("trimmed_mean_2", Rule::TrimmedMean { trim: 2 }),
        (
            "clipped_gossip_fixed",
            Rule::ClippedGossip {
                tau: Tau::Fixed { radius },
            },
        ),
    ];
    let mut out = vec![0.0f32; N];
    let mut scratch = Scratch::default();
    for (name, rule) in &rules {
        group.bench_function(*name, |b| {
            b.iter(|| {
                rule.apply(own_contribution, black_box(&others), &mut out, &mut scratch)
                    .expect("merges")
            })
        });
    }
    group.finish();
}

fn verification(c: &mut Criterion) {
    const COUNT: usize = 64;
    let envelopes: Vec<Signed<Version>> = (0..COUNT)
        .map(|i| {
            let key = Keypair::from_seed([i as u8 + 1; 32]);
            let mut payload = Vec::new();
            let descriptor = update::encode_f32(&params(16, i as u64, 0.0), &mut payload);
            key.sign(version(&key, descriptor)).signed().clone()
        })
        .collect();

    let mut group = c.benchmark_group("verify_64");
    group.throughput(Throughput::Elements(COUNT as u64));
    group.bench_function("one_by_one", |b| {
        b.iter_batched(
            || envelopes.clone(),
            |batch| {
                batch
                    .into_iter()
                    .map(|e| e.verify().expect("verifies"))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("batch", |b| {
        b.iter_batched(
            || envelopes.clone(),
            identity::verify_batch,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn wire_decode(c: &mut Criterion) {
    let key = Keypair::from_seed([9; 32]);
    let mut payload = Vec::new();
    let descriptor = update::encode_f32(&params(1 << 20, 9, 0.0), &mut payload);
    let announcement = announce(key.sign(version(&key, descriptor)).signed());
    let response = Message::Payload {
        id: ContentId([5; 32]),
        data: Some(serde_bytes::ByteBuf::from(payload)),
    }
    .to_bytes();

    let mut group = c.benchmark_group("wire_decode");
    for (case, bytes, limit) in [
        ("announce", &announcement, wire::MAX_GOSSIP),
        ("payload_4MiB", &response, wire::MAX_PAYLOAD),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("{case}/message"), |b| {
            b.iter(|| Message::from_bytes(black_box(bytes), limit).expect("decodes"))
        });
        group.bench_function(format!("{case}/memcpy"), |b| {
            let mut copy = vec![0u8; bytes.len()];
            b.iter(|| copy.copy_from_slice(black_box(bytes)))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Short by default so `cargo bench` stays within minutes on 2 cores; command-line flags
    // (`scripts/bench` passes its own) override these.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = update_1m, update_10m, aggregation, verification, wire_decode
}
criterion_main!(benches);
