//! Network topologies of a simulated mesh, and the spectral gap of their mixing matrices.
//!
//! A [`Topology`] names a way of wiring `n` peers: fixed graphs (fully connected, ring, 2-D
//! torus, random regular, Erdős–Rényi, Watts–Strogatz small world, exponential graph), built by
//! [`Topology::neighbours`] as undirected neighbour lists that a driver turns into each peer's
//! `Config::neighbours`, or Epidemic-Learning sampling, which has no fixed graph (each peer pulls
//! `s` fresh random peers per round: `Config::neighbours = None`, `fanout = s`).
//!
//! The spectral gap `1 − max(|λ₂|, |λₙ|)` of the Metropolis–Hastings mixing matrix `W` (the
//! weights of [`aggregate::metropolis_hastings_weights`], the ones the peers use) says how fast
//! repeated averaging agrees: the distance to consensus shrinks by a factor `1 − gap` per round.
//! [`spectral_gap`] computes it for any graph; [`Topology::spectral_gap`] for a topology, in
//! closed form for Epidemic-Learning sampling.
//!
//! **Eigenvalues.** `W` is symmetric and doubly stochastic, so `𝟙` is an eigenvector of
//! eigenvalue 1 and the rest of the spectrum lives on `𝟙^⊥`. We run Lanczos on `W` restricted to
//! `𝟙^⊥` (the start vector and every new Krylov vector have their mean removed), which finds
//! both ends of that spectrum, `λ₂` and `λₙ`, from one Krylov space: no squaring (`W²`) or
//! shifting (`(I + W)/2`) is needed. Plain power iteration was the first idea but converges at
//! the ratio `|λ₃/λ₂|`, which is `1 − O(1/n²)` on a ring and `1 − O(n^{-2/3})` on a random regular
//! graph (hundreds of thousands of steps); Lanczos converges with the square root of that
//! relative gap. Each step costs one sparse product, `O(n + edges)`, and keeps three vectors:
//! a 100,000-peer random 8-regular graph takes about 600 steps, 2 s on a busy 2-core machine
//! (release), an exponential graph about 120. There is no reorthogonalization: we stop
//! when the residual `‖W y − θ y‖` of both extreme Ritz pairs is below `1e-9`, which bounds each
//! reported eigenvalue's error by `1e-9` and comes long before lost orthogonality produces
//! spurious copies.
//!
//! What this module must never do: read OS randomness or a clock (every random graph is a
//! function of `(n, seed)`), or return a graph that is not symmetric, loop-free, duplicate-free
//! and connected.

use std::collections::{HashSet, VecDeque};

use medmesh_protocol::aggregate;
use medmesh_protocol::peer::TwoLevel;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Seeds tried (`seed`, `seed + 1`, …) before a random construction gives up on connectivity.
const ATTEMPTS: u32 = 100;

/// Shuffles of the leftover stubs before one random-regular pairing is abandoned.
const PAIRING_ROUNDS: usize = 1000;

/// Residual below which a Ritz value counts as an eigenvalue (it bounds the eigenvalue's error).
const TOLERANCE: f64 = 1e-9;

/// Most Lanczos steps. A ring needs about `n/2`, so rings beyond ~40,000 peers (gap < 1e-8,
/// near the tolerance) hit it and get an estimate (measured: 2.4e-9 for 1.3e-9 at 100,000).
const MAX_STEPS: usize = 20_000;

/// A Krylov vector this short means an invariant subspace was found: the Ritz values are exact.
const BREAKDOWN: f64 = 1e-13;

/// Smallest pivot magnitude in the tridiagonal factorizations (as LAPACK's `pivmin`).
const PIVOT_MIN: f64 = 1e-290;

/// Seed of the Lanczos start vector, so a gap is a pure function of the graph.
const START_SEED: u64 = 0x0067_6170;

/// How `n` peers are wired.
///
/// Internally tagged: in TOML, `topology = { kind = "random_regular", degree = 8 }` or
/// `topology = { kind = "ring" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Topology {
    /// Every peer linked to every other (`n ≥ 2`).
    FullyConnected,
    /// Peer `i` linked to `i ± 1 mod n` (`n ≥ 3`).
    Ring,
    /// A 2-D torus of `rows × cols = n` with `rows` the largest divisor of `n` not above `√n`
    /// (as square as possible); peer `(r, c)` is linked to `(r ± 1, c)` and `(r, c ± 1)`,
    /// wrapping around. Needs `rows ≥ 2` (a prime `n` is refused); with 2 rows (or columns) the
    /// two vertical (horizontal) links coincide and the degree is 3 (or 2).
    Torus,
    /// A random `degree`-regular graph (`degree < n`, `n × degree` even, `degree ≥ 2` when
    /// `n > 2`), approximately uniform: stubs are paired at random and bad pairs (loops,
    /// duplicates) re-paired, as Steger–Wormald and networkx do. Above `(n − 1)/2` it is the
    /// complement of a random `(n − 1 − degree)`-regular graph.
    RandomRegular {
        /// Neighbours per peer.
        degree: usize,
    },
    /// Each pair linked independently with probability `p ∈ [0, 1]` (`G(n, p)`); connected
    /// with high probability only above `ln n / n`.
    ErdosRenyi {
        /// Link probability.
        p: f64,
    },
    /// Watts–Strogatz: a ring lattice with `k/2` neighbours on each side (`k` even,
    /// `2 ≤ k < n`), then each lattice link `(u, u + j)` rewired with probability `beta ∈ [0, 1]`
    /// to `(u, w)` for a uniform `w` that is not `u` and not yet a neighbour (as networkx does).
    SmallWorld {
        /// Lattice degree.
        k: usize,
        /// Rewiring probability.
        beta: f64,
    },
    /// Peer `i` linked to `i ± 2^j mod n` for every `2^j < n`, undirected (`n ≥ 2`): degree
    /// about `2 log₂ n`, diameter about `log₂ n`.
    Exponential,
    /// Epidemic-Learning sampling: no fixed graph; every round each peer pulls the models of `s`
    /// distinct peers drawn uniformly from the other `n − 1` (`1 ≤ s < n`) and averages them
    /// with its own.
    EpidemicSampling {
        /// Peers pulled per round (the protocol's `fanout`).
        s: usize,
    },
}

/// Why a topology cannot be built on `n` peers.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// Too few peers for the topology.
    #[error("a {topology} topology needs at least {min} peers, got {n}")]
    TooFewPeers {
        /// The topology's name.
        topology: &'static str,
        /// Peers asked for.
        n: usize,
        /// The fewest it takes.
        min: usize,
    },
    /// A degree (random-regular degree, small-world `k`, sample size `s`) not below `n`.
    #[error("{topology}: degree {degree} must be less than the number of peers, {n}")]
    DegreeTooLarge {
        /// The topology's name.
        topology: &'static str,
        /// The degree asked for.
        degree: usize,
        /// Peers.
        n: usize,
    },
    /// A degree too small to ever give a connected graph, or an empty sample.
    #[error("{topology}: degree {degree} is below the minimum, {min}")]
    DegreeTooSmall {
        /// The topology's name.
        topology: &'static str,
        /// The degree asked for.
        degree: usize,
        /// The smallest that works.
        min: usize,
    },
    /// No `degree`-regular graph exists on `n` vertices when `n × degree` is odd.
    #[error("no {degree}-regular graph on {n} peers: n × degree is odd")]
    OddDegreeSum {
        /// The degree asked for.
        degree: usize,
        /// Peers.
        n: usize,
    },
    /// The small-world lattice degree must be even (`k/2` neighbours on each side).
    #[error("small-world k = {k} must be even")]
    OddLatticeDegree {
        /// The lattice degree asked for.
        k: usize,
    },
    /// A probability outside `[0, 1]`, or NaN.
    #[error("{name} = {value} is not a probability in [0, 1]")]
    Probability {
        /// The parameter (`p`, `beta`).
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A torus needs `n = rows × cols` with both at least 2.
    #[error("{n} peers do not factor as rows × cols with both at least 2")]
    NotFactorable {
        /// Peers.
        n: usize,
    },
    /// Every seed tried gave a disconnected graph.
    #[error("no connected {topology} graph on {n} peers in {attempts} seeds")]
    Disconnected {
        /// The topology's name.
        topology: &'static str,
        /// Peers.
        n: usize,
        /// Seeds tried.
        attempts: u32,
    },
}

