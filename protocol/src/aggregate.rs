//! Averaging rules: how a peer merges its own parameter vector with its neighbours'.
//!
//! Every rule works on flat `f32` slices of one length and writes into a caller-owned output
//! slice: the sample-weighted mean (FedAvg / D-PSGD), Metropolis–Hastings weights from degrees,
//! and three rules that bound what a malicious neighbour can do — coordinate-wise median,
//! coordinate-wise trimmed mean and ClippedGossip. [`Rule`] is the configured choice and
//! [`Rule::apply`] the entry point of the peer; the free functions are the same kernels, usable on
//! their own and by benchmarks.
//!
//! What this module must never do:
//! - **Panic on hostile values.** Parameters come from other hospitals: NaN, infinities, `±1e30`,
//!   mismatched lengths, zero or infinite sample weights and zero degrees are all answered with a
//!   typed [`Error`] or tolerated by design. Order statistics use the IEEE-754 total order (the one
//!   of [`f32::total_cmp`]), so a NaN is simply an extreme value: positive NaNs sort above `+inf`,
//!   negative ones below `-inf`.
//! - **Allocate in the per-coordinate loops.** Vectors have millions of coordinates. Buffers live
//!   in a [`Scratch`] that the caller keeps between rounds; once it has grown to the largest
//!   neighbourhood, [`Rule::apply`] allocates nothing.
//! - **Do I/O or read a clock or OS randomness.** The rules are pure functions of their inputs, so
//!   every peer (and every simulation replay) merges bit for bit the same way.
//!
//! Numerics: sums are accumulated in `f64` and rounded to `f32` once, so the weighted mean agrees
//! with an `f64` reference to within `f32` rounding. The mean rules ([`Rule::Mean`],
//! [`Rule::MetropolisHastings`]) refuse a non-finite input with [`Error::NonFinite`] instead of
//! spreading it; the robust rules tolerate non-finite values as outliers, and write a NaN result
//! (possible only when outliers win) as the one canonical [`f32::NAN`].
//!
//! Speed: everything walks the coordinates in blocks that stay in cache while all inputs pass.
//! The mean runs at the speed of a plain `f32` sum loop (memory-bound); median, trimmed mean and
//! ClippedGossip take 2–4× the mean's time for 8 neighbours × 1M floats (measured here). The median and the
//! trimmed mean gather a block of every input, map each `f32` to an `i32` key with the same order as
//! [`f32::total_cmp`], and sort all coordinates of the block at once with a Batcher odd–even merge
//! network whose compare-exchanges are branch-free `min`/`max` over whole rows (so they vectorize),
//! instead of calling a selection routine once per coordinate.

use serde::{Deserialize, Serialize};

/// Coordinates per block of the mean and of ClippedGossip: the `f64` accumulator (16 KiB) stays
/// in L1 while every input streams through it once.
const BLOCK: usize = 2048;

/// Keys (`i32`) gathered per block by the order-statistics rules (64 KiB): all inputs of a block
/// stay in L1/L2 while the sorting network makes its passes over them. Measured here, 4096 keys
/// were slower and 8192 no faster.
const KEY_BUDGET: usize = 16384;

/// Fewest coordinates per block of the order-statistics rules, so that very large neighbourhoods
/// still give rows long enough to vectorize.
const MIN_KEY_BLOCK: usize = 16;

/// Neighbours whose distances and coefficients [`clipped_gossip`] keeps on the stack.
const STACK_NEIGHBOURS: usize = 64;

/// Tolerance when rounding `byzantine_fraction × neighbours` down, so that a fraction such as
/// `0.35` (stored as `0.3499999940…` in `f32`) of 20 neighbours gives 7 and not 6.
const FRACTION_TOLERANCE: f64 = 1e-4;

/// How a peer merges its own parameters with its neighbours'.
///
/// Internally tagged, so in a TOML config whose field is `rule` it reads:
///
/// ```toml
/// [rule]
/// rule = "clipped_gossip"
/// tau = { kind = "adaptive", byzantine_fraction = 0.2 }
/// ```
///
/// or inline, `rule = { rule = "trimmed_mean", trim = 1 }` (a bare `rule = "median"` is not
/// accepted: the tag lives inside a table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    /// Mean weighted by each contribution's sample weight (FedAvg / D-PSGD with sample weights).
    /// Not robust: one neighbour can move the result anywhere.
    #[default]
    Mean,
    /// Metropolis–Hastings weights from degrees: `w_ij = 1 / (1 + max(d_i, d_j))` and
    /// `w_ii = 1 - Σ_j w_ij`. Doubly stochastic on an undirected graph, so repeated gossip
    /// preserves the uniform average of all peers. Sample weights are not used (but still checked).
    /// The own degree must be at least the number of neighbours merged, every neighbour's degree at
    /// least 1. Not robust.
    MetropolisHastings,
    /// Coordinate-wise median over own and neighbours' values; with an even count, the mean of the
    /// two middle values. Unweighted. Stays within the honest values' range while fewer than half
    /// of the inputs are outliers.
    Median,
    /// Coordinate-wise trimmed mean: per coordinate, drop the `trim` largest and the `trim`
    /// smallest values and average the rest (unweighted). Needs more than `2 × trim` inputs; stays
    /// within the honest values' range while at most `trim` inputs are outliers.
    TrimmedMean {
        /// Values dropped at each end, per coordinate.
        trim: usize,
    },
    /// ClippedGossip (He, Karimireddy & Jaggi, 2022):
    /// `x_i + Σ_j w_ij · clip(x_j − x_i, τ)` with `clip(z, τ) = z · min(1, τ / ‖z‖₂)` over the
    /// whole vector and `w_ij` the sample-weight share (the own weight included in the total, so
    /// the own share is the weight of staying put). The model moves by at most `Σ_j w_ij · τ ≤ τ`,
    /// whatever the neighbours send. A neighbour with a non-finite value is dropped (clipped to
    /// zero) and counted as clipped.
    ClippedGossip {
        /// How the clipping radius is chosen.
        tau: Tau,
    },
}

/// The clipping radius of [`Rule::ClippedGossip`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tau {
    /// The same radius every round; finite and `> 0`.
    Fixed {
        /// The radius, in parameter-space L2 distance.
        radius: f32,
    },
    /// A radius chosen every round from the neighbours' distances, as in the paper's experiments.
    ///
    /// Exactly: with `m` neighbours at L2 distances `d_(1) ≤ … ≤ d_(m)` from the own vector, let
    /// `k = ⌊byzantine_fraction · m⌋` (rounded down with a `1e-4` tolerance for `f32` rounding);
    /// then `τ = d_(m−k)`. Only neighbours strictly farther than `τ` are clipped, so at most `k`
    /// finite neighbours are, and if at most `k` neighbours are Byzantine, `τ` is no larger than
    /// the farthest honest neighbour's distance. Non-finite neighbours count as infinitely far.
    /// Note that when `byzantine_fraction · m < 1` nothing is clipped (e.g. `0.2` with 4
    /// neighbours): use a fixed radius, or a larger fraction, on sparse graphs.
    Adaptive {
        /// Assumed fraction of Byzantine neighbours, in `[0, 1)`.
        byzantine_fraction: f32,
    },
}

/// One input to a rule: a parameter vector, its sample weight and its author's degree.
#[derive(Clone, Copy, Debug)]
pub struct Contribution<'a> {
    /// The parameters; as long as the output.
    pub params: &'a [f32],
    /// Sample weight (training samples behind these parameters); finite and `> 0`.
    pub weight: f64,
    /// The author's degree (number of neighbours it mixes with), for Metropolis–Hastings.
    pub degree: u32,
}

/// What a merge did, for events and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Vectors merged, the own one included.
    pub inputs: usize,
    /// Neighbours clipped by ClippedGossip (non-finite ones included); 0 for the other rules.
    pub clipped: usize,
    /// Clipping radius used by ClippedGossip; `None` for the other rules, and when there was no
    /// neighbour to clip.
    pub tau: Option<f32>,
}

/// Reusable buffers, so that a rule allocates nothing in the hot loop once warmed up.
///
/// Keep one per peer and pass it to every [`Rule::apply`]; it grows to the largest neighbourhood
/// seen and is never shrunk.
#[derive(Default, Debug)]
pub struct Scratch {
    /// A block of sortable keys, input-major: row `j` holds input `j`'s coordinates of the block.
    keys: Vec<i32>,
    /// Compare-exchange pairs of the sorting network for `network_inputs` rows.
    network: Vec<(usize, usize)>,
    /// Row count `network` was built for (0: not built).
    network_inputs: usize,
    /// Weights of the inputs, own first.
    weights: Vec<f64>,
    /// Degrees of the neighbours.
    degrees: Vec<u32>,
    /// Distances of the neighbours from the own vector.
    distances: Vec<f64>,
    /// Distances again, reordered by the selection of the adaptive radius.
    order: Vec<f64>,
    /// Per-neighbour ClippedGossip coefficients.
    coefficients: Vec<f64>,
}

