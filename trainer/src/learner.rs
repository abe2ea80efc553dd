//! Local training on a hospital's own records, with PyTorch through `tch`.
//!
//! [`TchLearner`] implements the node's [`Learner`] boundary for the built-in models (logistic
//! regression, MLP, linear Cox) and for any TorchScript module a researcher exports from PyTorch,
//! with the parameter order documented in [`medmesh_learning::learner`].
//!
//! **Determinism.** Initialization uses the spec's seed; batch order comes from a ChaCha
//! generator seeded from the training config, and libtorch runs on the number of threads the
//! config says (1 by default), so a run without DP is repeatable on one machine.
//!
//! **DP-SGD** (with `TrainConfig::dp`): each step samples every row independently (Poisson, rate
//! batch/rows), clips each per-sample gradient and adds Gaussian noise. The sampling and the noise
//! are what protect the patients, so they come from a ChaCha20 generator seeded by the operating
//! system, fresh for every learner: nobody can regenerate them from the config, and a restarted
//! learner does not repeat them. Only [`DpConfig::seeded_noise`] (simulator and tests; a node
//! refuses it) draws them from the config's seed instead. The learner's
//! [`medmesh_learning::privacy::Accountant`] counts every step; it continues from a stored
//! ledger ([`TchLearner::restore_privacy`], [`TchLearner::privacy_state`]) and refuses a round
//! that would take ε past `DpConfig::max_epsilon` before training any of it
//! ([`Error::Privacy`] with [`medmesh_learning::privacy::Error::Budget`]).
//!
//! **Published metrics.** [`Learner::train`]'s metrics are what the node signs into its versions
//! and shows on `/status`. Without DP: `loss`, the mean training loss of the round's batches.
//! Under DP-SGD: only `epsilon`, the ε spent so far at the config's δ over the hospital's whole
//! ledger; the loss of private batches is computed without noise, so it is not published.
//!
//! Training is CPU-bound and blocking: drivers call it from a dedicated thread or process (the
//! `medmesh-train` worker), never from an async runtime. Nothing here reads the network, and
//! training data never leaves this module except as parameters and aggregate metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use medmesh_learning::data::{Table, Task};
use medmesh_learning::learner::{Error, Learner, ModelSpec, Optimizer, TrainConfig};
use medmesh_learning::metrics;
use medmesh_learning::privacy::{self, Accountant, AccountantState, DpConfig};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use rand_distr::{Distribution, StandardNormal};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

/// libtorch's random generator and thread count are process-wide: model construction holds
/// this lock so concurrent learners do not interleave their seeded initializations.
static TORCH_GLOBALS: Mutex<()> = Mutex::new(());

/// A libtorch error as the node's learner error.
pub fn torch(e: tch::TchError) -> Error {
    Error::Torch(e.to_string())
}

enum Net {
    Builtin(nn::Sequential),
    Script(tch::TrainableCModule),
}

impl Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor, Error> {
        let out = match self {
            Net::Builtin(seq) => seq.forward(x),
            Net::Script(module) => module.forward_ts(&[x]).map_err(torch)?,
        };
        Ok(out.reshape([-1]))
    }
}

/// Training data as tensors.
struct Train {
    x: Tensor,
    y: Tensor,
    time: Tensor,
    event: Tensor,
    rows: usize,
}

/// A model trained with libtorch on CPU.
pub struct TchLearner {
    spec: ModelSpec,
    config: TrainConfig,
    vs: nn::VarStore,
    net: Net,
    optimizer: nn::Optimizer,
    /// Variables sorted by name: the flattening order.
    variables: Vec<(String, Tensor)>,
    dim: usize,
    train: Train,
    order: Vec<usize>,
    cursor: usize,
    /// Batch order (and DP-SGD's sampling and noise with `seeded_noise`), from the config's seed.
    rng: ChaCha8Rng,
    /// DP-SGD's sampling and noise, seeded by the operating system: `Some` under DP unless the
    /// config asks for seeded noise.
    private: Option<ChaCha20Rng>,
    accountant: Accountant,
}

impl std::fmt::Debug for TchLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TchLearner")
            .field("spec", &self.spec)
            .field("dim", &self.dim)
            .field("samples", &self.train.rows)
            .finish()
    }
}

fn tensor_2d(table: &Table) -> Result<Tensor, Error> {
    let rows = i64::try_from(table.rows).map_err(|e| Error::Data(e.to_string()))?;
    let cols = i64::try_from(table.cols).map_err(|e| Error::Data(e.to_string()))?;
    Ok(Tensor::from_slice(&table.x).reshape([rows, cols]))
}