impl Topology {
    /// Undirected neighbour lists of `n` peers (each sorted, without self loops or duplicates,
    /// `j ∈ N(i)` exactly when `i ∈ N(j)`), or `None` for [`Topology::EpidemicSampling`], which
    /// has no fixed graph.
    ///
    /// The graph is connected. Random graphs are a function of `(n, seed)`: the construction is
    /// seeded with `seed`, and while the result is disconnected, retried with `seed + 1`,
    /// `seed + 2`, … up to 100 seeds, then [`Error::Disconnected`].
    pub fn neighbours(&self, n: usize, seed: u64) -> Result<Option<Vec<Vec<usize>>>, Error> {
        self.check(n)?;
        let graph = match *self {
            Self::FullyConnected => complete(n),
            Self::Ring => ring_lattice(n, 1),
            Self::Torus => {
                let (rows, cols) = torus_shape(n).ok_or(Error::NotFactorable { n })?;
                torus(rows, cols)
            }
            Self::RandomRegular { degree } => {
                self.connected(n, seed, |rng| random_regular(n, degree, rng))?
            }
            Self::ErdosRenyi { p } => {
                self.connected(n, seed, |rng| Some(erdos_renyi(n, p, rng)))?
            }
            Self::SmallWorld { k, beta } => {
                self.connected(n, seed, |rng| Some(small_world(n, k, beta, rng)))?
            }
            Self::Exponential => exponential(n),
            Self::EpidemicSampling { .. } => return Ok(None),
        };
        Ok(Some(graph))
    }

    /// Spectral gap `1 − max(|λ₂|, |λₙ|)` of the topology's Metropolis–Hastings mixing matrix
    /// on `n` peers (the graph of [`Topology::neighbours`] for `seed`; see [`spectral_gap`]).
    ///
    /// For [`Topology::EpidemicSampling`] it is the gap of the *expected* one-round mixing matrix
    /// with the mean rule and equal sample weights. Peer `i` keeps `x_i` and averages it with `s`
    /// peers drawn uniformly without replacement from the other `n − 1`, so row `i` of `W` is
    /// `1/(s+1)` on the diagonal and on the `s` drawn columns. Each other peer is drawn with
    /// probability `s/(n−1)`, hence
    ///
    /// ```text
    /// E[W] = a·I + b·J,   b = s / ((s+1)(n−1)),   a = 1/(s+1) − b,
    /// ```
    ///
    /// symmetric and doubly stochastic, with eigenvalue `a + n·b = 1` on `𝟙` and `a` on all of
    /// `𝟙^⊥`. So `λ₂ = λₙ = a = (n−1−s) / ((s+1)(n−1)) ≥ 0` and
    ///
    /// ```text
    /// gap = 1 − a = s·n / ((s+1)(n−1)),
    /// ```
    ///
    /// which is 1 for `s = n − 1` (everyone averages everyone) and tends to `s/(s+1)` for large
    /// `n` (0.875 for `s = 7`).
    ///
    /// Read it with care next to a fixed graph's gap: it describes the *expected* model, while
    /// the mean-square disagreement under random sampling shrinks by about `1/(s+1)` per round
    /// for `n ≫ s` (`E‖x'‖² ≈ (‖x‖² + s‖x‖²)/(s+1)²` for `x ⟂ 𝟙`), i.e. like a fixed graph of
    /// gap `1 − 1/√(s+1)` (0.65 for `s = 7`), still far above sparse fixed graphs.
    pub fn spectral_gap(&self, n: usize, seed: u64) -> Result<f64, Error> {
        if let Self::EpidemicSampling { s } = *self {
            self.check(n)?;
            let (n, s) = (n as f64, s as f64);
            return Ok(s * n / ((s + 1.0) * (n - 1.0)));
        }
        Ok(self
            .neighbours(n, seed)?
            .map_or(1.0, |graph| spectral_gap(&graph)))
    }

    /// Whether the topology is a fixed graph (every kind but Epidemic-Learning sampling).
    pub fn is_fixed(&self) -> bool {
        !matches!(self, Self::EpidemicSampling { .. })
    }

    /// The topology's name, for errors.
    fn name(&self) -> &'static str {
        match self {
            Self::FullyConnected => "fully connected",
            Self::Ring => "ring",
            Self::Torus => "torus",
            Self::RandomRegular { .. } => "random regular",
            Self::ErdosRenyi { .. } => "Erdős–Rényi",
            Self::SmallWorld { .. } => "small-world",
            Self::Exponential => "exponential",
            Self::EpidemicSampling { .. } => "Epidemic-Learning sampling",
        }
    }

    /// Checks the parameters against `n`.
    fn check(&self, n: usize) -> Result<(), Error> {
        let topology = self.name();
        let min = match self {
            Self::Ring | Self::SmallWorld { .. } => 3,
            Self::Torus => 4,
            _ => 2,
        };
        if n < min {
            return Err(Error::TooFewPeers { topology, n, min });
        }
        let degree_below_n = |degree: usize| {
            if degree >= n {
                Err(Error::DegreeTooLarge {
                    topology,
                    degree,
                    n,
                })
            } else {
                Ok(())
            }
        };
        let probability = |name: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(Error::Probability { name, value })
            }
        };
        match *self {
            Self::FullyConnected | Self::Ring | Self::Exponential => {}
            Self::Torus => {
                torus_shape(n).ok_or(Error::NotFactorable { n })?;
            }
            Self::RandomRegular { degree } => {
                degree_below_n(degree)?;
                // A 1-regular graph is a perfect matching: connected only on 2 peers.
                let min = if n > 2 { 2 } else { 1 };
                if degree < min {
                    return Err(Error::DegreeTooSmall {
                        topology,
                        degree,
                        min,
                    });
                }
                if n % 2 == 1 && degree % 2 == 1 {
                    return Err(Error::OddDegreeSum { degree, n });
                }
            }
            Self::ErdosRenyi { p } => probability("p", p)?,
            Self::SmallWorld { k, beta } => {
                if k < 2 {
                    return Err(Error::DegreeTooSmall {
                        topology,
                        degree: k,
                        min: 2,
                    });
                }
                degree_below_n(k)?;
                if k % 2 == 1 {
                    return Err(Error::OddLatticeDegree { k });
                }
                probability("beta", beta)?;
            }
            Self::EpidemicSampling { s } => {
                if s == 0 {
                    return Err(Error::DegreeTooSmall {
                        topology,
                        degree: s,
                        min: 1,
                    });
                }
                degree_below_n(s)?;
            }
        }
        Ok(())
    }

    /// Runs `build` with `seed`, `seed + 1`, … until it gives a connected graph.
    fn connected(
        &self,
        n: usize,
        seed: u64,
        mut build: impl FnMut(&mut ChaCha8Rng) -> Option<Vec<Vec<usize>>>,
    ) -> Result<Vec<Vec<usize>>, Error> {
        for attempt in 0..ATTEMPTS {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(u64::from(attempt)));
            if let Some(mut graph) = build(&mut rng)
                && is_connected(&graph)
            {
                normalise(&mut graph);
                return Ok(graph);
            }
        }
        Err(Error::Disconnected {
            topology: self.name(),
            n,
            attempts: ATTEMPTS,
        })
    }
}

