//! Time per local training step: the Fed-Heart-Disease logistic regression (FLamby's batch of 4)
//! and a ~1M-parameter MLP (batch 32), each next to an in-run baseline of one bare libtorch
//! forward+backward of the same model, so the ratio shows what the learner adds (batch indexing,
//! optimizer, bookkeeping) over libtorch itself.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use medmesh_learning::data::{Dataset, Table};
use medmesh_learning::learner::{Learner, ModelSpec, TrainConfig};
use medmesh_trainer::learner::TchLearner;
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

fn heart() -> Table {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    Dataset::load(&schema)
        .expect("heart-disease data")
        .pooled_train()
}

fn synthetic(rows: usize, cols: usize) -> Table {
    Table {
        x: (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect(),
        rows,
        cols,
        y: (0..rows).map(|i| (i % 2) as f32).collect(),
        time: vec![],
        event: vec![],
    }
}

/// One bare libtorch step of a linear stack: forward, BCE, backward (no optimizer).
fn bare_step(seq: &nn::Sequential, x: &Tensor, y: &Tensor) {
    let loss = seq
        .forward(x)
        .reshape([-1])
        .binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean);
    loss.backward();
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(1);
    let mut group = c.benchmark_group("local_step");

    let data = heart();
    let mut learner = TchLearner::new(
        ModelSpec::Logistic { inputs: 13 },
        TrainConfig::default(),
        1,
        &data,
    )
    .expect("learner");
    group.bench_function("heart_logistic_batch4/learner", |b| {
        b.iter(|| black_box(learner.train(1).expect("step")))
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let seq = nn::seq().add(nn::linear(vs.root() / "l", 13, 1, Default::default()));
    let x = Tensor::randn([4, 13], (Kind::Float, Device::Cpu));
    let y = Tensor::ones([4], (Kind::Float, Device::Cpu));
    group.bench_function("heart_logistic_batch4/bare_libtorch", |b| {
        b.iter(|| bare_step(&seq, &x, &y))
    });

    // 1000 -> 1000 -> 1: 1,002,001 parameters.
    let data = synthetic(512, 1000);
    let spec = ModelSpec::Mlp {
        inputs: 1000,
        hidden: vec![1000],
    };
    let config = TrainConfig {
        batch_size: 32,
        ..TrainConfig::default()
    };
    let mut learner = TchLearner::new(spec, config, 1, &data).expect("learner");
    assert_eq!(learner.dim(), 1_002_001);
    group.bench_function("mlp_1m_batch32/learner", |b| {
        b.iter(|| black_box(learner.train(1).expect("step")))
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let seq = nn::seq()
        .add(nn::linear(vs.root() / "a", 1000, 1000, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "b", 1000, 1, Default::default()));
    let x = Tensor::randn([32, 1000], (Kind::Float, Device::Cpu));
    let y = Tensor::ones([32], (Kind::Float, Device::Cpu));
    group.bench_function("mlp_1m_batch32/bare_libtorch", |b| {
        b.iter(|| bare_step(&seq, &x, &y))
    });
    // Moving the model in and out of the flat vector the protocol sees, once per round.
    let params = learner.params();
    group.bench_function("mlp_1m/flatten", |b| b.iter(|| black_box(learner.params())));
    group.bench_function("mlp_1m/load", |b| {
        b.iter(|| learner.load(black_box(&params)).expect("load"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
