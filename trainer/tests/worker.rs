//! The peer's training worker end to end: `medmesh_node`'s client side (the trainer thread, the
//! evaluator, a bare [`Worker`]) against the real `medmesh-train` binary of this crate.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use medmesh_learning::data::Table;
use medmesh_learning::frame::Setup;
use medmesh_learning::learner::{Learner, ModelSpec, Optimizer, TrainConfig};
use medmesh_learning::privacy::{Accountant, AccountantState, DpConfig};
use medmesh_node::trainer::{Job, Trained, Trainer};
use medmesh_node::worker::{Evaluator, Worker};
use medmesh_trainer::learner::TchLearner;

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_medmesh-train"))
}

/// Two noisy classes on two features.
fn table(rows: usize) -> Table {
    let mut x = Vec::with_capacity(rows * 2);
    let mut y = Vec::with_capacity(rows);
    for i in 0..rows {
        let label = (i % 2) as f32;
        let sign = if label > 0.5 { 1.0 } else { -1.0 };
        let wobble = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
        x.push(sign * 0.8 + wobble);
        x.push(sign * 0.3 - wobble * 0.5);
        y.push(label);
    }
    Table {
        x,
        rows,
        cols: 2,
        y,
        time: vec![],
        event: vec![],
    }
}

fn setup(rows: usize) -> Setup {
    Setup {
        spec: ModelSpec::Logistic { inputs: 2 },
        training: TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            lr: 0.1,
            ..TrainConfig::default()
        },
        init_seed: 3,
        data: table(rows),
    }
}