/// Spectral gap `1 − max(|λ₂|, |λₙ|)` of the Metropolis–Hastings mixing matrix of an undirected
/// graph: `W_ij = 1/(1 + max(d_i, d_j))` on links, `W_ii = 1 − Σ_j W_ij`.
///
/// `W` is symmetric and doubly stochastic with eigenvalues in `(−1, 1]` (its diagonal is at
/// least `1/(1 + d_i) > 0`), so the gap lies in `[0, 1]`: 0 exactly when the graph is
/// disconnected, 1 for a complete graph (`W = J/n`). `λ₂` and `λₙ` are the extreme eigenvalues
/// of `W` on `𝟙^⊥`, found by Lanczos (see the module docs) to within `1e-9`, in
/// `O(n + edges)` time per step. A graph of fewer than 2 nodes has nothing to mix: gap 1. If
/// 20,000 steps do not reach the tolerance (gaps far below `1e-9`), the best estimate is
/// returned.
///
/// `neighbours[i]` lists `i`'s neighbours: indices below `neighbours.len()`, no self loops or
/// duplicates, and symmetric (as [`Topology::neighbours`] gives). Panics on an out-of-range index.
pub fn spectral_gap(neighbours: &[Vec<usize>]) -> f64 {
    if neighbours.len() < 2 {
        return 1.0;
    }
    debug_assert!(
        neighbours
            .iter()
            .enumerate()
            .all(|(i, list)| list.iter().all(|&j| j != i && neighbours[j].contains(&i))),
        "neighbour lists must be symmetric and loop-free"
    );
    let (low, high) = Mixing::new(neighbours).extreme_eigenvalues();
    (1.0 - low.abs().max(high.abs())).clamp(0.0, 1.0)
}

/// Spectral gap per round of the expected mixing of two-level averaging
/// ([`medmesh_protocol::peer::TwoLevel`]) with the mean rule and equal sample weights, over
/// `groups` groups of `size` members each pulling `fanout` versions of its own group per round.
///
/// Write a model vector as its between-group part (each group's mean, constant inside the
/// group) plus its within-group part (zero mean inside each group). Every expected one-round
/// mixing matrix here is `α I + β (I_G ⊗ J_m) + γ J_n`: they commute, keep `𝟙` (eigenvalue 1),
/// and have one eigenvalue on the within-group subspace and one on the between-group one. With
/// `s = min(fanout, m − 1)` pulls inside a group of `m`, the first step (Epidemic-Learning
/// sampling inside the group, see [`Topology::spectral_gap`]) multiplies the within-group part by
/// `a = 1/(s+1) − b`, `b = s/((s+1)(m−1))`, and keeps each group's mean. A round that also pulls
/// one version from each of `f` of the other `G − 1` groups (drawn at random) averages the own
/// group's model with them, each standing for `1/(f+1)`; a pulled version is, in expectation,
/// its group's mean. So such a round has
///
/// ```text
/// within:  a / (f + 1)
/// between: (G − 1 − f) / ((f + 1)(G − 1))      (0 when f = G − 1: every group is reached)
/// ```
///
/// and a round inside the group has `a` and 1. Over the schedule's period (`Every { rounds: k }`:
/// `k − 1` rounds inside, one reaching every other group; `Fanout { groups: f }`: every round
/// reaches `f` groups) the eigenvalues multiply, and the gap per round is
/// `1 − max(|within|, |between|)^(1/period)`. The last round's extra mixing is left out.
///
/// Read it as [`Topology::spectral_gap`]'s sampling gap: it describes the expected model. Errors
/// on fewer than 2 groups, an empty group, a zero fanout, or an empty schedule.
pub fn two_level_spectral_gap(
    groups: usize,
    size: usize,
    fanout: usize,
    schedule: TwoLevel,
) -> Result<f64, Error> {
    let topology = "two-level";
    if groups < 2 {
        return Err(Error::TooFewPeers {
            topology,
            n: groups,
            min: 2,
        });
    }
    if size == 0 || (size > 1 && fanout == 0) {
        return Err(Error::DegreeTooSmall {
            topology,
            degree: fanout.min(size),
            min: 1,
        });
    }
    let (g, m) = (groups as f64, size as f64);
    let s = fanout.min(size - 1) as f64;
    // Within-group eigenvalue of a round inside the group (none when groups have one member).
    let inside = if size > 1 {
        let b = s / ((s + 1.0) * (m - 1.0));
        1.0 / (s + 1.0) - b
    } else {
        0.0
    };
    let across = |f: usize| {
        let f = f.min(groups - 1) as f64;
        (inside / (f + 1.0), (g - 1.0 - f) / ((f + 1.0) * (g - 1.0)))
    };
    let (within, between, period) = match schedule {
        TwoLevel::Every { rounds: 0 } | TwoLevel::Fanout { groups: 0 } => {
            return Err(Error::DegreeTooSmall {
                topology,
                degree: 0,
                min: 1,
            });
        }
        TwoLevel::Every { rounds } => {
            let (w, b) = across(groups - 1);
            let k = i32::try_from(rounds).unwrap_or(i32::MAX);
            (w * inside.powi(k - 1), b, rounds as f64)
        }
        TwoLevel::Fanout { groups: f } => {
            let (w, b) = across(f);
            (w, b, 1.0)
        }
    };
    let contraction = within.abs().max(between.abs());
    Ok((1.0 - contraction.powf(1.0 / period)).clamp(0.0, 1.0))
}

/// A Metropolis–Hastings mixing matrix in compressed sparse rows.
struct Mixing {
    diagonal: Vec<f64>,
    /// Row `i`'s links are `offsets[i]..offsets[i + 1]` of `columns` and `weights`.
    offsets: Vec<usize>,
    columns: Vec<usize>,
    weights: Vec<f64>,
}

impl Mixing {
    fn new(neighbours: &[Vec<usize>]) -> Self {
        let degree = |i: usize| u32::try_from(neighbours[i].len()).unwrap_or(u32::MAX);
        let links = neighbours.iter().map(Vec::len).sum();
        let mut mixing = Self {
            diagonal: Vec::with_capacity(neighbours.len()),
            offsets: Vec::with_capacity(neighbours.len() + 1),
            columns: Vec::with_capacity(links),
            weights: Vec::with_capacity(links),
        };
        mixing.offsets.push(0);
        let (mut degrees, mut row) = (Vec::new(), Vec::new());
        for (i, list) in neighbours.iter().enumerate() {
            degrees.clear();
            degrees.extend(list.iter().map(|&j| degree(j)));
            // The peers' own weights, so the gap is the one of the rule they run.
            aggregate::metropolis_hastings_weights(degree(i), &degrees, &mut row);
            mixing.diagonal.push(row[0]);
            mixing.columns.extend_from_slice(list);
            mixing.weights.extend_from_slice(&row[1..]);
            mixing.offsets.push(mixing.columns.len());
        }
        mixing
    }