/// Why a rule cannot merge its inputs. On error the output's contents are unspecified.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// There was nothing to merge.
    #[error("no inputs to aggregate")]
    Empty,
    /// An input's length differs from the output's.
    #[error("input {index} has {found} parameters, expected {expected}")]
    LengthMismatch {
        /// The output's length.
        expected: usize,
        /// The input's length.
        found: usize,
        /// Position of the input (the own vector is 0, neighbours follow).
        index: usize,
    },
    /// The number of weights differs from the number of inputs.
    #[error("{found} weights for {expected} inputs")]
    WeightCount {
        /// Number of inputs.
        expected: usize,
        /// Number of weights.
        found: usize,
    },
    /// A weight is zero, negative, infinite or NaN.
    #[error("input {index} has weight {weight}: weights must be finite and > 0")]
    BadWeight {
        /// Position of the input (the own vector is 0, neighbours follow).
        index: usize,
        /// The weight.
        weight: f64,
    },
    /// A neighbour's degree is 0, which cannot be: it is connected to this peer.
    #[error("input {index} has degree {degree}: a neighbour's degree is at least 1")]
    BadDegree {
        /// Position of the input (neighbours start at 1).
        index: usize,
        /// The degree.
        degree: u32,
    },
    /// The own degree is smaller than the number of neighbours merged, which would give the own
    /// vector a negative Metropolis–Hastings weight.
    #[error("own degree {degree} is smaller than the {neighbours} neighbours merged")]
    DegreeTooSmall {
        /// The own degree.
        degree: u32,
        /// Neighbours merged.
        neighbours: usize,
    },
    /// Trimming `trim` values at each end leaves no value to average.
    #[error("cannot trim {trim} values from each end of {inputs} inputs")]
    TrimTooLarge {
        /// Values dropped at each end.
        trim: usize,
        /// Number of inputs.
        inputs: usize,
    },
    /// A clipping radius or Byzantine fraction is out of range: a radius must be finite and
    /// `> 0` (`≥ 0` for [`clipped_gossip`]), a fraction in `[0, 1)`.
    #[error("invalid ClippedGossip radius {0:?}")]
    BadTau(Tau),
    /// An input that a non-robust rule would average (or the own vector of ClippedGossip) holds a
    /// NaN or an infinity.
    #[error("input {index} has a non-finite value at coordinate {coordinate}")]
    NonFinite {
        /// Position of the input (the own vector is 0, neighbours follow).
        index: usize,
        /// First non-finite coordinate found.
        coordinate: usize,
    },
}

impl Tau {
    fn check(self) -> Result<(), Error> {
        let ok = match self {
            Tau::Fixed { radius } => radius.is_finite() && radius > 0.0,
            Tau::Adaptive { byzantine_fraction } => (0.0..1.0).contains(&byzantine_fraction),
        };
        if ok { Ok(()) } else { Err(Error::BadTau(self)) }
    }
}

impl Rule {
    /// Checks a rule's own parameters (the clipping radius or fraction), as config validation
    /// does. A trim can only be checked against the number of inputs, by [`Rule::apply`].
    pub fn check(&self) -> Result<(), Error> {
        match self {
            Rule::Mean | Rule::MetropolisHastings | Rule::Median | Rule::TrimmedMean { .. } => {
                Ok(())
            }
            Rule::ClippedGossip { tau } => tau.check(),
        }
    }

    /// Merges `own` with `others` into `out`, which must be as long as `own.params`.
    ///
    /// Every contribution's length and weight is checked whatever the rule (and the degrees for
    /// Metropolis–Hastings). With no `others`, `out` is a copy of `own.params` for every rule.
    pub fn apply(
        &self,
        own: Contribution<'_>,
        others: &[Contribution<'_>],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<Summary, Error> {
        self.check()?;
        let inputs = Merge {
            own: own.params,
            others,
        };
        let n = inputs.count();
        check_lengths(out.len(), &inputs)?;
        check_weight(0, own.weight)?;
        for (i, other) in others.iter().enumerate() {
            check_weight(i + 1, other.weight)?;
        }
        let mut summary = Summary {
            inputs: n,
            clipped: 0,
            tau: None,
        };
        if others.is_empty() {
            out.copy_from_slice(own.params);
            return Ok(summary);
        }
        match self {
            Rule::Mean => {
                scratch.weights.clear();
                scratch.weights.push(own.weight);
                scratch.weights.extend(others.iter().map(|c| c.weight));
                mean_core(out, &inputs, &scratch.weights)?;
            }
            Rule::MetropolisHastings => {
                for (i, other) in others.iter().enumerate() {
                    if other.degree == 0 {
                        return Err(Error::BadDegree {
                            index: i + 1,
                            degree: other.degree,
                        });
                    }
                }
                if usize::try_from(own.degree).is_ok_and(|d| d < others.len()) {
                    return Err(Error::DegreeTooSmall {
                        degree: own.degree,
                        neighbours: others.len(),
                    });
                }
                scratch.degrees.clear();
                scratch.degrees.extend(others.iter().map(|c| c.degree));
                metropolis_hastings_weights(own.degree, &scratch.degrees, &mut scratch.weights);
                mean_core(out, &inputs, &scratch.weights)?;
            }
            Rule::Median => median_core(out, &inputs, scratch),
            Rule::TrimmedMean { trim } => {
                check_trim(*trim, n)?;
                trimmed_core(out, &inputs, *trim, scratch);
            }
            Rule::ClippedGossip { tau } => {
                check_finite(0, own.params)?;
                let Scratch {
                    weights,
                    distances,
                    order,
                    coefficients,
                    ..
                } = scratch;
                weights.clear();
                weights.push(own.weight);
                weights.extend(others.iter().map(|c| c.weight));
                distances.clear();
                distances.resize(others.len(), 0.0);
                neighbour_distances(&inputs, distances);
                let radius = match *tau {
                    Tau::Fixed { radius } => f64::from(radius),
                    Tau::Adaptive { byzantine_fraction } => {
                        adaptive_radius(distances, byzantine_fraction, order)
                    }
                };
                coefficients.clear();
                coefficients.resize(others.len(), 0.0);
                summary.clipped =
                    clipped_core(out, &inputs, weights, distances, radius, coefficients);
                // The radius is reported in f32 like the config; an adaptive one beyond f32's
                // range (only from absurd vectors) reads as infinity.
                summary.tau = Some(radius as f32);
            }
        }
        Ok(summary)
    }
}

/// Writes the weighted mean `Σ_j w_j · x_j / Σ_j w_j` of `inputs` into `out`.
///
/// Every input must be as long as `out` and every weight finite and `> 0`; sums are accumulated
/// in `f64` and rounded once. A non-finite input value is refused with [`Error::NonFinite`].
pub fn weighted_mean(out: &mut [f32], inputs: &[&[f32]], weights: &[f64]) -> Result<(), Error> {
    if inputs.is_empty() {
        return Err(Error::Empty);
    }
    check_weights(inputs.len(), weights)?;
    check_lengths(out.len(), inputs)?;
    mean_core(out, inputs, weights)
}

/// Metropolis–Hastings weights of a peer with degree `own_degree` and neighbours of degrees
/// `neighbour_degrees`, written to `out` (cleared first): `out[0]` is the own weight
/// `1 − Σ_j out[j]`, then `out[j] = 1 / (1 + max(own_degree, d_j))` for each neighbour in order.
///
/// The neighbour weights are symmetric (`w_ij` computed by `i` equals `w_ji` computed by `j`) and
/// all weights sum to 1. The own weight is positive when `own_degree ≥ neighbour_degrees.len()`
/// (always so on a graph that lists all of a peer's neighbours); otherwise it can be negative, which
/// [`Rule::apply`] refuses with [`Error::DegreeTooSmall`] before calling this.
pub fn metropolis_hastings_weights(own_degree: u32, neighbour_degrees: &[u32], out: &mut Vec<f64>) {
    out.clear();
    out.push(1.0);
    let mut others = 0.0;
    for &degree in neighbour_degrees {
        let weight = 1.0 / (1.0 + f64::from(own_degree.max(degree)));
        others += weight;
        out.push(weight);
    }
    out[0] = 1.0 - others;
}

/// Writes the coordinate-wise median of `inputs` into `out`; with an even number of inputs, the
/// mean of the two middle values.
///
/// Values are ordered as by [`f32::total_cmp`], so NaNs and infinities are extremes and never
/// panic. The result does not depend on the order of `inputs`, bit for bit; a NaN result is
/// always the canonical [`f32::NAN`].
pub fn coordinate_median(
    out: &mut [f32],
    inputs: &[&[f32]],
    scratch: &mut Scratch,
) -> Result<(), Error> {
    if inputs.is_empty() {
        return Err(Error::Empty);
    }
    check_lengths(out.len(), inputs)?;
    median_core(out, inputs, scratch);
    Ok(())
}

/// Writes the coordinate-wise trimmed mean of `inputs` into `out`: per coordinate, the `trim`
/// largest and `trim` smallest values (as ordered by [`f32::total_cmp`]) are dropped and the rest
/// averaged in `f64`.
///
/// Needs more than `2 × trim` inputs. The result does not depend on the order of `inputs`, bit for
/// bit; a NaN result (only possible when more than `trim` values are non-finite) is always the
/// canonical [`f32::NAN`].
pub fn trimmed_mean(
    out: &mut [f32],
    inputs: &[&[f32]],
    trim: usize,
    scratch: &mut Scratch,
) -> Result<(), Error> {
    if inputs.is_empty() {
        return Err(Error::Empty);
    }
    check_trim(trim, inputs.len())?;
    check_lengths(out.len(), inputs)?;
    trimmed_core(out, inputs, trim, scratch);
    Ok(())
}

/// Writes `own + Σ_j w_j · clip(x_j − own, tau)` into `out` and returns how many neighbours were
/// clipped; `clip(z, tau) = z · min(1, tau / ‖z‖₂)`.
///
/// `weights` holds the own weight first, then one per neighbour; they are normalized by their sum
/// inside, so the own weight is the share of staying put. `tau` must be finite and `≥ 0` (0: the
/// model does not move). A neighbour with a non-finite value is dropped and counted as clipped;
/// a non-finite own value is refused with [`Error::NonFinite`]. Allocates only with more than
/// 64 neighbours; [`Rule::apply`] never does once warmed up.
pub fn clipped_gossip(
    out: &mut [f32],
    own: &[f32],
    neighbours: &[&[f32]],
    weights: &[f64],
    tau: f32,
) -> Result<usize, Error> {
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(Error::BadTau(Tau::Fixed { radius: tau }));
    }
    let inputs = WithOwn { own, neighbours };
    check_weights(inputs.count(), weights)?;
    check_lengths(out.len(), &inputs)?;
    check_finite(0, own)?;
    let m = neighbours.len();
    let mut stack = [0.0; 2 * STACK_NEIGHBOURS];
    let mut heap = Vec::new();
    let buffer = if m <= STACK_NEIGHBOURS {
        &mut stack[..2 * m]
    } else {
        heap.resize(2 * m, 0.0);
        &mut heap[..]
    };
    let (distances, coefficients) = buffer.split_at_mut(m);
    neighbour_distances(&inputs, distances);
    Ok(clipped_core(
        out,
        &inputs,
        weights,
        distances,
        f64::from(tau),
        coefficients,
    ))
}