impl TchLearner {
    /// A fresh model of `spec`, initialized from `init_seed`, training on `train`.
    pub fn new(
        spec: ModelSpec,
        config: TrainConfig,
        init_seed: u64,
        train: &Table,
    ) -> Result<Self, Error> {
        spec.check()?;
        config.check()?;
        let task = spec.task();
        if train.rows == 0 {
            return Err(Error::Data("no training rows".into()));
        }
        match task {
            Task::Binary if train.y.len() != train.rows => {
                return Err(Error::Data("a binary model needs a label per row".into()));
            }
            Task::Survival if train.time.len() != train.rows || train.event.len() != train.rows => {
                return Err(Error::Data(
                    "a survival model needs time and event per row".into(),
                ));
            }
            _ => {}
        }
        if task == Task::Survival && config.dp.is_some() {
            return Err(Error::Config(
                "DP-SGD needs a per-sample loss; the Cox partial likelihood is not one".into(),
            ));
        }
        let expected_inputs = match &spec {
            ModelSpec::Logistic { inputs }
            | ModelSpec::Cox { inputs }
            | ModelSpec::Mlp { inputs, .. } => Some(*inputs),
            ModelSpec::TorchScript { .. } => None,
        };
        if let Some(inputs) = expected_inputs
            && inputs as usize != train.cols
        {
            return Err(Error::Data(format!(
                "the model takes {inputs} inputs, the data has {} features",
                train.cols
            )));
        }

        let guard = TORCH_GLOBALS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::set_num_threads(config.threads);
        tch::manual_seed(init_seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&spec, &vs.root())?;
        drop(guard);
        config.init.check(&spec)?;
        if config.init.zeros_for(&spec) {
            tch::no_grad(|| {
                for (_, mut t) in vs.variables() {
                    let _ = t.zero_();
                }
            });
        }

        let optimizer = match config.optimizer {
            Optimizer::Adam => nn::Adam::default().build(&vs, config.lr).map_err(torch)?,
            Optimizer::Sgd { momentum } => nn::Sgd {
                momentum,
                ..Default::default()
            }
            .build(&vs, config.lr)
            .map_err(torch)?,
        };
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let dim = variables.iter().map(|(_, t)| t.numel()).sum();
        let rows = train.rows;
        let data = Train {
            x: tensor_2d(train)?,
            y: Tensor::from_slice(&train.y),
            time: Tensor::from_slice(&train.time),
            event: Tensor::from_slice(&train.event),
            rows,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut order: Vec<usize> = (0..rows).collect();
        order.shuffle(&mut rng);
        // Noise anyone could regenerate from the config could be subtracted again.
        let private = match config.dp {
            Some(dp) if !dp.seeded_noise => {
                Some(ChaCha20Rng::try_from_os_rng().map_err(|e| Error::Entropy(e.to_string()))?)
            }
            _ => None,
        };
        let learner = Self {
            spec,
            config,
            vs,
            net,
            optimizer,
            variables,
            dim,
            train: data,
            order,
            cursor: 0,
            rng,
            private,
            accountant: Accountant::new(),
        };
        // A forward pass now turns a TorchScript module that does not fit the data into an
        // error here rather than in the middle of a round.
        let probe = learner.train.x.narrow(0, 0, 1);
        let _ = learner.net.forward(&probe)?;
        Ok(learner)
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Variable names and shapes in flattening order.
    pub fn layout(&self) -> Vec<(String, Vec<i64>)> {
        self.variables
            .iter()
            .map(|(n, t)| (n.clone(), t.size()))
            .collect()
    }

    /// Predictions for every row of `table`: probabilities for a binary task, log-risk scores
    /// for survival.
    pub fn predict(&mut self, table: &Table) -> Result<Vec<f32>, Error> {
        if table.cols != self.train.x.size()[1] as usize {
            return Err(Error::Data(format!(
                "the model takes {} features, the table has {}",
                self.train.x.size()[1],
                table.cols
            )));
        }
        if table.rows == 0 {
            return Ok(Vec::new());
        }
        self.set_train(false);
        let x = tensor_2d(table)?;
        let out = tch::no_grad(|| self.net.forward(&x))?;
        let out = match self.spec.task() {
            Task::Binary => out.sigmoid(),
            Task::Survival => out,
        };
        let mut values = vec![0f32; table.rows];
        out.f_copy_data(&mut values, table.rows).map_err(torch)?;
        Ok(values)
    }

    /// The model's metrics on `table`, for its task: binary metrics at threshold 0.5, or the
    /// C-index of its risk scores.
    pub fn evaluate(&mut self, table: &Table) -> Result<metrics::Evaluation, Error> {
        let predictions = self.predict(table)?;
        Ok(metrics::Evaluation::of(
            self.spec.task(),
            &predictions,
            table,
        )?)
    }

    /// Harrell's C-index on a survival `table`.
    pub fn concordance(&mut self, table: &Table) -> Result<Option<f64>, Error> {
        let risk = self.predict(table)?;
        Ok(metrics::concordance_index(
            &risk,
            &table.time,
            &table.event,
        )?)
    }

    /// Trains whole epochs over the training rows (reshuffled each epoch, last batch partial),
    /// as PyTorch's `DataLoader(shuffle=True)` does. Returns the mean loss of the last epoch
    /// (for local use, e.g. the baselines: it is computed on the training rows, DP or not).
    pub fn train_epochs(&mut self, epochs: usize) -> Result<f64, Error> {
        let per_epoch = self.train.rows.div_ceil(self.config.batch_size);
        // Start at an epoch boundary.
        if self.cursor != 0 {
            self.cursor = self.train.rows;
        }
        let mut last = 0.0;
        for _ in 0..epochs {
            last = self.run(per_epoch)?;
        }
        Ok(last)
    }

    /// Privacy spent so far under DP-SGD, if enabled.
    pub fn privacy_spent(&self) -> Option<privacy::Spent> {
        let dp = self.config.dp?;
        self.accountant.spent(dp.delta).ok()
    }

    /// Continues from a stored privacy ledger (what the hospital spent before this learner),
    /// replacing this learner's own. A state that does not check is an error and changes
    /// nothing.
    pub fn restore_privacy(&mut self, state: &AccountantState) -> Result<(), Error> {
        self.accountant = Accountant::restore(state)?;
        Ok(())
    }

    /// The privacy ledger, to store; `None` for a learner without DP that was given none.
    pub fn privacy_state(&self) -> Option<AccountantState> {
        (self.config.dp.is_some() || !self.accountant.is_empty()).then(|| self.accountant.state())
    }

    /// Writes the parameters as a safetensors file (names as in [`TchLearner::layout`]),
    /// readable by `safetensors.torch.load_file`.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), Error> {
        let named: Vec<(&str, &Tensor)> = self
            .variables
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        Tensor::write_safetensors(&named, path).map_err(torch)?;
        Ok(())
    }

    fn set_train(&mut self, train: bool) {
        if let Net::Script(module) = &mut self.net {
            if train {
                module.set_train();
            } else {
                module.set_eval();
            }
        }
    }

    /// The generator of DP-SGD's sampling and noise.
    fn private_rng(&mut self) -> &mut dyn RngCore {
        match &mut self.private {
            Some(rng) => rng,
            None => &mut self.rng,
        }
    }

    /// DP-SGD's sampling rate: the batch size over the rows.
    fn sample_rate(&self) -> f64 {
        (self.config.batch_size as f64 / self.train.rows as f64).min(1.0)
    }

    /// Trains `steps` steps; the mean loss of their batches. Under DP-SGD a round the budget
    /// does not cover is refused before its first step.
    fn run(&mut self, steps: usize) -> Result<f64, Error> {
        if let Some(dp) = self.config.dp {
            let count = u64::try_from(steps).map_err(|_| privacy::Error::StepsOverflow)?;
            self.accountant
                .check_budget(&dp, self.sample_rate(), count)?;
        }
        self.set_train(true);
        let mut total = 0.0;
        for _ in 0..steps {
            total += match self.config.dp {
                Some(dp) => self.dp_step(dp)?,
                None => self.step()?,
            };
        }
        Ok(total / steps.max(1) as f64)
    }

    /// Next batch of row indices (shuffled epochs, partial last batch).
    fn next_batch(&mut self) -> Vec<i64> {
        if self.cursor >= self.train.rows {
            self.order.shuffle(&mut self.rng);
            self.cursor = 0;
        }
        let end = (self.cursor + self.config.batch_size).min(self.train.rows);
        let batch = self.order[self.cursor..end]
            .iter()
            .map(|&i| i as i64)
            .collect();
        self.cursor = end;
        batch
    }

    fn loss(&self, rows: &Tensor) -> Result<Tensor, Error> {
        let x = self.train.x.index_select(0, rows);
        let out = self.net.forward(&x)?;
        match self.spec.task() {
            Task::Binary => {
                let y = self.train.y.index_select(0, rows);
                Ok(out.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::Mean))
            }
            Task::Survival => {
                let time = self.train.time.index_select(0, rows);
                let event = self.train.event.index_select(0, rows);
                Ok(breslow_loss(&out, &time, &event))
            }
        }
    }