    /// `y = W x`.
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        for (i, out) in y.iter_mut().enumerate() {
            let links = self.offsets[i]..self.offsets[i + 1];
            let mut sum = self.diagonal[i] * x[i];
            for (&j, &w) in self.columns[links.clone()].iter().zip(&self.weights[links]) {
                sum += w * x[j];
            }
            *out = sum;
        }
    }

    /// `(λₙ, λ₂)`: the smallest and largest eigenvalues of `W` on `𝟙^⊥`, by Lanczos.
    fn extreme_eigenvalues(&self) -> (f64, f64) {
        let n = self.diagonal.len();
        let mut rng = ChaCha8Rng::seed_from_u64(START_SEED);
        let mut q: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        remove_mean(&mut q);
        let length = norm(&q);
        if length == 0.0 {
            return (0.0, 0.0);
        }
        q.iter_mut().for_each(|x| *x /= length);
        let mut previous = vec![0.0; n];
        let mut w = vec![0.0; n];
        let (mut alpha, mut beta) = (Vec::<f64>::new(), Vec::<f64>::new());
        let mut estimate = (0.0, 0.0);
        let mut next_check = 4;
        for step in 1..=MAX_STEPS {
            self.apply(&q, &mut w);
            // W𝟙 = 𝟙 keeps the Krylov space in 𝟙^⊥ in exact arithmetic; rounding does not,
            // and the eigenvalue 1 would take over, so project again every step.
            remove_mean(&mut w);
            let last_beta = beta.last().copied().unwrap_or(0.0);
            let mut a = dot(&q, &w);
            for ((x, &qi), &pi) in w.iter_mut().zip(&q).zip(&previous) {
                *x -= a * qi + last_beta * pi;
            }
            // A second pass against q (local reorthogonalization) costs one dot product and
            // keeps the three-term recurrence accurate.
            let c = dot(&q, &w);
            for (x, &qi) in w.iter_mut().zip(&q) {
                *x -= c * qi;
            }
            a += c;
            alpha.push(a);
            let b = norm(&w);
            let breakdown = b <= BREAKDOWN;
            if breakdown || step >= next_check || step == MAX_STEPS {
                let [(low, low_last), (high, high_last)] = tridiagonal_extremes(&alpha, &beta);
                estimate = (low, high);
                // ‖W y − θ y‖ = β · |last component of the Ritz vector|.
                if breakdown || (b * low_last <= TOLERANCE && b * high_last <= TOLERANCE) {
                    return estimate;
                }
                next_check = step + (step / 8).max(4);
            }
            beta.push(b);
            std::mem::swap(&mut previous, &mut q);
            std::mem::swap(&mut q, &mut w);
            q.iter_mut().for_each(|x| *x /= b);
        }
        estimate
    }
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

fn norm(x: &[f64]) -> f64 {
    dot(x, x).sqrt()
}

fn remove_mean(x: &mut [f64]) {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    x.iter_mut().for_each(|v| *v -= mean);
}

/// The smallest and the largest eigenvalue of the symmetric tridiagonal matrix with diagonal
/// `a` and off-diagonal `b` (`b.len() + 1 == a.len()`), each with the magnitude of the last
/// component of its unit eigenvector.
///
/// Eigenvalues by Sturm-count bisection; the eigenvector by inverse iteration with the shift
/// bisection ends on, just outside the spectrum, where `T − σI` is definite and its `LDLᵀ`
/// factorization (the one the Sturm count computes) needs no pivoting.
fn tridiagonal_extremes(a: &[f64], b: &[f64]) -> [(f64, f64); 2] {
    let m = a.len();
    let off =
        |i: usize| (if i > 0 { b[i - 1].abs() } else { 0.0 }) + b.get(i).map_or(0.0, |x| x.abs());
    let mut low = (0..m).map(|i| a[i] - off(i)).fold(f64::INFINITY, f64::min);
    let mut high = (0..m)
        .map(|i| a[i] + off(i))
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = 1e-12 * (1.0 + low.abs().max(high.abs()));
    low -= margin;
    high += margin;
    let mut pivots = Vec::with_capacity(m);
    // Largest: the smallest shift with every eigenvalue below it.
    let (mut below, mut above) = (low, high);
    while let Some(mid) = midpoint(below, above) {
        if count_below(a, b, mid, &mut pivots) == m {
            above = mid;
        } else {
            below = mid;
        }
    }
    let largest = (above, last_component(a, b, above, &mut pivots));
    // Smallest: the largest shift with no eigenvalue below it.
    let (mut below, mut above) = (low, high);
    while let Some(mid) = midpoint(below, above) {
        if count_below(a, b, mid, &mut pivots) == 0 {
            below = mid;
        } else {
            above = mid;
        }
    }
    let smallest = (below, last_component(a, b, below, &mut pivots));
    [smallest, largest]
}

/// The midpoint of `[low, high]`, or `None` once no float lies strictly between them.
fn midpoint(low: f64, high: f64) -> Option<f64> {
    let mid = low + (high - low) / 2.0;
    (mid > low && mid < high).then_some(mid)
}

/// Pivots `d` of `T − σI = L D Lᵀ` into `pivots`; returns how many are negative, which is the
/// number of eigenvalues of `T` below `σ` (Sylvester's law of inertia).
fn count_below(a: &[f64], b: &[f64], sigma: f64, pivots: &mut Vec<f64>) -> usize {
    pivots.clear();
    let mut count = 0;
    let mut d = a[0] - sigma;
    for i in 0..a.len() {
        if i > 0 {
            d = a[i] - sigma - b[i - 1] * b[i - 1] / d;
        }
        if d.abs() < PIVOT_MIN {
            d = -PIVOT_MIN;
        }
        count += usize::from(d < 0.0);
        pivots.push(d);
    }
    count
}

/// `|y_m| / ‖y‖` for `y` the eigenvector of `T` nearest to `sigma`, by two steps of inverse
/// iteration; `sigma` must leave `T − σI` definite (the end of a bisection). Returns 1 (no
/// claim of convergence) if the solve overflows.
fn last_component(a: &[f64], b: &[f64], sigma: f64, pivots: &mut Vec<f64>) -> f64 {
    count_below(a, b, sigma, pivots);
    let m = a.len();
    let mut y = vec![1.0; m];
    for _ in 0..2 {
        // Solve L D Lᵀ y' = y, with L unit lower bidiagonal, L[i+1][i] = b[i] / d[i].
        for i in 1..m {
            y[i] -= b[i - 1] / pivots[i - 1] * y[i - 1];
        }
        for (v, d) in y.iter_mut().zip(pivots.iter()) {
            *v /= d;
        }
        for i in (0..m - 1).rev() {
            y[i] -= b[i] / pivots[i] * y[i + 1];
        }
        let scale = y.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        if !scale.is_finite() || scale == 0.0 {
            return 1.0;
        }
        y.iter_mut().for_each(|v| *v /= scale);
    }
    y[m - 1].abs() / norm(&y)
}

/// Sorts every list and drops duplicates.
fn normalise(graph: &mut [Vec<usize>]) {
    for list in graph {
        list.sort_unstable();
        list.dedup();
    }
}

/// Whether every node is reachable from node 0.
fn is_connected(graph: &[Vec<usize>]) -> bool {
    let Some(first) = graph.first() else {
        return true;
    };
    let mut seen = vec![false; graph.len()];
    seen[0] = true;
    let mut reached = 1;
    let mut queue = VecDeque::from([first]);
    while let Some(list) = queue.pop_front() {
        for &j in list {
            if !seen[j] {
                seen[j] = true;
                reached += 1;
                queue.push_back(&graph[j]);
            }
        }
    }
    reached == graph.len()
}

/// Key of the undirected link `{u, v}` for membership sets (only ever queried, never
/// iterated, so the hasher's randomness cannot leak into a graph).
fn link(u: usize, v: usize) -> (usize, usize) {
    (u.min(v), u.max(v))
}

fn complete(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| (0..n).filter(|&j| j != i).collect())
        .collect()
}

/// Each `i` linked to `i ± 1, …, i ± half` (mod `n`).
fn ring_lattice(n: usize, half: usize) -> Vec<Vec<usize>> {
    let mut graph: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            (1..=half)
                .flat_map(|j| [(i + j) % n, (i + n - j % n) % n])
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    normalise(&mut graph);
    graph
}