/// L2 distance `‖a − b‖₂`, accumulated in `f64`. Vectors of different lengths are infinitely far
/// apart; a NaN anywhere gives NaN.
pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    squared_distance(a, b).sqrt()
}

/// The vectors a kernel reads, by position: lets the public kernels (slices of slices) and
/// [`Rule::apply`] (contributions) share one implementation without collecting references.
trait Inputs {
    fn count(&self) -> usize;
    fn input(&self, index: usize) -> &[f32];
}

impl Inputs for [&[f32]] {
    fn count(&self) -> usize {
        self.len()
    }

    fn input(&self, index: usize) -> &[f32] {
        self[index]
    }
}

/// The own vector at position 0, then the contributions of the neighbours.
struct Merge<'c, 'a> {
    own: &'a [f32],
    others: &'c [Contribution<'a>],
}

impl Inputs for Merge<'_, '_> {
    fn count(&self) -> usize {
        1 + self.others.len()
    }

    fn input(&self, index: usize) -> &[f32] {
        match index.checked_sub(1) {
            None => self.own,
            Some(i) => self.others[i].params,
        }
    }
}

/// The own vector at position 0, then the neighbours.
struct WithOwn<'n, 'a> {
    own: &'a [f32],
    neighbours: &'n [&'a [f32]],
}

impl Inputs for WithOwn<'_, '_> {
    fn count(&self) -> usize {
        1 + self.neighbours.len()
    }

    fn input(&self, index: usize) -> &[f32] {
        match index.checked_sub(1) {
            None => self.own,
            Some(i) => self.neighbours[i],
        }
    }
}

fn check_lengths<I: Inputs + ?Sized>(expected: usize, inputs: &I) -> Result<(), Error> {
    for index in 0..inputs.count() {
        let found = inputs.input(index).len();
        if found != expected {
            return Err(Error::LengthMismatch {
                expected,
                found,
                index,
            });
        }
    }
    Ok(())
}

fn check_weight(index: usize, weight: f64) -> Result<(), Error> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(Error::BadWeight { index, weight })
    }
}

fn check_weights(expected: usize, weights: &[f64]) -> Result<(), Error> {
    if weights.len() != expected {
        return Err(Error::WeightCount {
            expected,
            found: weights.len(),
        });
    }
    for (index, &weight) in weights.iter().enumerate() {
        check_weight(index, weight)?;
    }
    Ok(())
}

fn check_trim(trim: usize, inputs: usize) -> Result<(), Error> {
    // At least one value must remain: inputs − 2·trim ≥ 1, written without overflow.
    if inputs == 0 || trim > (inputs - 1) / 2 {
        Err(Error::TrimTooLarge { trim, inputs })
    } else {
        Ok(())
    }
}

fn check_finite(index: usize, values: &[f32]) -> Result<(), Error> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(coordinate) => Err(Error::NonFinite { index, coordinate }),
    }
}