    fn step(&mut self) -> Result<f64, Error> {
        let batch = self.next_batch();
        let rows = Tensor::from_slice(&batch);
        self.optimizer.zero_grad();
        let loss = self.loss(&rows)?;
        loss.backward();
        self.optimizer.step();
        Ok(loss.double_value(&[]))
    }

    /// One DP-SGD step: Poisson sampling with rate batch/rows, per-sample gradients clipped to
    /// `max_grad_norm`, Gaussian noise of std `noise_multiplier * max_grad_norm` added to their
    /// sum, divided by the expected batch size (as Opacus does).
    fn dp_step(&mut self, dp: DpConfig) -> Result<f64, Error> {
        let rows = self.train.rows;
        let rate = self.sample_rate();
        let rng = self.private_rng();
        let chosen: Vec<i64> = (0..rows)
            .filter(|_| rng.random_bool(rate))
            .map(|i| i as i64)
            .collect();
        let params: Vec<Tensor> = self
            .variables
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect();
        let mut sums: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
        let mut loss_total = 0.0;
        for &i in &chosen {
            self.optimizer.zero_grad();
            let loss = self.loss(&Tensor::from_slice(&[i]))?;
            loss.backward();
            loss_total += loss.double_value(&[]);
            let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
            let norm = grads
                .iter()
                .map(|g| {
                    if g.defined() {
                        g.square().sum(Kind::Double).double_value(&[])
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
                .sqrt();
            let scale = (dp.max_grad_norm / (norm + 1e-6)).min(1.0);
            tch::no_grad(|| {
                for (sum, g) in sums.iter_mut().zip(&grads) {
                    if g.defined() {
                        *sum += g * scale;
                    }
                }
            });
        }
        let std = dp.noise_multiplier * dp.max_grad_norm;
        let expected = rate * rows as f64;
        let mut noisy = Vec::with_capacity(sums.len());
        let rng = self.private_rng();
        for sum in &sums {
            let n = sum.numel();
            let noise: Vec<f32> = (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut *rng);
                    (z * std) as f32
                })
                .collect();
            let noise = Tensor::from_slice(&noise).reshape(sum.size());
            noisy.push(((sum + noise) / expected).detach());
        }
        // libtorch's zero_grad drops gradients (set_to_none), so the privatized gradient is
        // installed by back-propagating a surrogate whose gradient is exactly that tensor:
        // d/dp sum(p * g) = g.
        self.optimizer.zero_grad();
        let surrogate = params
            .iter()
            .zip(&noisy)
            .map(|(p, g)| (p * g).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        surrogate.backward();
        self.optimizer.step();
        self.accountant.step(dp.noise_multiplier, rate, 1)?;
        Ok(if chosen.is_empty() {
            0.0
        } else {
            loss_total / chosen.len() as f64
        })
    }
}

/// Negative Breslow partial log-likelihood of log-risk scores, averaged over the batch's rows
/// (censored rows count in the mean, as in FLamby's Fed-TCGA-BRCA `BaselineLoss`, so that its
/// learning rates mean the same here): for each event i, `risk_i - log Σ_{j: t_j >= t_i}
/// exp(risk_j)` (tied times share a risk set).
fn breslow_loss(risk: &Tensor, time: &Tensor, event: &Tensor) -> Tensor {
    // at_risk[i][j] = t_j >= t_i
    let at_risk = time.unsqueeze(0).ge_tensor(&time.unsqueeze(1));
    let masked = risk
        .unsqueeze(0)
        .expand([risk.size()[0], risk.size()[0]], false)
        .masked_fill(&at_risk.logical_not(), f64::NEG_INFINITY);
    let log_risk_set = masked.logsumexp([1], false);
    -((risk - log_risk_set) * event).mean(Kind::Float)
}

fn build(spec: &ModelSpec, root: &nn::Path<'_>) -> Result<Net, Error> {
    let linear = |path: nn::Path<'_>, i: i64, o: i64, bias: bool| {
        nn::linear(
            path,
            i,
            o,
            nn::LinearConfig {
                bias,
                ..Default::default()
            },
        )
    };
    Ok(match spec {
        ModelSpec::Logistic { inputs } => {
            Net::Builtin(nn::seq().add(linear(root / "layer0", *inputs, 1, true)))
        }
        ModelSpec::Cox { inputs } => {
            Net::Builtin(nn::seq().add(linear(root / "layer0", *inputs, 1, false)))
        }
        ModelSpec::Mlp { inputs, hidden } => {
            let mut seq = nn::seq();
            let mut width = *inputs;
            for (i, h) in hidden.iter().enumerate() {
                seq = seq
                    .add(linear(root / format!("layer{i}"), width, *h, true))
                    .add_fn(|x| x.relu());
                width = *h;
            }
            Net::Builtin(seq.add(linear(
                root / format!("layer{}", hidden.len()),
                width,
                1,
                true,
            )))
        }
        ModelSpec::TorchScript { path, .. } => {
            let module = tch::TrainableCModule::load(path, root.clone()).map_err(torch)?;
            Net::Script(module)
        }
    })
}

impl Learner for TchLearner {
    fn dim(&self) -> usize {
        self.dim
    }