/// `(rows, cols)` with `rows` the largest divisor of `n` in `2..=√n`.
fn torus_shape(n: usize) -> Option<(usize, usize)> {
    (2..=n.isqrt())
        .rev()
        .find(|&r| n.is_multiple_of(r))
        .map(|rows| (rows, n / rows))
}

fn torus(rows: usize, cols: usize) -> Vec<Vec<usize>> {
    let index = |r: usize, c: usize| (r % rows) * cols + c % cols;
    let mut graph: Vec<Vec<usize>> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            [
                index(r + 1, c),
                index(r + rows - 1, c),
                index(r, c + 1),
                index(r, c + cols - 1),
            ]
            .into_iter()
            .filter(|&j| j != i)
            .collect()
        })
        .collect();
    normalise(&mut graph);
    graph
}

fn exponential(n: usize) -> Vec<Vec<usize>> {
    let offsets: Vec<usize> = (0..usize::BITS)
        .map(|j| 1usize << j)
        .take_while(|&o| o < n)
        .collect();
    let mut graph: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            offsets
                .iter()
                .flat_map(|&o| [(i + o) % n, (i + n - o) % n])
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    normalise(&mut graph);
    graph
}

/// A random `degree`-regular graph, or `None` if the pairing got stuck.
fn random_regular(n: usize, degree: usize, rng: &mut ChaCha8Rng) -> Option<Vec<Vec<usize>>> {
    if 2 * degree > n - 1 {
        // Dense: pairing gets stuck often, its complement does not. The complement of a graph of
        // degree < (n−1)/2 has minimum degree > (n−1)/2, so it is connected.
        let sparse = pairing(n, n - 1 - degree, rng)?;
        return Some(complement(&sparse));
    }
    pairing(n, degree, rng)
}

/// Pairs `degree` stubs per node at random; pairs that would make a loop or a duplicate are
/// reshuffled among themselves until none is left, or `None` when no valid pair remains.
fn pairing(n: usize, degree: usize, rng: &mut ChaCha8Rng) -> Option<Vec<Vec<usize>>> {
    let mut graph = vec![Vec::with_capacity(degree); n];
    let mut links = HashSet::with_capacity(n * degree / 2);
    let mut stubs: Vec<usize> = (0..n)
        .flat_map(|v| std::iter::repeat_n(v, degree))
        .collect();
    for _ in 0..PAIRING_ROUNDS {
        if stubs.is_empty() {
            return Some(graph);
        }
        stubs.shuffle(rng);
        let mut left = Vec::new();
        for pair in stubs.chunks_exact(2) {
            let (u, v) = (pair[0], pair[1]);
            if u != v && links.insert(link(u, v)) {
                graph[u].push(v);
                graph[v].push(u);
            } else {
                left.extend_from_slice(pair);
            }
        }
        if !left.is_empty() && !can_pair(&left, &links) {
            return None;
        }
        stubs = left;
    }
    None
}

/// Whether two distinct nodes among `stubs` are not linked yet.
fn can_pair(stubs: &[usize], links: &HashSet<(usize, usize)>) -> bool {
    let mut nodes = stubs.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
        .iter()
        .enumerate()
        .any(|(i, &u)| nodes[i + 1..].iter().any(|&v| !links.contains(&link(u, v))))
}

fn complement(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = graph.len();
    let mut linked = vec![false; n];
    graph
        .iter()
        .enumerate()
        .map(|(i, list)| {
            list.iter().for_each(|&j| linked[j] = true);
            let out = (0..n).filter(|&j| j != i && !linked[j]).collect();
            list.iter().for_each(|&j| linked[j] = false);
            out
        })
        .collect()
}

/// `G(n, p)` in `O(n + edges)` by geometric skips over the pairs (Batagelj & Brandes, 2005).
fn erdos_renyi(n: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    if p >= 1.0 {
        return complete(n);
    }
    let mut graph = vec![Vec::new(); n];
    if p <= 0.0 {
        return graph;
    }
    let log_q = (-p).ln_1p();
    let pairs = (n * n) as f64;
    // Pairs (v, w) with w < v, walked row by row; w = v means "next row".
    let (mut v, mut w) = (1usize, 0usize);
    let mut first = true;
    while v < n {
        let r: f64 = rng.random();
        let skip = ((-r).ln_1p() / log_q).floor();
        if skip >= pairs {
            break;
        }
        // Advance 1 + skip pairs (the first pair is (1, 0) itself).
        let mut step = skip as usize + usize::from(!first);
        first = false;
        while v < n && w + step >= v {
            step -= v - w;
            v += 1;
            w = 0;
        }
        if v < n {
            w += step;
            graph[v].push(w);
            graph[w].push(v);
        }
    }
    graph
}

fn small_world(n: usize, k: usize, beta: f64, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut graph = ring_lattice(n, k / 2);
    let mut links: HashSet<(usize, usize)> = graph
        .iter()
        .enumerate()
        .flat_map(|(u, list)| list.iter().map(move |&v| link(u, v)))
        .collect();
    for j in 1..=k / 2 {
        for u in 0..n {
            if rng.random::<f64>() >= beta || graph[u].len() >= n - 1 {
                continue;
            }
            let v = (u + j) % n;
            let w = loop {
                let w = rng.random_range(0..n);
                if w != u && !links.contains(&link(u, w)) {
                    break w;
                }
            };
            // Only `u` rewires its lattice link (u, u + j), in pass j, so it is still there.
            links.remove(&link(u, v));
            remove(&mut graph[u], v);
            remove(&mut graph[v], u);
            links.insert(link(u, w));
            graph[u].push(w);
            graph[w].push(u);
        }
    }
    graph
}

