//! What the process boundary costs per round: the peer hands the worker a parameter vector and
//! gets the trained one back (`Worker::train` with 0 steps: encode, pipe, decode, load into the
//! model, flatten, and the same way back), for 1M and 10M parameters (4 and 40 MB), next to an
//! in-run baseline of the same in-process learner's load + flatten and a memcpy of the bytes.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use medmesh_learning::data::Table;
use medmesh_learning::frame::Setup;
use medmesh_learning::learner::{Learner, ModelSpec, TrainConfig};
use medmesh_node::worker::Worker;
use medmesh_trainer::learner::TchLearner;

fn table(cols: usize) -> Table {
    Table {
        x: (0..2 * cols).map(|i| (i % 7) as f32 - 3.0).collect(),
        rows: 2,
        cols,
        y: vec![0.0, 1.0],
        time: vec![],
        event: vec![],
    }
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(1);
    let program = Path::new(env!("CARGO_BIN_EXE_medmesh-train"));
    let mut group = c.benchmark_group("worker_round_trip");
    for (name, inputs) in [("1M", 1_000_000i64), ("10M", 10_000_000)] {
        // A logistic model of `inputs` features has inputs + 1 parameters.
        let setup = Setup {
            spec: ModelSpec::Logistic { inputs },
            training: TrainConfig::default(),
            init_seed: 1,
            data: table(inputs as usize),
        };
        let dim = inputs as usize + 1;
        group.throughput(Throughput::Bytes(4 * dim as u64));
        if name == "10M" {
            group.sample_size(10);
        }

        let source: Vec<f32> = (0..dim).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let mut target = vec![0f32; dim];
        group.bench_function(BenchmarkId::new(name, "memcpy"), |b| {
            b.iter(|| target.copy_from_slice(black_box(&source)))
        });

        let mut local = TchLearner::new(setup.spec.clone(), setup.training.clone(), 1, &setup.data)
            .expect("learner");
        group.bench_function(BenchmarkId::new(name, "in_process"), |b| {
            b.iter(|| {
                local.load(black_box(&source)).expect("loads");
                black_box(local.params())
            })
        });

        let mut worker = Worker::start_program(program).expect("worker");
        worker.build(&setup).expect("builds");
        group.bench_function(BenchmarkId::new(name, "worker"), |b| {
            b.iter(|| black_box(worker.train(black_box(&source), 0).expect("round trip")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