    fn samples(&self) -> usize {
        self.train.rows
    }

    fn params(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.dim];
        let mut offset = 0;
        for (_, t) in &self.variables {
            let n = t.numel();
            // Contiguous float tensors copy straight out; a failure here would be a libtorch
            // bug, and leaves zeros rather than aborting training.
            let _ = t
                .detach()
                .to_kind(Kind::Float)
                .f_copy_data(&mut out[offset..offset + n], n);
            offset += n;
        }
        out
    }

    fn load(&mut self, params: &[f32]) -> Result<(), Error> {
        if params.len() != self.dim {
            return Err(Error::Shape {
                expected: self.dim,
                found: params.len(),
            });
        }
        let mut offset = 0;
        tch::no_grad(|| -> Result<(), Error> {
            for (_, t) in &mut self.variables {
                let n = t.numel();
                let src = Tensor::from_slice(&params[offset..offset + n]).reshape(t.size());
                t.f_copy_(&src).map_err(torch)?;
                offset += n;
            }
            Ok(())
        })
    }

    /// The published metrics: `loss` without DP, only `epsilon` under DP-SGD (see the module
    /// documentation).
    fn train(&mut self, steps: usize) -> Result<BTreeMap<String, f64>, Error> {
        let loss = self.run(steps)?;
        let mut metrics = BTreeMap::new();
        // The loss of private batches carries no noise: it would leak what DP-SGD protects.
        if self.config.dp.is_none() && loss.is_finite() {
            metrics.insert("loss".to_owned(), loss);
        }
        if let Some(spent) = self.privacy_spent()
            && spent.epsilon.is_finite()
        {
            metrics.insert("epsilon".to_owned(), spent.epsilon);
        }
        Ok(metrics)
    }
}