fn remove(list: &mut Vec<usize>, value: usize) {
    if let Some(at) = list.iter().position(|&x| x == value) {
        list.swap_remove(at);
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use rand::seq::index;

    use super::*;

    /// The expected one-round mixing matrix of two-level averaging, by enumerating every draw
    /// (equal weights, the mean rule): row `i` averages its group's step-one model with one
    /// version of each drawn group.
    fn expected_two_level(groups: usize, size: usize, s: usize, f: usize) -> Vec<Vec<f64>> {
        let n = groups * size;
        let mut w = vec![vec![0.0; n]; n];
        for (i, row) in w.iter_mut().enumerate() {
            let gi = i / size;
            let mates: Vec<usize> = (gi * size..(gi + 1) * size).filter(|&j| j != i).collect();
            let subsets: Vec<Vec<usize>> = (0u32..1 << mates.len())
                .filter(|bits| bits.count_ones() as usize == s)
                .map(|bits| {
                    (0..mates.len())
                        .filter(|k| bits & (1 << k) != 0)
                        .map(|k| mates[k])
                        .collect()
                })
                .collect();
            let others: Vec<usize> = (0..groups).filter(|&h| h != gi).collect();
            let drawn: Vec<Vec<usize>> = (0u32..1 << others.len())
                .filter(|bits| bits.count_ones() as usize == f)
                .map(|bits| {
                    (0..others.len())
                        .filter(|k| bits & (1 << k) != 0)
                        .map(|k| others[k])
                        .collect()
                })
                .collect();
            let p = 1.0 / (subsets.len() * drawn.len()) as f64;
            let share = 1.0 / (f + 1) as f64;
            for subset in &subsets {
                for hs in &drawn {
                    for &j in subset.iter().chain([i].iter()) {
                        row[j] += p * share / (s + 1) as f64;
                    }
                    for &h in hs {
                        for cell in &mut row[h * size..(h + 1) * size] {
                            *cell += p * share / size as f64;
                        }
                    }
                }
            }
        }
        w
    }

    fn multiply(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = a.len();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| a[i][k] * b[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    /// The largest |eigenvalue| on `𝟙^⊥` by power iteration (the matrices here are
    /// diagonalizable with real eigenvalues).
    fn second_modulus(w: &[Vec<f64>]) -> f64 {
        let n = w.len();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut norm = 0.0;
        for _ in 0..2000 {
            let mean = x.iter().sum::<f64>() / n as f64;
            x.iter_mut().for_each(|v| *v -= mean);
            let y: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|j| w[i][j] * x[j]).sum())
                .collect();
            norm = y.iter().map(|v| v * v).sum::<f64>().sqrt()
                / x.iter().map(|v| v * v).sum::<f64>().sqrt();
            let scale = y.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
            x = y.into_iter().map(|v| v / scale).collect();
        }
        norm
    }

    #[test]
    fn two_level_gap_matches_the_enumerated_expected_mixing() {
        // 3 groups of 4, 2 pulls inside; every 3rd round all groups, or 1 group every round.
        let (groups, size, s) = (3, 4, 2);
        let inside = expected_two_level(groups, size, s, 0);
        let everyone = expected_two_level(groups, size, s, groups - 1);
        let period = multiply(&everyone, &multiply(&inside, &inside));
        let expected = 1.0 - second_modulus(&period).powf(1.0 / 3.0);
        let gap =
            two_level_spectral_gap(groups, size, s, TwoLevel::Every { rounds: 3 }).expect("valid");
        assert!(
            (gap - expected).abs() < 1e-6,
            "every 3: {gap} vs {expected}"
        );

        let one = expected_two_level(groups, size, s, 1);
        let expected = 1.0 - second_modulus(&one);
        let gap =
            two_level_spectral_gap(groups, size, s, TwoLevel::Fanout { groups: 1 }).expect("valid");
        assert!(
            (gap - expected).abs() < 1e-6,
            "fanout 1: {gap} vs {expected}"
        );
    }

    #[test]
    fn two_level_gap_is_one_for_full_mixing_and_falls_with_the_period() {
        let full = two_level_spectral_gap(4, 4, 3, TwoLevel::Every { rounds: 1 }).expect("valid");
        assert!((full - 1.0).abs() < 1e-12, "every round, everyone: {full}");
        let gaps: Vec<f64> = [2, 5, 10]
            .iter()
            .map(|&k| {
                two_level_spectral_gap(4, 4, 1, TwoLevel::Every { rounds: k }).expect("valid")
            })
            .collect();
        assert!(
            gaps.windows(2).all(|w| w[0] > w[1] && w[1] > 0.0),
            "gaps {gaps:?}"
        );
        assert!(two_level_spectral_gap(1, 4, 3, TwoLevel::Every { rounds: 2 }).is_err());
        assert!(two_level_spectral_gap(4, 4, 0, TwoLevel::Every { rounds: 2 }).is_err());
        assert!(two_level_spectral_gap(4, 4, 3, TwoLevel::Fanout { groups: 0 }).is_err());
    }

    /// Sorted, loop-free, duplicate-free, symmetric and connected.
    fn assert_well_formed(graph: &[Vec<usize>]) {
        for (i, list) in graph.iter().enumerate() {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{i}: {list:?}");
            assert!(!list.contains(&i), "self loop at {i}");
            for &j in list {
                assert!(graph[j].binary_search(&i).is_ok(), "{i}–{j} one way");
            }
        }
        assert!(is_connected(graph));
    }

    fn build(topology: &Topology, n: usize, seed: u64) -> Vec<Vec<usize>> {
        let graph = topology
            .neighbours(n, seed)
            .expect("valid")
            .expect("a fixed graph");
        assert_eq!(graph.len(), n);
        assert_well_formed(&graph);
        graph
    }

    fn edges(graph: &[Vec<usize>]) -> usize {
        graph.iter().map(Vec::len).sum::<usize>() / 2
    }

    fn degrees(graph: &[Vec<usize>]) -> Vec<usize> {
        graph.iter().map(Vec::len).collect()
    }

    fn dense_mixing(graph: &[Vec<usize>]) -> Vec<Vec<f64>> {
        let n = graph.len();
        let mut w = vec![vec![0.0; n]; n];
        for (i, list) in graph.iter().enumerate() {
            for &j in list {
                w[i][j] = 1.0 / (1.0 + graph[i].len().max(graph[j].len()) as f64);
            }
            w[i][i] = 1.0 - w[i].iter().sum::<f64>();
        }
        w
    }

    /// Eigenvalues of a small symmetric matrix by cyclic Jacobi rotations, descending.
    fn jacobi_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
        let n = a.len();
        for _ in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
                .map(|(p, q)| a[p][q] * a[p][q])
                .sum();
            if off < 1e-26 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    if a[p][q] == 0.0 {
                        continue;
                    }
                    let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for row in a.iter_mut() {
                        let (x, y) = (row[p], row[q]);
                        row[p] = c * x - s * y;
                        row[q] = s * x + c * y;
                    }
                    let (upper, lower) = a.split_at_mut(q);
                    for (x, y) in upper[p].iter_mut().zip(lower[0].iter_mut()) {
                        (*x, *y) = (c * *x - s * *y, s * *x + c * *y);
                    }
                }
            }
        }
        let mut values: Vec<f64> = (0..n).map(|i| a[i][i]).collect();
        values.sort_by(|x, y| y.total_cmp(x));
        values
    }

    /// Gap of a symmetric doubly stochastic matrix of a connected graph, from all eigenvalues.
    fn dense_gap(w: Vec<Vec<f64>>) -> f64 {
        let values = jacobi_eigenvalues(w);
        assert!((values[0] - 1.0).abs() < 1e-10, "λ₁ = {}", values[0]);
        1.0 - values[1].abs().max(values[values.len() - 1].abs())
    }

    /// Gap of a circulant graph with symmetric offsets `±offsets` (regular of degree `d`):
    /// `λ_k = (1 + Σ_{o ∈ ±offsets} cos(2πko/n)) / (d + 1)`.
    fn circulant_gap(n: usize, graph: &[Vec<usize>]) -> f64 {
        // Node 0's neighbours are the offset set (every node's, shifted).
        let offsets = &graph[0];
        let d = offsets.len() as f64;
        let worst = (1..n)
            .map(|k| {
                let sum: f64 = offsets
                    .iter()
                    .map(|&o| (2.0 * PI * (k * o % n) as f64 / n as f64).cos())
                    .sum();
                ((1.0 + sum) / (d + 1.0)).abs()
            })
            .fold(0.0, f64::max);
        1.0 - worst
    }

    #[test]
    fn topology_fixed_graphs_have_their_degrees_and_edges() {
        let g = build(&Topology::FullyConnected, 50, 0);
        assert!(degrees(&g).iter().all(|&d| d == 49));
        assert_eq!(edges(&g), 50 * 49 / 2);

        let g = build(&Topology::Ring, 100, 0);
        assert!(degrees(&g).iter().all(|&d| d == 2));
        assert_eq!(edges(&g), 100);
        assert_eq!(g[0], vec![1, 99]);

        for (n, rows, cols) in [(1024, 32, 32), (12, 3, 4), (35, 5, 7), (9, 3, 3)] {
            assert_eq!(torus_shape(n), Some((rows, cols)));
            let g = build(&Topology::Torus, n, 0);
            assert!(degrees(&g).iter().all(|&d| d == 4), "{n}");
            assert_eq!(edges(&g), 2 * n);
        }
        // 2 × 5: the two vertical links coincide.
        let g = build(&Topology::Torus, 10, 0);
        assert!(degrees(&g).iter().all(|&d| d == 3));

        // 2^0..2^9 both ways, and 512 = −512 mod 1024: 19.
        let g = build(&Topology::Exponential, 1024, 0);
        assert!(degrees(&g).iter().all(|&d| d == 19));
        assert_eq!(g[0][..4], [1, 2, 4, 8]);
        let g = build(&Topology::Exponential, 1000, 0);
        assert!(degrees(&g).iter().all(|&d| d == 20));
    }

    #[test]
    fn topology_random_graphs_have_their_degrees_and_edges() {
        for (n, degree) in [(1000, 5), (1000, 3), (2, 1), (20, 12), (31, 30), (64, 8)] {
            let g = build(&Topology::RandomRegular { degree }, n, 1);
            assert!(degrees(&g).iter().all(|&d| d == degree), "{n} {degree}");
            assert_eq!(edges(&g), n * degree / 2);
        }

        let (n, p) = (2000, 0.01);
        let g = build(&Topology::ErdosRenyi { p }, n, 1);
        let expected = p * (n * (n - 1) / 2) as f64;
        let sd = (expected * (1.0 - p)).sqrt();
        assert!(
            (edges(&g) as f64 - expected).abs() < 5.0 * sd,
            "{} edges",
            edges(&g)
        );
        let g = build(&Topology::ErdosRenyi { p: 1.0 }, 30, 1);
        assert_eq!(edges(&g), 30 * 29 / 2);

        let g = build(&Topology::SmallWorld { k: 6, beta: 0.0 }, 100, 1);
        assert!(degrees(&g).iter().all(|&d| d == 6));
        assert_eq!(g[0], vec![1, 2, 3, 97, 98, 99]);
        for beta in [0.1, 0.5, 1.0] {
            let g = build(&Topology::SmallWorld { k: 6, beta }, 1000, 1);
            assert_eq!(edges(&g), 3000, "rewiring keeps the link count");
            let lattice = g
                .iter()
                .enumerate()
                .flat_map(|(i, l)| l.iter().map(move |&j| (i, j)))
                .filter(|&(i, j)| (1..=3).contains(&((j + 1000 - i) % 1000)))
                .count();
            // About (1 − beta) of the 3000 lattice links survive (plus a few re-drawn).
            let kept = lattice as f64 / 3000.0;
            assert!((kept - (1.0 - beta)).abs() < 0.05, "{beta}: {kept}");
        }
        assert_eq!(
            Topology::EpidemicSampling { s: 7 }.neighbours(100, 1),
            Ok(None)
        );
    }

    #[test]
    fn topology_erdos_renyi_draws_every_pair_alike() {
        // Every pair, the first (1, 0) and the last (n−1, n−2) included, appears about p of
        // the time over many seeds.
        let (n, p, seeds) = (6, 0.3, 4000);
        let mut counts = vec![vec![0u32; n]; n];
        for seed in 0..seeds {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for (i, list) in erdos_renyi(n, p, &mut rng).iter().enumerate() {
                for &j in list {
                    counts[i][j] += 1;
                }
            }
        }
        let sd = (p * (1.0 - p) / seeds as f64).sqrt();
        for (i, row) in counts.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                if i != j {
                    let rate = f64::from(c) / seeds as f64;
                    assert!((rate - p).abs() < 5.0 * sd, "({i}, {j}): {rate}");
                }
            }
        }
    }

    #[test]
    fn topology_random_graphs_are_deterministic_per_seed() {
        for topology in [
            Topology::RandomRegular { degree: 4 },
            Topology::ErdosRenyi { p: 0.05 },
            Topology::SmallWorld { k: 4, beta: 0.2 },
        ] {
            let a = build(&topology, 300, 42);
            assert_eq!(a, build(&topology, 300, 42), "{topology:?}");
            assert_ne!(a, build(&topology, 300, 43), "{topology:?}");
            assert_eq!(
                topology.spectral_gap(300, 42).expect("valid"),
                spectral_gap(&a)
            );
        }
    }

    #[test]
    fn topology_rejects_bad_parameters() {
        let rr = |degree| Topology::RandomRegular { degree };
        assert_eq!(
            rr(10).neighbours(10, 0),
            Err(Error::DegreeTooLarge {
                topology: "random regular",
                degree: 10,
                n: 10
            })
        );
        assert_eq!(
            rr(3).neighbours(11, 0),
            Err(Error::OddDegreeSum { degree: 3, n: 11 })
        );
        assert!(matches!(
            rr(1).neighbours(10, 0),
            Err(Error::DegreeTooSmall { min: 2, .. })
        ));
        for p in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                Topology::ErdosRenyi { p }.neighbours(10, 0),
                Err(Error::Probability { name: "p", .. })
            ));
        }
        assert!(matches!(
            Topology::SmallWorld { k: 4, beta: 2.0 }.neighbours(10, 0),
            Err(Error::Probability { name: "beta", .. })
        ));
        assert_eq!(
            Topology::SmallWorld { k: 3, beta: 0.1 }.neighbours(10, 0),
            Err(Error::OddLatticeDegree { k: 3 })
        );
        assert!(matches!(
            Topology::SmallWorld { k: 10, beta: 0.1 }.neighbours(10, 0),
            Err(Error::DegreeTooLarge { .. })
        ));
        assert_eq!(
            Topology::Torus.neighbours(13, 0),
            Err(Error::NotFactorable { n: 13 })
        );
        assert_eq!(
            Topology::Ring.neighbours(2, 0),
            Err(Error::TooFewPeers {
                topology: "ring",
                n: 2,
                min: 3
            })
        );
        assert!(matches!(
            Topology::FullyConnected.spectral_gap(1, 0),
            Err(Error::TooFewPeers { .. })
        ));
        assert!(matches!(
            Topology::EpidemicSampling { s: 0 }.spectral_gap(10, 0),
            Err(Error::DegreeTooSmall { .. })
        ));
        assert!(matches!(
            Topology::EpidemicSampling { s: 10 }.spectral_gap(10, 0),
            Err(Error::DegreeTooLarge { .. })
        ));
        assert_eq!(
            Topology::ErdosRenyi { p: 0.0 }.neighbours(10, 0),
            Err(Error::Disconnected {
                topology: "Erdős–Rényi",
                n: 10,
                attempts: ATTEMPTS
            })
        );
        assert_eq!(
            Error::OddDegreeSum { degree: 3, n: 11 }.to_string(),
            "no 3-regular graph on 11 peers: n × degree is odd"
        );
    }

    #[test]
    fn topology_reads_from_toml() {
        #[derive(Deserialize)]
        struct Scenario {
            topology: Topology,
        }
        let read = |s: &str| toml::from_str::<Scenario>(s).map(|s| s.topology);
        assert_eq!(
            read(r#"topology = { kind = "random_regular", degree = 8 }"#).expect("valid"),
            Topology::RandomRegular { degree: 8 }
        );
        assert_eq!(
            read(r#"topology = { kind = "ring" }"#).expect("valid"),
            Topology::Ring
        );
        assert_eq!(
            read("[topology]\nkind = \"small_world\"\nk = 4\nbeta = 0.1").expect("valid"),
            Topology::SmallWorld { k: 4, beta: 0.1 }
        );
        assert_eq!(
            read(r#"topology = { kind = "epidemic_sampling", s = 7 }"#).expect("valid"),
            Topology::EpidemicSampling { s: 7 }
        );
        assert!(read(r#"topology = "ring""#).is_err());
        assert!(
            read(r#"topology = { kind = "random_regular", degree = 4, p = 0.5 }"#).is_err(),
            "unknown field"
        );
    }

    #[test]
    fn topology_gap_of_fully_connected_is_one() {
        for n in [2, 3, 10, 200] {
            let gap = Topology::FullyConnected.spectral_gap(n, 0).expect("valid");
            assert!((gap - 1.0).abs() < 1e-12, "{n}: {gap}");
        }
        assert_eq!(spectral_gap(&[]), 1.0);
        assert_eq!(spectral_gap(&[vec![]]), 1.0);
    }

    #[test]
    fn topology_gap_of_ring_matches_closed_form() {
        // W = (I + A)/3: λ_k = 1/3 + 2/3 cos(2πk/n); λ₂ = 1/3 + 2/3 cos(2π/n), and for even n
        // λₙ = −1/3.
        for n in [3, 4, 5, 6, 10, 64, 101, 1024] {
            let lambda2 = 1.0 / 3.0 + 2.0 / 3.0 * (2.0 * PI / n as f64).cos();
            let lambda_n = 1.0 / 3.0 + 2.0 / 3.0 * (2.0 * PI * (n / 2) as f64 / n as f64).cos();
            let expected = 1.0 - lambda2.abs().max(lambda_n.abs());
            let gap = Topology::Ring.spectral_gap(n, 0).expect("valid");
            assert!((gap - expected).abs() < 1e-9, "{n}: {gap} vs {expected}");
            let g = build(&Topology::Ring, n, 0);
            assert!((circulant_gap(n, &g) - expected).abs() < 1e-12);
        }
    }

    #[test]
    fn topology_gap_of_circulant_graphs_matches_closed_form() {
        for (topology, n) in [
            (Topology::Exponential, 1024),
            (Topology::Exponential, 1000),
            (Topology::Exponential, 37),
            (Topology::SmallWorld { k: 6, beta: 0.0 }, 500),
        ] {
            let g = build(&topology, n, 0);
            let (gap, expected) = (spectral_gap(&g), circulant_gap(n, &g));
            assert!(
                (gap - expected).abs() < 1e-9,
                "{topology:?} {n}: {gap} vs {expected}"
            );
        }
        // Torus r × c, all degrees 4: λ = (1 + 2 cos(2πa/r) + 2 cos(2πb/c)) / 5.
        for (n, rows, cols) in [(1024, 32, 32), (12, 3, 4), (35, 5, 7)] {
            let worst = (0..rows)
                .flat_map(|a| (0..cols).map(move |b| (a, b)))
                .filter(|&ab| ab != (0, 0))
                .map(|(a, b)| {
                    let cos = |k: usize, m: usize| (2.0 * PI * k as f64 / m as f64).cos();
                    ((1.0 + 2.0 * cos(a, rows) + 2.0 * cos(b, cols)) / 5.0).abs()
                })
                .fold(0.0, f64::max);
            let gap = Topology::Torus.spectral_gap(n, 0).expect("valid");
            assert!((gap - (1.0 - worst)).abs() < 1e-9, "{n}: {gap}");
        }
    }

    #[test]
    fn topology_gap_matches_dense_eigenvalues_on_random_graphs() {
        let mut checked = 0;
        for seed in 0..8u64 {
            let n = 10 + (seed as usize * 7) % 55;
            for topology in [
                Topology::ErdosRenyi { p: 0.2 },
                Topology::RandomRegular {
                    degree: 3 + seed as usize % 4,
                },
                Topology::SmallWorld { k: 4, beta: 0.3 },
            ] {
                let Ok(Some(g)) = topology.neighbours(n, seed) else {
                    continue; // odd n × degree
                };
                let (gap, dense) = (spectral_gap(&g), dense_gap(dense_mixing(&g)));
                assert!(
                    (gap - dense).abs() < 1e-9,
                    "{topology:?} n = {n} seed {seed}: {gap} vs {dense}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
        // Irregular degrees, a hub and leaves.
        let mut star: Vec<Vec<usize>> = vec![(1..20).collect()];
        star.extend((1..20).map(|_| vec![0]));
        star[1].push(2);
        star[2].push(1);
        let (gap, dense) = (spectral_gap(&star), dense_gap(dense_mixing(&star)));
        assert!((gap - dense).abs() < 1e-9, "{gap} vs {dense}");
    }

    #[test]
    fn topology_gap_of_disconnected_graph_is_zero() {
        let triangles = vec![
            vec![1, 2],
            vec![0, 2],
            vec![0, 1],
            vec![4, 5],
            vec![3, 5],
            vec![3, 4],
        ];
        assert!(spectral_gap(&triangles) < 1e-9);
        assert!(spectral_gap(&[vec![], vec![]]) < 1e-9);
    }

    #[test]
    fn topology_gap_of_epidemic_sampling_matches_expected_matrix() {
        let (n, s) = (8, 3);
        let closed = Topology::EpidemicSampling { s }
            .spectral_gap(n, 0)
            .expect("valid");
        assert!((closed - (s * n) as f64 / ((s + 1) * (n - 1)) as f64).abs() < 1e-15);
        // The expected matrix, averaged over draws of the protocol's sampling.
        let draws = 20_000;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut mean = vec![vec![0.0; n]; n];
        for _ in 0..draws {
            for (i, row) in mean.iter_mut().enumerate() {
                row[i] += 1.0 / (s + 1) as f64 / f64::from(draws);
                for j in index::sample(&mut rng, n - 1, s) {
                    let j = if j >= i { j + 1 } else { j };
                    row[j] += 1.0 / (s + 1) as f64 / f64::from(draws);
                }
            }
        }
        let b = s as f64 / ((s + 1) * (n - 1)) as f64;
        let exact: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j { 1.0 / (s + 1) as f64 } else { b })
                    .collect()
            })
            .collect();
        for (m, e) in mean.iter().flatten().zip(exact.iter().flatten()) {
            assert!((m - e).abs() < 0.005, "{m} vs {e}");
        }
        assert!((dense_gap(exact) - closed).abs() < 1e-12);
        let symmetric: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| (mean[i][j] + mean[j][i]) / 2.0).collect())
            .collect();
        // Only doubly stochastic up to sampling noise: λ₁ is 1 within it.
        let values = jacobi_eigenvalues(symmetric);
        assert!((values[0] - 1.0).abs() < 1e-3);
        let sampled = 1.0 - values[1].abs().max(values[n - 1].abs());
        assert!((sampled - closed).abs() < 0.02, "{sampled} vs {closed}");
        assert_eq!(
            Topology::EpidemicSampling { s: 9 }.spectral_gap(10, 0),
            Ok(1.0)
        );
    }

    #[test]
    fn topology_gaps_are_ordered_at_1024_peers() {
        let gap = |t: Topology| t.spectral_gap(1024, 3).expect("valid");
        let ring = gap(Topology::Ring);
        let torus = gap(Topology::Torus);
        let exponential = gap(Topology::Exponential);
        let sampling = gap(Topology::EpidemicSampling { s: 7 });
        let regular = gap(Topology::RandomRegular { degree: 8 });
        assert!(0.0 < ring && ring < torus, "{ring} {torus}");
        assert!(torus < exponential, "{torus} {exponential}");
        assert!(sampling > ring && sampling > exponential, "{sampling}");
        assert!(torus < regular && regular < sampling, "{regular}");
    }

    #[test]
    fn topology_gap_of_large_random_regular_graph() {
        // Kesten–McKay / Friedman: λ₂(A) → 2√(d−1) and λₙ(A) → −2√(d−1), and W = (I + A)/9,
        // so the gap tends to 1 − (1 + 2√7)/9 ≈ 0.3009.
        let graph = build(&Topology::RandomRegular { degree: 8 }, 20_000, 7);
        let gap = spectral_gap(&graph);
        let limit = 1.0 - (1.0 + 2.0 * 7f64.sqrt()) / 9.0;
        assert!((gap - limit).abs() < 0.01, "{gap} vs {limit}");
    }
}