/// The learner of `setup`, built in this process.
fn in_process(setup: &Setup) -> TchLearner {
    TchLearner::new(
        setup.spec.clone(),
        setup.training.clone(),
        setup.init_seed,
        &setup.data,
    )
    .expect("builds")
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_trainer_thread_trains_in_the_worker_and_answers_in_order() {
    let mut trainer = Trainer::spawn("test", program(), setup(20), None).expect("starts");
    assert_eq!(
        (trainer.dim, trainer.samples, trainer.init.len()),
        (3, 20, 3)
    );
    let mut params = trainer.init.clone();
    for round in 1..=3 {
        trainer
            .submit_blocking(Job {
                round,
                params: params.clone(),
                steps: 5,
            })
            .expect("queued");
        let done = trainer.next_blocking().expect("answer");
        assert_eq!(done.round, round);
        let trained = done.result.expect("trained");
        assert_eq!(trained.params.len(), 3);
        assert_ne!(trained.params, params, "training moved the model");
        assert!(trained.metrics["loss"].is_finite());
        assert_eq!(trained.privacy, None, "no DP, no ledger");
        params = trained.params;
    }
    // A bad job is an error result, not a dead worker.
    trainer
        .submit_blocking(Job {
            round: 4,
            params: vec![0.0; 2],
            steps: 1,
        })
        .expect("queued");
    let err = trainer
        .next_blocking()
        .expect("answer")
        .result
        .expect_err("wrong length");
    assert!(
        err.to_string().contains("2 values, the model has 3"),
        "{err}"
    );
    trainer
        .submit_blocking(Job {
            round: 5,
            params,
            steps: 1,
        })
        .expect("queued");
    assert!(trainer.next_blocking().expect("answer").result.is_ok());
}

#[test]
fn the_worker_trains_and_predicts_bit_exactly_as_the_learner_in_process() {
    let setup = setup(40);
    let mut local = in_process(&setup);
    let mut worker = Worker::start_program(program()).expect("starts");
    let built = worker.build(&setup).expect("builds");
    assert_eq!(bits(&built.init), bits(&local.params()));
    assert_eq!(built.layout, local.layout());
    assert_eq!((built.dim, built.samples), (3, 40));

    let (remote, metrics) = worker.train(&built.init, 200).expect("trains");
    let local_metrics = local.train(200).expect("trains");
    assert_eq!(bits(&remote), bits(&local.params()));
    assert_eq!(metrics, local_metrics);

    let test = table(15);
    let predicted = worker.predict(&remote, &test).expect("predicts");
    assert_eq!(
        bits(&predicted),
        bits(&local.predict(&test).expect("predicts"))
    );
    let accuracy = medmesh_learning::metrics::binary(&predicted, &test.y, 0.5)
        .expect("scores")
        .accuracy;
    assert!(accuracy >= 0.9, "accuracy {accuracy}");
}

#[test]
fn refusals_are_errors_and_the_worker_carries_on() {
    let mut worker = Worker::start_program(program()).expect("starts");
    // Before a build, training is refused.
    let err = worker.train(&[0.0; 3], 1).expect_err("no learner");
    assert!(err.to_string().contains("must build one"), "{err}");
    // A spec that does not fit the data.
    let mut bad = setup(10);
    bad.spec = ModelSpec::Logistic { inputs: 5 };
    let err = worker.build(&bad).expect_err("does not fit");
    assert!(err.to_string().contains("5 inputs"), "{err}");
    assert!(worker.is_alive());
    // Predicting rows of another width.
    let built = worker.build(&setup(10)).expect("builds");
    let mut wide = table(4);
    wide.cols = 1;
    wide.x.truncate(4);
    let err = worker.predict(&built.init, &wide).expect_err("wrong width");
    assert!(err.to_string().contains("features"), "{err}");
    assert!(worker.is_alive());
    assert_eq!(
        worker
            .predict(&built.init, &table(4))
            .expect("predicts")
            .len(),
        4
    );
}

#[test]
fn a_killed_worker_is_reported_and_the_trainer_replaces_it() {
    let mut worker = Worker::start_program(program()).expect("starts");
    worker.build(&setup(10)).expect("builds");
    let status = Command::new("kill")
        .args(["-9", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let err = worker.train(&[0.0; 3], 1).expect_err("dead");
    let text = err.to_string();
    assert!(text.contains("exited") && text.contains("signal"), "{text}");
    assert!(!worker.is_alive());

    // The trainer holds no worker until its first job, and replaces one killed between jobs.
    let mut trainer = Trainer::spawn("killed", program(), setup(10), None).expect("starts");
    assert_eq!(trainer.worker_pid(), None, "no worker before the first job");
    let round = |trainer: &mut Trainer, round: u64| {
        trainer
            .submit_blocking(Job {
                round,
                params: trainer.init.clone(),
                steps: 3,
            })
            .expect("queued");
        trainer
            .next_blocking()
            .expect("answer")
            .result
            .expect("trained")
            .params
    };
    let first = round(&mut trainer, 1);
    let pid = trainer.worker_pid().expect("a worker runs");
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let again = round(&mut trainer, 2);
    let replaced = trainer.worker_pid().expect("a worker runs");
    assert_ne!(replaced, pid);
    // The new worker rebuilt the same learner: the same job gives the same parameters.
    assert_eq!(bits(&again), bits(&first));
    drop(trainer);
    assert!(
        !Path::new(&format!("/proc/{replaced}")).exists(),
        "the worker ends with the trainer"
    );
}

#[test]
fn a_trainer_that_cannot_build_is_an_error() {
    let mut bad = setup(10);
    bad.spec = ModelSpec::Logistic { inputs: 5 };
    let err = Trainer::spawn("bad", program(), bad, None).expect_err("does not fit");
    assert!(err.to_string().contains("5 inputs"), "{err}");
}

#[test]
fn the_evaluator_starts_one_worker_and_reuses_it() {
    // `Evaluator` and `admin::model_layout` find `medmesh-train` next to this test's folder.
    let setup = setup(30);
    let mut local = in_process(&setup);
    local.train(30).expect("trains");
    let params = local.params();
    let mut evaluator = Evaluator::default();
    for rows in [7, 12] {
        let test = table(rows);
        let got = evaluator
            .predict(
                &setup.spec,
                &setup.training,
                setup.init_seed,
                &params,
                &test,
            )
            .expect("predicts");
        assert_eq!(bits(&got), bits(&local.predict(&test).expect("predicts")));
    }
    evaluator.release_idle(std::time::Duration::from_secs(3600));
    assert!(evaluator.is_running(), "used just now");
    evaluator.release_idle(std::time::Duration::ZERO);
    assert!(!evaluator.is_running(), "released");
    let err = evaluator
        .predict(
            &setup.spec,
            &setup.training,
            setup.init_seed,
            &[0.0; 2],
            &table(3),
        )
        .expect_err("wrong length");
    assert!(err.to_string().contains("2 values"), "{err}");
}

#[test]
fn the_layout_arithmetic_matches_what_the_worker_builds() {
    let specs = [
        ModelSpec::Logistic { inputs: 13 },
        ModelSpec::Cox { inputs: 5 },
        ModelSpec::Mlp {
            inputs: 4,
            hidden: vec![3],
        },
        // Eleven layers: `layer10` sorts before `layer2`, as the trainer flattens them.
        ModelSpec::Mlp {
            inputs: 3,
            hidden: vec![2; 10],
        },
    ];
    let mut worker = Worker::start_program(program()).expect("starts");
    for spec in specs {
        let inputs = match &spec {
            ModelSpec::Logistic { inputs }
            | ModelSpec::Cox { inputs }
            | ModelSpec::Mlp { inputs, .. } => *inputs as usize,
            ModelSpec::TorchScript { .. } => unreachable!("built-in specs only"),
        };
        let data = Table {
            x: vec![0.0; inputs],
            rows: 1,
            cols: inputs,
            y: vec![0.0],
            time: vec![1.0],
            event: vec![1.0],
        };
        let built = worker
            .build(&Setup {
                spec: spec.clone(),
                training: TrainConfig::default(),
                init_seed: 0,
                data,
            })
            .expect("builds");
        let computed = spec.layout().expect("a built-in layout");
        assert_eq!(built.layout, computed, "{spec:?}");
        let params: i64 = computed
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        assert_eq!(params as usize, built.dim, "{spec:?}");
    }
}

#[test]
fn garbage_on_the_workers_input_is_an_error_exit_not_a_panic() {
    let mut child = Command::new(program())
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut input = child.stdin.take().expect("stdin");
    let mut garbage = 9u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"not bincode");
    input.write_all(&garbage).expect("writes");
    drop(input);
    let out = child.wait_with_output().expect("exits");
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "an error exit, not a signal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("medmesh-train worker"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn dropping_the_trainer_kills_a_worker_in_the_middle_of_a_round() {
    let trainer = Trainer::spawn("stopping", program(), setup(10), None).expect("starts");
    // A round that would take tens of minutes.
    trainer
        .submit_blocking(Job {
            round: 1,
            params: trainer.init.clone(),
            steps: 50_000_000,
        })
        .expect("queued");
    let pid = loop {
        if let Some(pid) = trainer.worker_pid() {
            break pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(trainer);
        let _ = dropped_tx.send(());
    });
    // A liveness bound, not a speed one: without the kill the drop would wait for the round.
    dropped_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the drop returns without waiting for the round");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the worker was killed and reaped"
    );
}

/// [`setup`] under DP-SGD: 40 rows at the default batch of 4, a sampling rate of 0.1.
fn dp_setup(dp: DpConfig) -> Setup {
    let mut setup = setup(40);
    setup.training.dp = Some(dp);
    setup
}

/// ε after `steps` DP-SGD steps at σ = 1, q = 0.1, δ = 10⁻⁵ (the setting of [`dp_setup`]).
fn epsilon_after(steps: u64) -> f64 {
    let mut accountant = Accountant::new();
    accountant.step(1.0, 0.1, steps).expect("steps");
    accountant.spent(1e-5).expect("spent").epsilon
}

/// One round of `steps` steps from the initial parameters.
fn train_round(trainer: &mut Trainer, round: u64, steps: usize) -> Result<Trained, String> {
    trainer
        .submit_blocking(Job {
            round,
            params: trainer.init.clone(),
            steps,
        })
        .expect("queued");
    let done = trainer.next_blocking().expect("answer");
    assert_eq!(done.round, round);
    done.result.map_err(|e| e.to_string())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn the_privacy_ledger_survives_a_replaced_worker_and_a_restart() {
    let setup = dp_setup(DpConfig::default());
    let mut trainer = Trainer::spawn("dp", program(), setup.clone(), None).expect("starts");
    let first = train_round(&mut trainer, 1, 5).expect("trains");
    assert_eq!(
        first.metrics.keys().collect::<Vec<_>>(),
        ["epsilon"],
        "under DP only epsilon is published"
    );
    assert!(close(first.metrics["epsilon"], epsilon_after(5)));
    let second = train_round(&mut trainer, 2, 5).expect("trains");
    assert!(close(second.metrics["epsilon"], epsilon_after(10)));

    // A worker killed between rounds is replaced, and its successor continues the ledger.
    let pid = trainer.worker_pid().expect("a worker runs");
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let third = train_round(&mut trainer, 3, 5).expect("trains");
    assert_ne!(trainer.worker_pid(), Some(pid), "replaced");
    assert!(
        close(third.metrics["epsilon"], epsilon_after(15)),
        "{third:?}"
    );
    let saved: AccountantState = third.privacy.expect("a ledger under DP");
    drop(trainer);

    // The node restarts with the ledger it stored: ε goes on from where it was.
    let mut restarted =
        Trainer::spawn("dp-again", program(), setup.clone(), Some(saved)).expect("starts");
    let fourth = train_round(&mut restarted, 4, 5).expect("trains");
    assert!(fourth.metrics["epsilon"] >= third.metrics["epsilon"]);
    assert!(
        close(fourth.metrics["epsilon"], epsilon_after(20)),
        "{fourth:?}"
    );
    // Without it, ε would have started again from zero.
    let mut forgetful = Trainer::spawn("dp-fresh", program(), setup, None).expect("starts");
    let reset = train_round(&mut forgetful, 4, 5).expect("trains");
    assert!(close(reset.metrics["epsilon"], epsilon_after(5)));
}

#[test]
fn a_spent_budget_stops_training_through_the_worker_with_its_figures() {
    // Room for one round of 5 steps, not for two.
    let budget = 0.5 * (epsilon_after(5) + epsilon_after(10));
    let setup = dp_setup(DpConfig {
        max_epsilon: Some(budget),
        ..DpConfig::default()
    });
    let mut trainer = Trainer::spawn("budget", program(), setup.clone(), None).expect("starts");
    let first = train_round(&mut trainer, 1, 5).expect("within the budget");
    let err = train_round(&mut trainer, 2, 5).expect_err("past the budget");
    assert!(
        err.contains("privacy budget exhausted")
            && err.contains(&format!("max_epsilon is {budget}"))
            && err.contains(&format!("epsilon {:.4} is spent", first.metrics["epsilon"])),
        "{err}"
    );
    assert!(
        trainer.worker_pid().is_some(),
        "a refusal, not a dead worker"
    );
    // Nor does a restart from the stored ledger make room.
    let mut restarted =
        Trainer::spawn("budget-again", program(), setup, first.privacy).expect("starts");
    let err = train_round(&mut restarted, 2, 5).expect_err("still past the budget");
    assert!(err.contains("privacy budget exhausted"), "{err}");
}