impl TchLearner {
    /// The variable store (for tests and export tools).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medmesh_learning::learner::TaskKind;

    /// Two Gaussian blobs: label 1 around +0.75 on every feature, label 0 around -0.75.
    fn blobs(rows: usize, cols: usize, seed: u64) -> Table {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(rows * cols);
        let mut y = Vec::with_capacity(rows);
        for i in 0..rows {
            let label = (i % 2) as f32;
            let centre = if label > 0.5 { 0.75 } else { -0.75 };
            for _ in 0..cols {
                let noise: f32 = StandardNormal.sample(&mut rng);
                x.push(centre + noise);
            }
            y.push(label);
        }
        Table {
            x,
            rows,
            cols,
            y,
            time: vec![],
            event: vec![],
        }
    }

    /// Survival data whose hazard grows with feature 0: time = -ln(u) / exp(2 x0), 30 % censored.
    fn survival(rows: usize, seed: u64) -> Table {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, mut time, mut event) = (vec![], vec![], vec![]);
        for _ in 0..rows {
            let a: f32 = StandardNormal.sample(&mut rng);
            let b: f32 = StandardNormal.sample(&mut rng);
            let u: f32 = rng.random_range(1e-6..1.0);
            x.extend([a, b]);
            time.push(-u.ln() / (2.0 * a).exp());
            event.push(if rng.random_bool(0.7) { 1.0 } else { 0.0 });
        }
        Table {
            x,
            rows,
            cols: 2,
            y: vec![],
            time,
            event,
        }
    }

    fn logistic(cols: usize) -> ModelSpec {
        ModelSpec::Logistic {
            inputs: cols as i64,
        }
    }

    #[test]
    fn logistic_regression_learns_separable_blobs() {
        let train = blobs(400, 5, 1);
        let test = blobs(200, 5, 2);
        let config = TrainConfig {
            lr: 0.05,
            batch_size: 16,
            ..TrainConfig::default()
        };
        let mut learner = TchLearner::new(logistic(5), config, 7, &train).expect("builds");
        assert_eq!(learner.dim(), 6);
        let before = learner.evaluate(&test).expect("evaluates").accuracy();
        learner.train(200).expect("trains");
        let after = learner.evaluate(&test).expect("evaluates");
        assert!(
            after.accuracy().is_some_and(|a| a > 0.9),
            "accuracy {:?} (before {before:?})",
            after.accuracy()
        );
        assert!(after.auc().is_some_and(|a| a > 0.95));
    }

    #[test]
    fn flatten_and_load_round_trip_bit_exactly() {
        let train = blobs(64, 4, 3);
        let spec = ModelSpec::Mlp {
            inputs: 4,
            hidden: vec![8, 3],
        };
        let mut a = TchLearner::new(spec.clone(), TrainConfig::default(), 1, &train).expect("a");
        a.train(5).expect("trains");
        let params = a.params();
        assert_eq!(params.len(), 4 * 8 + 8 + 8 * 3 + 3 + 3 + 1);
        let mut b = TchLearner::new(spec, TrainConfig::default(), 2, &train).expect("b");
        assert_ne!(b.params(), params, "different seeds, different init");
        b.load(&params).expect("loads");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&b.params()), bits(&params));
        assert_eq!(a.predict(&train).expect("a"), b.predict(&train).expect("b"));
        let names: Vec<String> = a.layout().into_iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "flattening order is sorted by name");
        assert!(matches!(b.load(&params[1..]), Err(Error::Shape { .. })));
    }

    #[test]
    fn same_seeds_same_training() {
        let train = blobs(100, 3, 4);
        let run = || {
            let mut l =
                TchLearner::new(logistic(3), TrainConfig::default(), 9, &train).expect("builds");
            l.train(30).expect("trains");
            l.params()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn mlp_with_sgd_reduces_its_loss() {
        let train = blobs(256, 6, 5);
        let config = TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.9 },
            lr: 0.05,
            batch_size: 32,
            ..TrainConfig::default()
        };
        let spec = ModelSpec::Mlp {
            inputs: 6,
            hidden: vec![16],
        };
        let mut l = TchLearner::new(spec, config, 3, &train).expect("builds");
        let first = l.train(5).expect("trains")["loss"];
        l.train(100).expect("trains");
        let last = l.train(5).expect("trains")["loss"];
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }

    #[test]
    fn cox_model_ranks_risk() {
        let train = survival(300, 6);
        let test = survival(200, 7);
        let config = TrainConfig {
            lr: 0.05,
            batch_size: 64,
            ..TrainConfig::default()
        };
        let mut l =
            TchLearner::new(ModelSpec::Cox { inputs: 2 }, config, 1, &train).expect("builds");
        assert_eq!(l.dim(), 2, "no intercept");
        let untrained = l.evaluate(&test).expect("evaluates");
        l.train(150).expect("trains");
        let evaluation = l.evaluate(&test).expect("evaluates");
        let metrics::Evaluation::Survival(s) = evaluation else {
            panic!("a Cox model is evaluated as survival: {evaluation:?}");
        };
        assert_eq!((s.samples, s.events), (200, 143));
        let c = s.c_index.expect("comparable pairs");
        assert_eq!(Some(c), l.concordance(&test).expect("c-index"));
        // The true risk, 2·x0, ranks 84.1 % of seed 7's comparable pairs right; the trained model
        // 84.0 %.
        let truth = metrics::concordance_index(
            &(0..test.rows)
                .map(|i| 2.0 * test.row(i)[0])
                .collect::<Vec<_>>(),
            &test.time,
            &test.event,
        )
        .expect("valid")
        .expect("pairs");
        assert!(
            c > 0.82 && (c - truth).abs() < 0.01,
            "C-index {c}, of the true risk {truth}, untrained {untrained:?}"
        );
        let w = l.params();
        assert!(
            w[0] > 1.0 && w[1].abs() < 0.5,
            "weights {w:?} should recover ~(2, 0)"
        );
    }

    #[test]
    fn breslow_loss_matches_a_hand_computation() {
        // risks r = (0, ln 2, ln 3), times (1, 2, 3), all events:
        // i=0: risk set {0,1,2}: 0 - ln(1+2+3) = -ln 6
        // i=1: risk set {1,2}:   ln2 - ln(2+3) = ln(2/5)
        // i=2: risk set {2}:     0
        // loss = -(−ln 6 + ln 0.4 + 0) / 3
        let r = Tensor::from_slice(&[0.0f32, 2f32.ln(), 3f32.ln()]);
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let e = Tensor::from_slice(&[1.0f32, 1.0, 1.0]);
        let loss = breslow_loss(&r, &t, &e).double_value(&[]);
        let expected = (6f64.ln() - 0.4f64.ln()) / 3.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        // Tied times share the risk set; censored rows add nothing but count in the mean over
        // the batch's rows (FLamby's normalization): (ln 6 + 0) / 3.
        let t = Tensor::from_slice(&[1.0f32, 1.0, 3.0]);
        let e = Tensor::from_slice(&[1.0f32, 0.0, 1.0]);
        let loss = breslow_loss(&r, &t, &e).double_value(&[]);
        let expected = (6f64.ln() - 0.0) / 3.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    #[test]
    fn dp_sgd_trains_and_accounts_privacy() {
        let train = blobs(400, 4, 8);
        let test = blobs(200, 4, 9);
        let config = TrainConfig {
            lr: 0.1,
            batch_size: 40,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpConfig {
                noise_multiplier: 1.0,
                max_grad_norm: 1.0,
                delta: 1e-5,
                // A fixed accuracy bound needs repeatable noise.
                seeded_noise: true,
                ..DpConfig::default()
            }),
            ..TrainConfig::default()
        };
        let mut l = TchLearner::new(logistic(4), config, 2, &train).expect("builds");
        let m1 = l.train(20).expect("trains");
        let m2 = l.train(20).expect("trains");
        assert!(
            m2["epsilon"] > m1["epsilon"],
            "privacy spent grows: {m1:?} {m2:?}"
        );
        let accuracy = l
            .evaluate(&test)
            .expect("evaluates")
            .accuracy()
            .expect("binary");
        assert!(
            accuracy > 0.85,
            "accuracy {accuracy}, metrics {m1:?} {m2:?}, params {:?}",
            l.params()
        );
        let spent = l.privacy_spent().expect("dp on");
        assert!((spent.epsilon - m2["epsilon"]).abs() < 1e-12);
    }

    /// DP-SGD on the blobs, with the config seed 42 for every learner.
    fn dp_config(dp: DpConfig) -> TrainConfig {
        TrainConfig {
            lr: 0.1,
            batch_size: 40,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            seed: 42,
            dp: Some(dp),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn dp_noise_comes_from_the_os_not_from_the_config() {
        let train = blobs(400, 4, 12);
        let run = || {
            let mut l = TchLearner::new(logistic(4), dp_config(DpConfig::default()), 2, &train)
                .expect("builds");
            let init = l.params();
            let metrics = l.train(10).expect("trains");
            (init, l.params(), metrics)
        };
        let (init_a, a, metrics_a) = run();
        let (init_b, b, metrics_b) = run();
        assert_eq!(init_a, init_b, "the same config and seeds");
        assert_ne!(a, b, "but other noise and another sample: {a:?}");
        // The privacy spent does not depend on the draw.
        assert_eq!(metrics_a, metrics_b);
    }

    #[test]
    fn seeded_noise_repeats_exactly_for_the_simulator() {
        let train = blobs(400, 4, 12);
        let seeded = DpConfig {
            seeded_noise: true,
            ..DpConfig::default()
        };
        let run = |seed: u64| {
            let config = TrainConfig {
                seed,
                ..dp_config(seeded)
            };
            let mut l = TchLearner::new(logistic(4), config, 2, &train).expect("builds");
            let metrics = l.train(10).expect("trains");
            (l.params(), metrics)
        };
        let first = run(42);
        assert_eq!(first, run(42));
        assert_ne!(first.0, run(43).0, "the seed decides the noise");
    }

    #[test]
    fn under_dp_only_epsilon_is_published() {
        let train = blobs(200, 4, 13);
        let mut l = TchLearner::new(logistic(4), dp_config(DpConfig::default()), 2, &train)
            .expect("builds");
        let metrics = l.train(5).expect("trains");
        assert_eq!(
            metrics.keys().collect::<Vec<_>>(),
            ["epsilon"],
            "no loss of private batches: {metrics:?}"
        );
        assert!(metrics["epsilon"] > 0.0);
        // Without DP the loss is published and there is no ledger.
        let mut plain =
            TchLearner::new(logistic(4), TrainConfig::default(), 2, &train).expect("builds");
        let metrics = plain.train(5).expect("trains");
        assert_eq!(metrics.keys().collect::<Vec<_>>(), ["loss"]);
        assert_eq!(plain.privacy_state(), None);
    }

    #[test]
    fn a_rebuilt_learner_continues_the_privacy_ledger() {
        let train = blobs(400, 4, 14);
        let build = || {
            TchLearner::new(logistic(4), dp_config(DpConfig::default()), 2, &train).expect("builds")
        };
        let mut first = build();
        first.train(30).expect("trains");
        let saved = first.privacy_state().expect("a ledger under DP");
        let before = first.privacy_spent().expect("dp on").epsilon;

        let mut rebuilt = build();
        rebuilt.restore_privacy(&saved).expect("restores");
        assert_eq!(rebuilt.privacy_spent().expect("dp on").epsilon, before);
        let after = rebuilt.train(1).expect("trains")["epsilon"];
        assert!(
            after > before,
            "ε after the restart {after} < before {before}"
        );
        // A learner that forgot the ledger would report far less.
        let mut fresh = build();
        assert!(fresh.train(1).expect("trains")["epsilon"] < before);
        // A damaged ledger is refused and the learner keeps its own.
        let mut damaged = saved.clone();
        damaged.history[0].sample_rate = 7.0;
        let err = rebuilt.restore_privacy(&damaged).expect_err("damaged");
        assert!(err.to_string().contains("sample rate 7"), "{err}");
        assert_eq!(rebuilt.privacy_spent().expect("dp on").epsilon, after);
    }

    #[test]
    fn training_past_max_epsilon_is_refused_with_the_budget_and_the_spend() {
        let train = blobs(400, 4, 15);
        // q = 40/400 at σ = 1: the budget is what 30 steps spend; 20 fit, 40 do not.
        let mut reference = Accountant::new();
        reference.step(1.0, 0.1, 30).expect("steps");
        let budget = reference.spent(1e-5).expect("spent").epsilon;
        let dp = DpConfig {
            max_epsilon: Some(budget),
            ..DpConfig::default()
        };
        let mut l = TchLearner::new(logistic(4), dp_config(dp), 2, &train).expect("builds");
        let spent = l.train(20).expect("within the budget")["epsilon"];
        let params = l.params();
        let err = l.train(20).expect_err("past the budget");
        assert!(
            matches!(
                err,
                Error::Privacy(privacy::Error::Budget { max_epsilon, .. }) if max_epsilon == budget
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("privacy budget exhausted")
                && text.contains(&format!("max_epsilon is {budget}"))
                && text.contains(&format!("epsilon {spent:.4} is spent")),
            "{text}"
        );
        // Refused before the first step: nothing trained, nothing spent.
        assert_eq!(l.params(), params);
        assert_eq!(l.privacy_spent().expect("dp on").epsilon, spent);
        // A restart does not reset the budget: a learner given the ledger refuses too.
        let saved = l.privacy_state().expect("a ledger");
        let mut rebuilt = TchLearner::new(logistic(4), dp_config(dp), 2, &train).expect("builds");
        rebuilt.train(20).expect("a fresh ledger would allow it");
        rebuilt.restore_privacy(&saved).expect("restores");
        assert!(rebuilt.train(20).is_err());
    }

    #[test]
    fn safetensors_export_reads_back() {
        let train = blobs(32, 3, 10);
        let spec = ModelSpec::Mlp {
            inputs: 3,
            hidden: vec![4],
        };
        let mut l = TchLearner::new(spec, TrainConfig::default(), 5, &train).expect("builds");
        l.train(3).expect("trains");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        l.save_safetensors(&path).expect("saves");
        let back = Tensor::read_safetensors(&path).expect("reads");
        let mut names: Vec<String> = back.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            l.layout().into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        // An independent reader agrees on names, dtypes and shapes.
        let bytes = std::fs::read(&path).expect("file");
        let parsed = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let mut flat = Vec::new();
        for (name, shape) in l.layout() {
            let view = parsed.tensor(&name).expect("tensor present");
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            assert_eq!(
                view.shape().iter().map(|d| *d as i64).collect::<Vec<_>>(),
                shape
            );
            flat.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        assert_eq!(flat, l.params());
    }

    #[test]
    fn bad_configs_and_data_are_errors() {
        let train = blobs(10, 3, 11);
        let bad = |config: TrainConfig| TchLearner::new(logistic(3), config, 1, &train).is_err();
        assert!(bad(TrainConfig {
            lr: 0.0,
            ..TrainConfig::default()
        }));
        assert!(bad(TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        }));
        assert!(bad(TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 1.5 },
            ..TrainConfig::default()
        }));
        assert!(
            TchLearner::new(logistic(4), TrainConfig::default(), 1, &train).is_err(),
            "wrong width"
        );
        let empty = Table {
            x: vec![],
            rows: 0,
            cols: 3,
            y: vec![],
            time: vec![],
            event: vec![],
        };
        assert!(TchLearner::new(logistic(3), TrainConfig::default(), 1, &empty).is_err());
        let missing = TchLearner::new(
            ModelSpec::TorchScript {
                path: "no/such/model.pt".into(),
                task: TaskKind::Binary,
            },
            TrainConfig::default(),
            1,
            &train,
        );
        assert!(missing.is_err());
    }
}