/// Weighted mean of already checked inputs (lengths equal to `out`, weights finite and > 0).
fn mean_core<I: Inputs + ?Sized>(
    out: &mut [f32],
    inputs: &I,
    weights: &[f64],
) -> Result<(), Error> {
    let n = inputs.count();
    // Weights are divided by the largest first, so their sum cannot overflow (it lies in [1, n])
    // and no reciprocal of a subnormal weight is ever taken.
    let max = weights.iter().copied().fold(0.0, f64::max);
    let total: f64 = weights.iter().map(|w| w / max).sum();
    let share = |j: usize| weights[j] / max / total;
    let mut acc = [0.0f64; BLOCK];
    for (b, out_block) in out.chunks_mut(BLOCK).enumerate() {
        let range = b * BLOCK..b * BLOCK + out_block.len();
        let acc = &mut acc[..out_block.len()];
        let w = share(0);
        for (a, &x) in acc.iter_mut().zip(&inputs.input(0)[range.clone()]) {
            *a = w * f64::from(x);
        }
        // Two inputs per pass halve the accumulator's loads and stores.
        let mut j = 1;
        while j + 1 < n {
            let (wp, wq) = (share(j), share(j + 1));
            let p = &inputs.input(j)[range.clone()];
            let q = &inputs.input(j + 1)[range.clone()];
            for ((a, &x), &y) in acc.iter_mut().zip(p).zip(q) {
                *a += wp * f64::from(x) + wq * f64::from(y);
            }
            j += 2;
        }
        if j < n {
            let w = share(j);
            for (a, &x) in acc.iter_mut().zip(&inputs.input(j)[range.clone()]) {
                *a += w * f64::from(x);
            }
        }
        // With finite inputs and shares summing to 1 the result is finite, so a non-finite output
        // points at a non-finite input; the (rare) search for it runs only then.
        let mut bad = false;
        for (o, &a) in out_block.iter_mut().zip(acc.iter()) {
            let v = a as f32;
            bad |= !v.is_finite();
            *o = v;
        }
        if bad {
            for index in 0..n {
                if let Err(e) = check_finite(index, &inputs.input(index)[range.clone()]) {
                    return Err(match e {
                        Error::NonFinite { index, coordinate } => Error::NonFinite {
                            index,
                            coordinate: coordinate + range.start,
                        },
                        other => other,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Maps an `f32` to an `i32` whose signed order is the order of [`f32::total_cmp`] (the same bit
/// trick `total_cmp` uses). An involution: [`from_key`] undoes it bit for bit.
#[inline]
fn key(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ ((((bits >> 31) as u32) >> 1) as i32)
}

#[inline]
fn from_key(k: i32) -> f32 {
    f32::from_bits((k ^ ((((k >> 31) as u32) >> 1) as i32)) as u32)
}

/// Coordinates per block for `n` inputs: `n` rows of keys fill about [`KEY_BUDGET`], in whole
/// multiples of 16 so that rows stay aligned for vector loads.
fn key_block(n: usize) -> usize {
    (KEY_BUDGET / n.max(1)).clamp(MIN_KEY_BLOCK, BLOCK) / 16 * 16
}

/// Batcher's odd–even merge sorting network for `n` elements, as compare-exchange pairs `(a, b)`
/// with `a < b`. Built for the next power of two with the comparators that touch positions `≥ n`
/// left out, which still sorts: those positions would hold `+∞` padding that never moves.
fn batcher_network(n: usize, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let mut p = 1;
    while p < n {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < n {
                for i in 0..k.min(n - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                        out.push((i + j, i + j + k));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
}

/// Sorts every coordinate of `inputs` block by block and hands each sorted block to `emit` as
/// rows of keys (`rows[r * stride + c]` is the `r`-th smallest value of coordinate `c` of the
/// block) together with the block of `out` to fill.
fn sorted_blocks<I: Inputs + ?Sized>(
    out: &mut [f32],
    inputs: &I,
    scratch: &mut Scratch,
    mut emit: impl FnMut(&[i32], usize, &mut [f32]),
) {
    let n = inputs.count();
    let stride = key_block(n);
    if scratch.network_inputs != n {
        batcher_network(n, &mut scratch.network);
        scratch.network_inputs = n;
    }
    if scratch.keys.len() < n * stride {
        scratch.keys.resize(n * stride, 0);
    }
    let keys = &mut scratch.keys[..n * stride];
    for (b, out_block) in out.chunks_mut(stride).enumerate() {
        let start = b * stride;
        let len = out_block.len();
        for (j, row) in keys.chunks_exact_mut(stride).enumerate() {
            let source = &inputs.input(j)[start..start + len];
            for (k, &x) in row.iter_mut().zip(source) {
                *k = key(x);
            }
        }
        for &(a, c) in &scratch.network {
            let (low, high) = keys.split_at_mut(c * stride);
            let first = &mut low[a * stride..a * stride + len];
            let second = &mut high[..len];
            for (x, y) in first.iter_mut().zip(second.iter_mut()) {
                let (p, q) = (*x, *y);
                *x = p.min(q);
                *y = p.max(q);
            }
        }
        emit(keys, stride, out_block);
    }
}

/// Replaces any NaN by the one `f32::NAN`. Rust leaves the sign and payload of a NaN produced by
/// arithmetic unspecified (on x86 they depend on operand order, which the optimizer may swap), and
/// peers replaying a merge must agree bit for bit.
#[inline]
fn canonical(v: f32) -> f32 {
    if v.is_nan() { f32::NAN } else { v }
}

fn median_core<I: Inputs + ?Sized>(out: &mut [f32], inputs: &I, scratch: &mut Scratch) {
    let n = inputs.count();
    let middle = n / 2;
    sorted_blocks(out, inputs, scratch, |rows, stride, out_block| {
        let upper = &rows[middle * stride..middle * stride + out_block.len()];
        if n % 2 == 1 {
            for (o, &k) in out_block.iter_mut().zip(upper) {
                *o = canonical(from_key(k));
            }
        } else {
            let lower = &rows[(middle - 1) * stride..(middle - 1) * stride + out_block.len()];
            for ((o, &l), &u) in out_block.iter_mut().zip(lower).zip(upper) {
                let sum = f64::from(from_key(l)) + f64::from(from_key(u));
                *o = canonical((sum * 0.5) as f32);
            }
        }
    });
}

fn trimmed_core<I: Inputs + ?Sized>(
    out: &mut [f32],
    inputs: &I,
    trim: usize,
    scratch: &mut Scratch,
) {
    let n = inputs.count();
    let kept = n - 2 * trim;
    let divisor = kept as f64;
    let mut acc = [0.0f64; BLOCK];
    sorted_blocks(out, inputs, scratch, |rows, stride, out_block| {
        let len = out_block.len();
        let acc = &mut acc[..len];
        // Summed in sorted order, so the result depends on the multiset of values only. Starting
        // from the first kept value rather than 0 keeps the sign of a lone -0.0.
        let mut kept_rows = rows.chunks_exact(stride).skip(trim).take(kept);
        if let Some(first) = kept_rows.next() {
            for (a, &k) in acc.iter_mut().zip(&first[..len]) {
                *a = f64::from(from_key(k));
            }
        }
        for row in kept_rows {
            for (a, &k) in acc.iter_mut().zip(&row[..len]) {
                *a += f64::from(from_key(k));
            }
        }
        for (o, &a) in out_block.iter_mut().zip(acc.iter()) {
            *o = canonical((a / divisor) as f32);
        }
    });
}

/// Distances of inputs `1..` from input 0 (the own vector) into `out`, one per neighbour, in one
/// blocked pass: the own block stays in L1 while each neighbour streams past it once, instead of
/// the own vector being read again from memory for every neighbour.
fn neighbour_distances<I: Inputs + ?Sized>(inputs: &I, out: &mut [f64]) {
    out.fill(0.0);
    let own = inputs.input(0);
    for start in (0..own.len()).step_by(BLOCK) {
        let own_block = &own[start..own.len().min(start + BLOCK)];
        for (j, sum) in out.iter_mut().enumerate() {
            let block = &inputs.input(j + 1)[start..start + own_block.len()];
            *sum += squared_distance(own_block, block);
        }
    }
    for d in out.iter_mut() {
        *d = d.sqrt();
    }
}

/// `Σ (a_i − b_i)²` in `f64` over slices of equal length, with eight independent partial sums: a
/// fixed order (so the result is reproducible) that the compiler can still vectorize.
fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut a_chunks = a.chunks_exact(8);
    let mut b_chunks = b.chunks_exact(8);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &p), &q) in lanes.iter_mut().zip(x).zip(y) {
            let d = f64::from(p) - f64::from(q);
            *lane += d * d;
        }
    }
    for ((lane, &p), &q) in lanes
        .iter_mut()
        .zip(a_chunks.remainder())
        .zip(b_chunks.remainder())
    {
        let d = f64::from(p) - f64::from(q);
        *lane += d * d;
    }
    lanes.iter().sum()
}

/// The adaptive ClippedGossip radius: the `(m − k)`-th smallest of the `m` distances, with
/// `k = ⌊fraction · m⌋` (see [`Tau::Adaptive`]).
fn adaptive_radius(distances: &[f64], fraction: f32, order: &mut Vec<f64>) -> f64 {
    let m = distances.len();
    if m == 0 {
        return 0.0;
    }
    order.clear();
    order.extend(
        distances
            .iter()
            .map(|&d| if d.is_finite() { d } else { f64::INFINITY }),
    );
    let k = (f64::from(fraction) * m as f64 + FRACTION_TOLERANCE).floor();
    // `as` saturates; k < m for any fraction < 1, the `min` only guards the arithmetic.
    let k = (k as usize).min(m - 1);
    let (_, radius, _) = order.select_nth_unstable_by(m - 1 - k, f64::total_cmp);
    *radius
}

/// ClippedGossip over checked inputs (position 0 is the own vector, finite) with the neighbours'
/// `distances` from it precomputed; `coefficients` is a buffer with one slot per neighbour.
/// Returns the number of neighbours clipped or dropped.
fn clipped_core<I: Inputs + ?Sized>(
    out: &mut [f32],
    inputs: &I,
    weights: &[f64],
    distances: &[f64],
    tau: f64,
    coefficients: &mut [f64],
) -> usize {
    let max = weights.iter().copied().fold(0.0, f64::max);
    let total: f64 = weights.iter().map(|w| w / max).sum();
    let mut clipped = 0;
    for (j, (c, &d)) in coefficients.iter_mut().zip(distances).enumerate() {
        let share = weights[j + 1] / max / total;
        *c = if !d.is_finite() {
            clipped += 1;
            0.0
        } else if d > tau {
            clipped += 1;
            share * (tau / d)
        } else {
            share
        };
    }
    let own = inputs.input(0);
    let mut acc = [0.0f64; BLOCK];
    for (b, out_block) in out.chunks_mut(BLOCK).enumerate() {
        let range = b * BLOCK..b * BLOCK + out_block.len();
        let acc = &mut acc[..out_block.len()];
        acc.fill(0.0);
        let own_block = &own[range.clone()];
        for (j, &c) in coefficients.iter().enumerate() {
            // Skipping zero coefficients also keeps a dropped neighbour's NaNs out (0 · NaN = NaN).
            if c == 0.0 {
                continue;
            }
            let x = &inputs.input(j + 1)[range.clone()];
            for ((a, &v), &o) in acc.iter_mut().zip(x).zip(own_block) {
                *a += c * (f64::from(v) - f64::from(o));
            }
        }
        for ((o, &a), &x) in out_block.iter_mut().zip(acc.iter()).zip(own_block) {
            *o = (f64::from(x) + a) as f32;
        }
    }
    clipped
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Deterministic pseudo-random numbers for the larger hand-made cases (splitmix64).
    struct Sequence(u64);

    impl Sequence {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [-1, 1), with a few exact duplicates and specials mixed in.
        fn value(&mut self) -> f32 {
            match self.next() % 64 {
                0 => f32::NAN,
                1 => -f32::NAN,
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => -0.0,
                5 => 0.0,
                6 => 1e30,
                7 => 0.5,
                _ => ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0,
            }
        }
    }

    fn contribution(params: &[f32], weight: f64, degree: u32) -> Contribution<'_> {
        Contribution {
            params,
            weight,
            degree,
        }
    }

    fn apply(rule: &Rule, own: &[f32], others: &[&[f32]]) -> Result<(Vec<f32>, Summary), Error> {
        let own_c = contribution(own, 1.0, others.len() as u32);
        let others: Vec<_> = others
            .iter()
            .map(|p| contribution(p, 1.0, others.len() as u32))
            .collect();
        let mut out = vec![0.0; own.len()];
        let summary = rule.apply(own_c, &others, &mut out, &mut Scratch::default())?;
        Ok((out, summary))
    }

    /// Per-coordinate sort with `total_cmp`, the obvious reference for the network kernels.
    fn reference_sorted(inputs: &[&[f32]], c: usize) -> Vec<f32> {
        let mut column: Vec<f32> = inputs.iter().map(|x| x[c]).collect();
        column.sort_by(f32::total_cmp);
        column
    }

    fn reference_median(inputs: &[&[f32]]) -> Vec<f32> {
        (0..inputs[0].len())
            .map(|c| {
                let s = reference_sorted(inputs, c);
                let n = s.len();
                canonical(if n % 2 == 1 {
                    s[n / 2]
                } else {
                    ((f64::from(s[n / 2 - 1]) + f64::from(s[n / 2])) * 0.5) as f32
                })
            })
            .collect()
    }

    fn reference_trimmed(inputs: &[&[f32]], trim: usize) -> Vec<f32> {
        (0..inputs[0].len())
            .map(|c| {
                let s = reference_sorted(inputs, c);
                let kept = &s[trim..s.len() - trim];
                let sum: f64 = kept.iter().map(|&v| f64::from(v)).sum();
                canonical((sum / kept.len() as f64) as f32)
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    // ---- weighted mean ----

    #[test]
    fn weighted_mean_by_hand() {
        let mut out = [0.0; 2];
        weighted_mean(&mut out, &[&[1.0, 2.0], &[3.0, 4.0]], &[1.0, 3.0]).expect("valid");
        assert_eq!(out, [2.5, 3.5]);
    }

    #[test]
    fn weighted_mean_of_extreme_weights_and_values() {
        // Weights near f64::MAX would overflow a plain sum; subnormal ones underflow a reciprocal.
        let mut out = [0.0; 2];
        let inputs: [&[f32]; 2] = [&[f32::MAX, -1.0], &[f32::MAX, 3.0]];
        weighted_mean(&mut out, &inputs, &[f64::MAX, f64::MAX]).expect("valid");
        assert_eq!(out, [f32::MAX, 1.0]);
        weighted_mean(&mut out, &inputs, &[5e-324, 5e-324]).expect("valid");
        assert_eq!(out, [f32::MAX, 1.0]);
        weighted_mean(&mut out, &inputs, &[f64::MAX, 5e-324]).expect("valid");
        assert_eq!(out, [f32::MAX, -1.0]);
    }

    #[test]
    fn weighted_mean_errors() {
        let mut out = [0.0; 2];
        assert_eq!(weighted_mean(&mut out, &[], &[]), Err(Error::Empty));
        assert_eq!(
            weighted_mean(&mut out, &[&[1.0, 2.0]], &[1.0, 1.0]),
            Err(Error::WeightCount {
                expected: 1,
                found: 2
            })
        );
        assert_eq!(
            weighted_mean(&mut out, &[&[1.0, 2.0], &[1.0]], &[1.0, 1.0]),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 1,
                index: 1
            })
        );
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY, -0.0] {
            match weighted_mean(&mut out, &[&[1.0, 2.0], &[1.0, 2.0]], &[1.0, weight]) {
                Err(Error::BadWeight {
                    index: 1,
                    weight: w,
                }) => {
                    assert_eq!(w.to_bits(), weight.to_bits());
                }
                other => panic!("weight {weight}: {other:?}"),
            }
        }
    }

    #[test]
    fn weighted_mean_refuses_non_finite_values() {
        let mut out = vec![0.0; 5000];
        let good = vec![1.0; 5000];
        let mut bad = vec![1.0; 5000];
        bad[4321] = f32::NAN;
        assert_eq!(
            weighted_mean(&mut out, &[&good, &good, &bad], &[1.0, 1.0, 1.0]),
            Err(Error::NonFinite {
                index: 2,
                coordinate: 4321
            })
        );
        bad[4321] = f32::NEG_INFINITY;
        assert_eq!(
            weighted_mean(&mut out, &[&bad, &good], &[1.0, 1.0]),
            Err(Error::NonFinite {
                index: 0,
                coordinate: 4321
            })
        );
    }

    #[test]
    fn weighted_mean_across_blocks() {
        let mut s = Sequence(7);
        let len = 3 * BLOCK + 17;
        let inputs: Vec<Vec<f32>> = (0..5)
            .map(|_| {
                (0..len)
                    .map(|_| (s.next() % 2001) as f32 - 1000.0)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let weights = [1.0, 2.0, 3.0, 4.0, 10.0];
        let mut out = vec![0.0; len];
        weighted_mean(&mut out, &refs, &weights).expect("valid");
        for c in 0..len {
            let r: f64 = refs
                .iter()
                .zip(&weights)
                .map(|(x, w)| w * f64::from(x[c]))
                .sum::<f64>()
                / 20.0;
            assert_eq!(out[c], r as f32, "coordinate {c}");
        }
    }

    // ---- Metropolis–Hastings ----

    #[test]
    fn metropolis_hastings_by_hand() {
        let mut w = Vec::new();
        metropolis_hastings_weights(2, &[1, 3], &mut w);
        assert_eq!(w.len(), 3);
        assert!((w[1] - 1.0 / 3.0).abs() < 1e-15);
        assert!((w[2] - 1.0 / 4.0).abs() < 1e-15);
        assert!((w[0] - 5.0 / 12.0).abs() < 1e-15);
        metropolis_hastings_weights(0, &[], &mut w);
        assert_eq!(w, [1.0]);
        metropolis_hastings_weights(u32::MAX, &[u32::MAX], &mut w);
        assert!(w.iter().all(|x| x.is_finite() && *x > 0.0));
    }

    #[test]
    fn metropolis_hastings_apply_by_hand() {
        // Own degree 2, neighbours of degree 1 and 3: weights 5/12, 1/3, 1/4.
        let own = [12.0f32];
        let (a, b) = ([24.0f32], [-48.0f32]);
        let others = [contribution(&a, 1.0, 1), contribution(&b, 1.0, 3)];
        let mut out = [0.0];
        let summary = Rule::MetropolisHastings
            .apply(
                contribution(&own, 7.0, 2),
                &others,
                &mut out,
                &mut Scratch::default(),
            )
            .expect("valid");
        assert!((out[0] - (5.0 + 8.0 - 12.0)).abs() < 1e-6, "{out:?}");
        assert_eq!(
            summary,
            Summary {
                inputs: 3,
                clipped: 0,
                tau: None
            }
        );
    }

    #[test]
    fn metropolis_hastings_preserves_the_average_on_a_graph() {
        // A path 0–1–2–3 plus the chord 1–3: one synchronous gossip step keeps the mean.
        let edges = [(0, 1), (1, 2), (2, 3), (1, 3)];
        let mut neighbours = vec![Vec::new(); 4];
        for &(a, b) in &edges {
            neighbours[a].push(b);
            neighbours[b].push(a);
        }
        let x: Vec<[f32; 1]> = vec![[1.0], [10.0], [-4.0], [7.0]];
        let mut scratch = Scratch::default();
        let mut next = 0.0f64;
        for i in 0..4 {
            let others: Vec<_> = neighbours[i]
                .iter()
                .map(|&j| contribution(&x[j], 1.0, neighbours[j].len() as u32))
                .collect();
            let mut out = [0.0];
            Rule::MetropolisHastings
                .apply(
                    contribution(&x[i], 1.0, neighbours[i].len() as u32),
                    &others,
                    &mut out,
                    &mut scratch,
                )
                .expect("valid");
            next += f64::from(out[0]);
        }
        assert!((next / 4.0 - 3.5).abs() < 1e-6, "{next}");
    }

    #[test]
    fn metropolis_hastings_errors() {
        let own = [1.0f32];
        let other = [2.0f32];
        let mut out = [0.0];
        let mut scratch = Scratch::default();
        let rule = Rule::MetropolisHastings;
        assert_eq!(
            rule.apply(
                contribution(&own, 1.0, 1),
                &[contribution(&other, 1.0, 0)],
                &mut out,
                &mut scratch
            ),
            Err(Error::BadDegree {
                index: 1,
                degree: 0
            })
        );
        assert_eq!(
            rule.apply(
                contribution(&own, 1.0, 1),
                &[contribution(&other, 1.0, 1), contribution(&other, 1.0, 1)],
                &mut out,
                &mut scratch
            ),
            Err(Error::DegreeTooSmall {
                degree: 1,
                neighbours: 2
            })
        );
        let mut bad = [1.0f32];
        bad[0] = f32::INFINITY;
        assert_eq!(
            rule.apply(
                contribution(&own, 1.0, 1),
                &[contribution(&bad, 1.0, 1)],
                &mut out,
                &mut scratch
            ),
            Err(Error::NonFinite {
                index: 1,
                coordinate: 0
            })
        );
    }

    // ---- median and trimmed mean ----

    #[test]
    fn median_by_hand() {
        let mut out = [0.0; 2];
        let mut scratch = Scratch::default();
        coordinate_median(
            &mut out,
            &[&[1.0, -1.0], &[5.0, -5.0], &[3.0, -3.0]],
            &mut scratch,
        )
        .expect("valid");
        assert_eq!(out, [3.0, -3.0]);
        coordinate_median(
            &mut out,
            &[&[1.0, 0.0], &[2.0, -0.0], &[10.0, 7.0], &[4.0, -7.0]],
            &mut scratch,
        )
        .expect("valid");
        assert_eq!(out, [3.0, 0.0]);
        let mut one = [0.0];
        coordinate_median(&mut one, &[&[f32::NAN], &[1.0], &[2.0]], &mut scratch).expect("valid");
        assert_eq!(one, [2.0]);
        coordinate_median(&mut one, &[&[-f32::NAN], &[1.0], &[2.0]], &mut scratch).expect("valid");
        assert_eq!(one, [1.0]);
        coordinate_median(&mut one, &[&[f32::INFINITY], &[f32::MAX]], &mut scratch).expect("valid");
        assert_eq!(one, [f32::INFINITY]);
        coordinate_median(&mut one, &[&[f32::MAX], &[f32::MAX]], &mut scratch).expect("valid");
        assert_eq!(one, [f32::MAX]);
    }

    #[test]
    fn trimmed_mean_by_hand() {
        let mut out = [0.0];
        let mut scratch = Scratch::default();
        let inputs: [&[f32]; 5] = [&[1.0], &[2.0], &[3.0], &[100.0], &[-50.0]];
        trimmed_mean(&mut out, &inputs, 1, &mut scratch).expect("valid");
        assert_eq!(out, [2.0]);
        trimmed_mean(&mut out, &inputs, 2, &mut scratch).expect("valid");
        assert_eq!(out, [2.0]);
        trimmed_mean(&mut out, &inputs, 0, &mut scratch).expect("valid");
        assert_eq!(out, [56.0 / 5.0]);
        let hostile: [&[f32]; 4] = [&[f32::NAN], &[1.0], &[2.0], &[f32::NEG_INFINITY]];
        trimmed_mean(&mut out, &hostile, 1, &mut scratch).expect("valid");
        assert_eq!(out, [1.5]);
    }

    #[test]
    fn order_statistics_errors() {
        let mut out = [0.0; 2];
        let mut scratch = Scratch::default();
        assert_eq!(
            coordinate_median(&mut out, &[], &mut scratch),
            Err(Error::Empty)
        );
        assert_eq!(
            trimmed_mean(&mut out, &[], 0, &mut scratch),
            Err(Error::Empty)
        );
        assert_eq!(
            coordinate_median(&mut out, &[&[1.0, 2.0], &[1.0, 2.0, 3.0]], &mut scratch),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 3,
                index: 1
            })
        );
        let four: [&[f32]; 4] = [&[1.0, 2.0]; 4];
        assert_eq!(
            trimmed_mean(&mut out, &four, 2, &mut scratch),
            Err(Error::TrimTooLarge { trim: 2, inputs: 4 })
        );
        assert_eq!(
            trimmed_mean(&mut out, &four, usize::MAX, &mut scratch),
            Err(Error::TrimTooLarge {
                trim: usize::MAX,
                inputs: 4
            })
        );
        trimmed_mean(&mut out, &four, 1, &mut scratch).expect("4 − 2 leaves 2");
        assert_eq!(
            apply(&Rule::TrimmedMean { trim: 1 }, &[1.0], &[&[2.0]]),
            Err(Error::TrimTooLarge { trim: 1, inputs: 2 })
        );
    }

    #[test]
    fn order_statistics_match_a_sort_across_blocks_and_sizes() {
        let mut s = Sequence(42);
        let mut scratch = Scratch::default();
        // Same scratch throughout: the network and key buffer must follow the input count.
        for n in [1, 2, 3, 9, 4, 17, 9, 40, 2] {
            let len = 2 * key_block(n) + 5;
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|_| (0..len).map(|_| s.value()).collect())
                .collect();
            let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![0.0; len];
            coordinate_median(&mut out, &refs, &mut scratch).expect("valid");
            assert_eq!(bits(&out), bits(&reference_median(&refs)), "median of {n}");
            for trim in 0..=(n - 1) / 2 {
                trimmed_mean(&mut out, &refs, trim, &mut scratch).expect("valid");
                assert_eq!(
                    bits(&out),
                    bits(&reference_trimmed(&refs, trim)),
                    "trimmed mean of {n}, trim {trim}"
                );
            }
        }
    }

    #[test]
    fn batcher_network_sorts_every_zero_one_input() {
        // The 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs.
        let mut network = Vec::new();
        for n in 0..=13usize {
            batcher_network(n, &mut network);
            assert!(network.iter().all(|&(a, b)| a < b && b < n));
            for pattern in 0u32..(1 << n) {
                let mut v: Vec<u32> = (0..n).map(|i| (pattern >> i) & 1).collect();
                for &(a, b) in &network {
                    if v[a] > v[b] {
                        v.swap(a, b);
                    }
                }
                assert!(
                    v.windows(2).all(|w| w[0] <= w[1]),
                    "n {n}, pattern {pattern:b}"
                );
            }
        }
    }

    #[test]
    fn keys_follow_total_cmp_and_round_trip() {
        let values = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            f32::MAX,
            f32::MIN,
            f32::from_bits(0x7fc0_0001),
            f32::from_bits(0xffc0_0001),
        ];
        for &a in &values {
            assert_eq!(from_key(key(a)).to_bits(), a.to_bits());
            for &b in &values {
                assert_eq!(key(a).cmp(&key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }

    // ---- ClippedGossip ----

    #[test]
    fn clipped_gossip_by_hand() {
        let mut out = [0.0; 2];
        let own = [0.0f32, 0.0];
        // Distance 5, radius 1: the neighbour is pulled in to (0.6, 0.8), then weighted by 1/2.
        let clipped =
            clipped_gossip(&mut out, &own, &[&[3.0, 4.0]], &[1.0, 1.0], 1.0).expect("valid");
        assert_eq!(clipped, 1);
        assert!(
            (out[0] - 0.3).abs() < 1e-7 && (out[1] - 0.4).abs() < 1e-7,
            "{out:?}"
        );
        // Within the radius: the plain weighted mean.
        let clipped =
            clipped_gossip(&mut out, &own, &[&[3.0, 4.0]], &[1.0, 1.0], 10.0).expect("valid");
        assert_eq!(clipped, 0);
        assert_eq!(out, [1.5, 2.0]);
        // Radius 0: nobody moves.
        clipped_gossip(&mut out, &[1.0, 2.0], &[&[3.0, 4.0]], &[1.0, 1.0], 0.0).expect("valid");
        assert_eq!(out, [1.0, 2.0]);
        // No neighbours.
        assert_eq!(clipped_gossip(&mut out, &own, &[], &[1.0], 1.0), Ok(0));
        assert_eq!(out, [0.0, 0.0]);
    }

    #[test]
    fn clipped_gossip_drops_non_finite_neighbours() {
        let mut out = [0.0; 2];
        let own = [0.0f32, 0.0];
        let neighbours: [&[f32]; 3] = [&[f32::NAN, 0.0], &[f32::INFINITY, 1.0], &[2.0, 2.0]];
        let clipped =
            clipped_gossip(&mut out, &own, &neighbours, &[1.0, 1.0, 1.0, 1.0], 100.0).expect("ok");
        assert_eq!(clipped, 2);
        assert_eq!(out, [0.5, 0.5]);
    }

    #[test]
    fn clipped_gossip_with_many_neighbours_uses_the_heap() {
        let own = [0.0f32];
        let far = [1000.0f32];
        let neighbours = vec![&far[..]; 2 * STACK_NEIGHBOURS];
        let weights = vec![1.0; 2 * STACK_NEIGHBOURS + 1];
        let mut out = [0.0];
        let clipped = clipped_gossip(&mut out, &own, &neighbours, &weights, 1.0).expect("ok");
        assert_eq!(clipped, 2 * STACK_NEIGHBOURS);
        assert!(out[0] > 0.99 && out[0] <= 1.0, "{out:?}");
    }

    #[test]
    fn clipped_gossip_errors() {
        let mut out = [0.0];
        for tau in [f32::NAN, f32::INFINITY, -1.0] {
            assert!(matches!(
                clipped_gossip(&mut out, &[0.0], &[&[1.0]], &[1.0, 1.0], tau),
                Err(Error::BadTau(Tau::Fixed { .. }))
            ));
        }
        assert_eq!(
            clipped_gossip(&mut out, &[0.0], &[&[1.0]], &[1.0], 1.0),
            Err(Error::WeightCount {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            clipped_gossip(&mut out, &[0.0], &[&[1.0]], &[1.0, 0.0], 1.0),
            Err(Error::BadWeight {
                index: 1,
                weight: 0.0
            })
        );
        assert_eq!(
            clipped_gossip(&mut out, &[0.0], &[&[1.0, 2.0]], &[1.0, 1.0], 1.0),
            Err(Error::LengthMismatch {
                expected: 1,
                found: 2,
                index: 1
            })
        );
        assert_eq!(
            clipped_gossip(&mut out, &[f32::NAN], &[&[1.0]], &[1.0, 1.0], 1.0),
            Err(Error::NonFinite {
                index: 0,
                coordinate: 0
            })
        );
    }

    #[test]
    fn clipped_gossip_adaptive_by_hand() {
        // Three neighbours at distances 1, 2, 100; fraction 0.34 of 3 → k = 1 → τ = 2.
        let rule = Rule::ClippedGossip {
            tau: Tau::Adaptive {
                byzantine_fraction: 0.34,
            },
        };
        let (out, summary) = apply(&rule, &[0.0], &[&[1.0], &[-2.0], &[100.0]]).expect("valid");
        assert_eq!(out, [(1.0 - 2.0 + 2.0) / 4.0]);
        assert_eq!(
            summary,
            Summary {
                inputs: 4,
                clipped: 1,
                tau: Some(2.0)
            }
        );
        // 0.2 of 3 neighbours rounds down to 0: the farthest sets τ and nobody is clipped.
        let rule = Rule::ClippedGossip {
            tau: Tau::Adaptive {
                byzantine_fraction: 0.2,
            },
        };
        let (_, summary) = apply(&rule, &[0.0], &[&[1.0], &[-2.0], &[100.0]]).expect("valid");
        assert_eq!((summary.clipped, summary.tau), (0, Some(100.0)));
        // 0.35 of 20 is 7 although 0.35f32 is slightly below 0.35.
        let mut order = Vec::new();
        let distances: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(adaptive_radius(&distances, 0.35, &mut order), 13.0);
        // Non-finite neighbours are infinitely far and dropped.
        let rule = Rule::ClippedGossip {
            tau: Tau::Adaptive {
                byzantine_fraction: 0.5,
            },
        };
        let (out, summary) = apply(
            &rule,
            &[0.0],
            &[&[f32::NAN], &[4.0], &[f32::NEG_INFINITY], &[-4.0]],
        )
        .expect("valid");
        assert_eq!(out, [0.0]);
        assert_eq!((summary.clipped, summary.tau), (2, Some(4.0)));
    }

    #[test]
    fn clipped_gossip_apply_with_fixed_radius() {
        let rule = Rule::ClippedGossip {
            tau: Tau::Fixed { radius: 1.0 },
        };
        let (out, summary) = apply(&rule, &[0.0, 0.0], &[&[3.0, 4.0]]).expect("valid");
        assert!(
            (out[0] - 0.3).abs() < 1e-7 && (out[1] - 0.4).abs() < 1e-7,
            "{out:?}"
        );
        assert_eq!(
            summary,
            Summary {
                inputs: 2,
                clipped: 1,
                tau: Some(1.0)
            }
        );
        assert_eq!(
            apply(&rule, &[f32::NAN, 0.0], &[&[3.0, 4.0]]),
            Err(Error::NonFinite {
                index: 0,
                coordinate: 0
            })
        );
    }

    #[test]
    fn distance_by_hand() {
        assert_eq!(distance(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
        assert_eq!(distance(&[], &[]), 0.0);
        assert_eq!(distance(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(distance(&[f32::NAN], &[1.0]).is_nan());
        let far = distance(&[f32::MAX; 100], &[f32::MIN; 100]);
        assert!(far.is_finite() && (far / (20.0 * f64::from(f32::MAX)) - 1.0).abs() < 1e-12);
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b = vec![0.0; 37];
        let sq: f64 = (0..37).map(|i| f64::from(i * i)).sum();
        assert!((distance(&a, &b) - sq.sqrt()).abs() < 1e-12);
    }

    // ---- Rule ----

    #[test]
    fn rule_defaults_to_mean_and_checks_its_parameters() {
        assert_eq!(Rule::default(), Rule::Mean);
        for rule in [
            Rule::Mean,
            Rule::MetropolisHastings,
            Rule::Median,
            Rule::TrimmedMean { trim: 3 },
            Rule::ClippedGossip {
                tau: Tau::Fixed { radius: 0.5 },
            },
            Rule::ClippedGossip {
                tau: Tau::Adaptive {
                    byzantine_fraction: 0.0,
                },
            },
            Rule::ClippedGossip {
                tau: Tau::Adaptive {
                    byzantine_fraction: 0.99,
                },
            },
        ] {
            assert_eq!(rule.check(), Ok(()), "{rule:?}");
        }
        for tau in [
            Tau::Fixed { radius: 0.0 },
            Tau::Fixed { radius: -1.0 },
            Tau::Fixed { radius: f32::NAN },
            Tau::Fixed {
                radius: f32::INFINITY,
            },
            Tau::Adaptive {
                byzantine_fraction: 1.0,
            },
            Tau::Adaptive {
                byzantine_fraction: -0.1,
            },
            Tau::Adaptive {
                byzantine_fraction: f32::NAN,
            },
        ] {
            let rule = Rule::ClippedGossip { tau };
            assert!(matches!(rule.check(), Err(Error::BadTau(_))), "{rule:?}");
            assert!(matches!(apply(&rule, &[0.0], &[]), Err(Error::BadTau(_))));
        }
    }

    #[test]
    fn every_rule_copies_own_without_neighbours() {
        let own = [1.5f32, f32::MAX, -0.0];
        for rule in [
            Rule::Mean,
            Rule::MetropolisHastings,
            Rule::Median,
            Rule::TrimmedMean { trim: 4 },
            Rule::ClippedGossip {
                tau: Tau::Adaptive {
                    byzantine_fraction: 0.3,
                },
            },
        ] {
            let (out, summary) = apply(&rule, &own, &[]).expect("valid");
            assert_eq!(bits(&out), bits(&own), "{rule:?}");
            assert_eq!(
                summary,
                Summary {
                    inputs: 1,
                    clipped: 0,
                    tau: None
                }
            );
        }
    }

    #[test]
    fn apply_checks_every_contribution() {
        let own = [1.0f32, 2.0];
        let short = [1.0f32];
        let mut scratch = Scratch::default();
        for rule in [Rule::Mean, Rule::Median, Rule::TrimmedMean { trim: 0 }] {
            let mut out = [0.0; 2];
            assert_eq!(
                rule.apply(
                    contribution(&own, 1.0, 1),
                    &[contribution(&short, 1.0, 1)],
                    &mut out,
                    &mut scratch
                ),
                Err(Error::LengthMismatch {
                    expected: 2,
                    found: 1,
                    index: 1
                })
            );
            assert_eq!(
                rule.apply(
                    contribution(&own, 1.0, 1),
                    &[contribution(&own, f64::NAN, 1)],
                    &mut out,
                    &mut scratch
                )
                .map_err(|e| matches!(e, Error::BadWeight { index: 1, .. })),
                Err(true)
            );
            assert_eq!(
                rule.apply(contribution(&own, -2.0, 1), &[], &mut out, &mut scratch),
                Err(Error::BadWeight {
                    index: 0,
                    weight: -2.0
                })
            );
            let mut long = [0.0; 3];
            assert_eq!(
                rule.apply(contribution(&own, 1.0, 1), &[], &mut long, &mut scratch),
                Err(Error::LengthMismatch {
                    expected: 3,
                    found: 2,
                    index: 0
                })
            );
        }
    }

    #[test]
    fn apply_mean_and_robust_rules_by_hand() {
        let own = [0.0f32];
        let mut scratch = Scratch::default();
        let (a, b) = ([10.0f32], [1000.0f32]);
        let others = [contribution(&a, 3.0, 2), contribution(&b, 1.0, 2)];
        let mut out = [0.0];
        Rule::Mean
            .apply(contribution(&own, 1.0, 2), &others, &mut out, &mut scratch)
            .expect("valid");
        assert_eq!(out, [(30.0 + 1000.0) / 5.0]);
        Rule::Median
            .apply(contribution(&own, 1.0, 2), &others, &mut out, &mut scratch)
            .expect("valid");
        assert_eq!(out, [10.0]);
        Rule::TrimmedMean { trim: 1 }
            .apply(contribution(&own, 1.0, 2), &others, &mut out, &mut scratch)
            .expect("valid");
        assert_eq!(out, [10.0]);
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            Error::LengthMismatch {
                expected: 3,
                found: 2,
                index: 1
            }
            .to_string(),
            "input 1 has 2 parameters, expected 3"
        );
        assert_eq!(
            Error::BadTau(Tau::Fixed { radius: -1.0 }).to_string(),
            "invalid ClippedGossip radius Fixed { radius: -1.0 }"
        );
    }

    // ---- properties ----

    /// Values of every kind a hostile peer could send, honest ones most often.
    fn any_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => -100.0f32..100.0,
            1 => prop::sample::select(vec![
                f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0,
                1e30, -1e30, f32::MAX, f32::MIN, 1e-45,
            ]),
            1 => any::<f32>(),
        ]
    }

    /// `n` vectors of length `len`.
    fn vectors(
        n: impl Into<prop::collection::SizeRange>,
        len: usize,
        value: impl Strategy<Value = f32>,
    ) -> impl Strategy<Value = Vec<Vec<f32>>> {
        prop::collection::vec(prop::collection::vec(value, len), n)
    }

    fn outlier() -> impl Strategy<Value = f32> {
        prop_oneof![
            prop::sample::select(vec![
                1e30f32,
                -1e30,
                f32::MAX,
                f32::MIN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                -f32::NAN,
            ]),
            any::<f32>(),
        ]
    }

    /// `h` honest vectors in [-100, 100) and `k` outliers of any value, `h` drawn from `honest`
    /// given `k`.
    fn honest_and_outliers(
        outliers: std::ops::RangeInclusive<usize>,
        honest: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        (1..20usize, outliers)
            .prop_flat_map(move |(len, k)| (Just(len), Just(k), honest(k)))
            .prop_flat_map(|(len, k, h)| {
                (
                    vectors(h, len, -100.0f32..100.0),
                    vectors(k, len, outlier()),
                )
            })
    }

    fn within_honest(out: &[f32], honest: &[Vec<f32>]) -> Result<(), TestCaseError> {
        for (c, &o) in out.iter().enumerate() {
            let lo = honest.iter().map(|x| x[c]).fold(f32::INFINITY, f32::min);
            let hi = honest
                .iter()
                .map(|x| x[c])
                .fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(
                lo <= o && o <= hi,
                "coordinate {c}: {o} outside [{lo}, {hi}]"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn weighted_mean_matches_an_f64_reference(
            (inputs, weights) in (1..8usize, 0..40usize).prop_flat_map(|(n, len)| (
                vectors(n, len, prop_oneof![
                    -1e6f32..1e6,
                    -1e-3f32..1e-3,
                    prop::sample::select(vec![f32::MAX, f32::MIN, 1e30, -1e30, 0.0]),
                ]),
                prop::collection::vec(prop_oneof![1e-6f64..1e6, 1.0f64..1e300], n),
            )),
        ) {
            let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            let len = inputs[0].len();
            let mut out = vec![0.0; len];
            weighted_mean(&mut out, &refs, &weights).expect("valid");
            let max_w = weights.iter().copied().fold(0.0, f64::max);
            let total: f64 = weights.iter().map(|w| w / max_w).sum();
            for c in 0..len {
                let reference: f64 = refs.iter().zip(&weights)
                    .map(|(x, w)| (w / max_w) * f64::from(x[c]))
                    .sum::<f64>() / total;
                let scale = refs.iter().map(|x| f64::from(x[c]).abs()).fold(0.0, f64::max);
                // f32 rounding of the result, plus f64 rounding of the sum (relative to the
                // largest term, which matters only when the terms cancel).
                let tolerance = 1e-6 * reference.abs() + 1e-12 * scale + 1e-45;
                prop_assert!(
                    (f64::from(out[c]) - reference).abs() <= tolerance,
                    "coordinate {}: {} vs {}", c, out[c], reference
                );
            }
        }

        #[test]
        fn order_statistics_ignore_input_order(
            (inputs, permuted, trim) in (1..10usize, 0..30usize).prop_flat_map(|(n, len)| {
                vectors(n, len, any_value()).prop_flat_map(move |inputs| {
                    let order: Vec<usize> = (0..n).collect();
                    (Just(inputs), Just(order).prop_shuffle(), 0..=(n - 1) / 2)
                })
            }),
        ) {
            let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            let shuffled: Vec<&[f32]> = permuted.iter().map(|&i| refs[i]).collect();
            let len = inputs[0].len();
            let mut scratch = Scratch::default();
            let (mut a, mut b) = (vec![0.0; len], vec![0.0; len]);
            coordinate_median(&mut a, &refs, &mut scratch).expect("valid");
            coordinate_median(&mut b, &shuffled, &mut scratch).expect("valid");
            prop_assert_eq!(bits(&a), bits(&b));
            prop_assert_eq!(bits(&a), bits(&reference_median(&refs)));
            trimmed_mean(&mut a, &refs, trim, &mut scratch).expect("valid");
            trimmed_mean(&mut b, &shuffled, trim, &mut scratch).expect("valid");
            prop_assert_eq!(bits(&a), bits(&b));
            prop_assert_eq!(bits(&a), bits(&reference_trimmed(&refs, trim)));
        }

        #[test]
        fn trimmed_mean_stays_within_the_honest_range(
            ((honest, outliers), extra_trim) in (0..3usize).prop_flat_map(|extra| (
                // n = h + k > 2 (k + extra) needs h > k + 2 extra.
                honest_and_outliers(0..=4, move |k| k + 2 * extra + 1..k + 2 * extra + 7),
                Just(extra),
            )),
        ) {
            let trim = outliers.len() + extra_trim;
            let inputs: Vec<&[f32]> = honest.iter().chain(&outliers).map(Vec::as_slice).collect();
            let mut out = vec![0.0; honest[0].len()];
            trimmed_mean(&mut out, &inputs, trim, &mut Scratch::default()).expect("valid");
            within_honest(&out, &honest)?;
        }

        #[test]
        fn median_stays_within_the_honest_range(
            (honest, outliers) in honest_and_outliers(0..=8, |k| k + 1..k + 8),
        ) {
            let inputs: Vec<&[f32]> = outliers.iter().chain(&honest).map(Vec::as_slice).collect();
            let mut out = vec![0.0; honest[0].len()];
            coordinate_median(&mut out, &inputs, &mut Scratch::default()).expect("valid");
            within_honest(&out, &honest)?;
        }

        #[test]
        fn clipped_gossip_moves_at_most_the_weighted_radius(
            (own, neighbours, weights) in (1..6usize, 1..30usize).prop_flat_map(|(m, len)| (
                prop::collection::vec(-100.0f32..100.0, len),
                vectors(m, len, prop_oneof![3 => -100.0f32..100.0, 1 => outlier()]),
                prop::collection::vec(1e-3f64..1e3, m + 1),
            )),
            tau in prop_oneof![0.0f32..10.0, Just(0.0), 1e-3f32..1e-2],
        ) {
            let refs: Vec<&[f32]> = neighbours.iter().map(Vec::as_slice).collect();
            let mut out = vec![0.0; own.len()];
            let clipped = clipped_gossip(&mut out, &own, &refs, &weights, tau).expect("valid");
            prop_assert!(clipped <= refs.len());
            let total: f64 = weights.iter().sum();
            let bound = weights[1..].iter().sum::<f64>() / total * f64::from(tau);
            let max_abs = own.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
            let rounding = (own.len() as f64).sqrt() * (max_abs + f64::from(tau)) * 1.2e-7;
            let moved = distance(&out, &own);
            prop_assert!(moved <= bound * (1.0 + 1e-9) + rounding, "{moved} > {bound}");
        }

        #[test]
        fn clipped_gossip_single_neighbour_moves_at_most_tau(
            (own, other) in (1..40usize).prop_flat_map(|len| (
                prop::collection::vec(-100.0f32..100.0, len),
                prop::collection::vec(outlier(), len),
            )),
            weights in prop::collection::vec(1e-3f64..1e6, 2),
            tau in 0.0f32..10.0,
        ) {
            let mut out = vec![0.0; own.len()];
            clipped_gossip(&mut out, &own, &[&other], &weights, tau).expect("valid");
            let max_abs = own.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
            let rounding = (own.len() as f64).sqrt() * (max_abs + f64::from(tau)) * 1.2e-7;
            let moved = distance(&out, &own);
            prop_assert!(moved <= f64::from(tau) * (1.0 + 1e-9) + rounding, "{moved} > {tau}");
            prop_assert!(out.iter().all(|x| x.is_finite()));
        }

        #[test]
        fn adaptive_radius_clips_at_most_the_fraction(
            (own, neighbours) in (1..10usize, 1..10usize).prop_flat_map(|(m, len)| (
                prop::collection::vec(-10.0f32..10.0, len),
                vectors(m, len, prop_oneof![3 => -10.0f32..10.0, 1 => -1e30f32..1e30]),
            )),
            fraction in 0.0f32..0.99,
        ) {
            let own_c = contribution(&own, 1.0, 1);
            let others: Vec<_> = neighbours.iter().map(|p| contribution(p, 2.0, 1)).collect();
            let mut out = vec![0.0; own.len()];
            let rule = Rule::ClippedGossip { tau: Tau::Adaptive { byzantine_fraction: fraction } };
            let summary = rule.apply(own_c, &others, &mut out, &mut Scratch::default())
                .expect("valid");
            let m = neighbours.len();
            let k = (f64::from(fraction) * m as f64 + FRACTION_TOLERANCE).floor() as usize;
            prop_assert!(summary.clipped <= k, "{} > {}", summary.clipped, k);
            prop_assert!(summary.tau.is_some());
        }

        #[test]
        fn metropolis_hastings_weights_are_symmetric_and_sum_to_one(
            own_degree in 1..60u32,
            degrees in prop::collection::vec(1..60u32, 0..12),
        ) {
            prop_assume!(degrees.len() <= own_degree as usize);
            let mut w = Vec::new();
            metropolis_hastings_weights(own_degree, &degrees, &mut w);
            prop_assert_eq!(w.len(), degrees.len() + 1);
            prop_assert!(w.iter().all(|&x| x >= 0.0));
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let mut back = Vec::new();
            for (j, &d) in degrees.iter().enumerate() {
                // Seen from neighbour j, with this peer among its neighbours.
                metropolis_hastings_weights(d, &[own_degree], &mut back);
                prop_assert_eq!(back[1].to_bits(), w[j + 1].to_bits());
            }
        }
    }
}