#[cfg(test)]
mod torchscript_tests {
    use super::*;
    use medmesh_learning::learner::TaskKind;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mlp.pt");

    fn spec() -> ModelSpec {
        ModelSpec::TorchScript {
            path: FIXTURE.into(),
            task: TaskKind::Binary,
        }
    }

    fn data(rows: usize, seed: u64) -> Table {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..rows {
            let label = (i % 2) as f32;
            for j in 0..13 {
                let noise: f32 = StandardNormal.sample(&mut rng);
                x.push(
                    noise
                        + if j < 3 {
                            1.5 * (2.0 * label - 1.0)
                        } else {
                            0.0
                        },
                );
            }
            y.push(label);
        }
        Table {
            x,
            rows,
            cols: 13,
            y,
            time: vec![],
            event: vec![],
        }
    }

    #[test]
    fn torchscript_module_loads_with_python_outputs_and_trains() {
        let train = data(300, 1);
        let config = TrainConfig {
            lr: 0.01,
            batch_size: 16,
            ..TrainConfig::default()
        };
        let mut l = TchLearner::new(spec(), config, 1, &train).expect("loads the module");
        assert_eq!(l.dim(), 13 * 8 + 8 + 8 + 1);
        // Python (eval mode): module(torch.ones(1, 13)) == -0.181146 (see make_mlp.py).
        let ones = Table {
            x: vec![1.0; 13],
            rows: 1,
            cols: 13,
            y: vec![1.0],
            time: vec![],
            event: vec![],
        };
        let p = l.predict(&ones).expect("predicts")[0];
        let logit = (p / (1.0 - p)).ln();
        assert!((logit - (-0.181_146)).abs() < 1e-4, "logit {logit}");
        let first = l.train(5).expect("trains")["loss"];
        l.train(200).expect("trains");
        let last = l.train(5).expect("trains")["loss"];
        assert!(last < 0.6 * first, "loss {first} -> {last}");
        let accuracy = l.evaluate(&data(200, 2)).expect("evaluates").accuracy();
        assert!(accuracy.is_some_and(|a| a > 0.9), "{accuracy:?}");
        // Its parameters round-trip through the flat vector like a built-in model's.
        let params = l.params();
        let mut fresh = TchLearner::new(spec(), TrainConfig::default(), 1, &train).expect("loads");
        fresh.load(&params).expect("loads params");
        assert_eq!(fresh.params(), params);
        assert_eq!(
            fresh.predict(&ones).expect("predicts"),
            l.predict(&ones).expect("predicts")
        );
    }

    #[test]
    fn torchscript_spec_digest_covers_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("m.pt");
        std::fs::copy(FIXTURE, &copy).expect("copy");
        let a = ModelSpec::TorchScript {
            path: copy.clone(),
            task: TaskKind::Binary,
        };
        let before = a.digest().expect("digest");
        let mut bytes = std::fs::read(&copy).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&copy, bytes).expect("write");
        assert_ne!(a.digest().expect("digest"), before);
    }
}
