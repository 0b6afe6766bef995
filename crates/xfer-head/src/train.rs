//! Training a logistic head.
//!
//! The head minimises `Σᵢ logloss(xᵢ) + alpha/2·‖W‖²` (linfa-logistic's
//! objective, scikit-learn's with `C = 1/alpha`; [`crate::objective`]) with
//! L-BFGS ([`crate::lbfgs`]). A given strength is fitted from zero; a grid is
//! fitted from the strongest regularisation down, each fit starting from the
//! previous solution. Training is deterministic: there is no random component
//! and hence no seed to fix, and the parallel sums do not depend on the thread
//! count (the same rows give bit-identical heads).
//!
//! Class weights are applied by replicating rows: class `c` gets an integer
//! multiplicity `m_c ≈ s·w_c`, and the L2 strength is multiplied by `s`, which
//! makes the objective `Σᵢ (m_cᵢ/s)·logloss(xᵢ) + alpha/2·‖W‖²`. The effective
//! weights `m_c/s` (within 2% of those asked for when a small denominator
//! exists) are recorded in `head.json`.

use std::str::FromStr;
use std::time::Instant;

use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::head::{Head, HeadKind, HyperParameters};
use crate::lbfgs::{Stopping, minimise};
use crate::metrics::{Metrics, check_labels};
use crate::objective::Objective;
use crate::standardize::Standardizer;
use crate::{Error, Result};

/// Labelled embeddings of one split.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    /// Split name (`train`, `val`), recorded in the head.
    pub name: &'a str,
    /// Embeddings, one row per image.
    pub features: ArrayView2<'a, f32>,
    /// Class index of every row.
    pub labels: &'a [i32],
}

/// How classes are weighted in the training loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// Every row counts once.
    None,
    /// Class `c` weighs `n / (classes · n_c)` (scikit-learn's `balanced`).
    Balanced,
    /// One positive weight per class, in class order.
    Given(Vec<f64>),
}

impl FromStr for ClassWeight {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(ClassWeight::None),
            "balanced" => Ok(ClassWeight::Balanced),
            list => list
                .split(',')
                .map(|w| w.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(ClassWeight::Given)
                .map_err(|_| {
                    format!("class weights `{s}`: expected `none`, `balanced` or one number per class, like `1,3.5`")
                }),
        }
    }
}

/// Options of [`train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// L2 strength; `None` chooses it from `l2_grid` on the validation split.
    pub l2: Option<f64>,
    /// Candidate L2 strengths tried when `l2` is `None`.
    pub l2_grid: Vec<f64>,
    /// Standardise features with the training mean and standard deviation.
    pub standardize: bool,
    /// Class weighting.
    pub class_weight: ClassWeight,
    /// L-BFGS iteration limit.
    pub max_iterations: u64,
    /// L-BFGS stops when the gradient norm of the *mean* loss falls below this
    /// (scikit-learn's `tol` scale; the summed loss gets it times the row count).
    pub gradient_tolerance: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            l2: None,
            l2_grid: vec![0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
            standardize: true,
            class_weight: ClassWeight::None,
            max_iterations: 500,
            gradient_tolerance: 1e-4,
        }
    }
}

/// Validation result of one L2 strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// The L2 strength.
    pub l2: f64,
    /// Accuracy on the validation split.
    pub val_accuracy: f64,
    /// Log loss on the validation split.
    pub val_log_loss: f64,
    /// Seconds the fit took.
    pub fit_seconds: f64,
}

/// Trains a head on `train` for the classes `classes` (label `i` is `classes[i]`)
/// on embeddings of the backbone `fingerprint`. `val` chooses the L2 strength
/// when `options.l2` is `None`.
pub fn train(
    train: &Split<'_>,
    val: Option<&Split<'_>>,
    classes: &[String],
    fingerprint: &str,
    options: &TrainOptions,
) -> Result<Head> {
    let (train_labels, counts) = check_inputs(train, val, classes, options)?;
    let (multiplicity, scale) = replication(&options.class_weight, &counts)?;
    let standardizer = options
        .standardize
        .then(|| Standardizer::fit(train.features));
    let dataset = design_matrix(train, &train_labels, &multiplicity, standardizer.as_ref());
    let fitter = Fitter {
        dataset,
        scale,
        effective: multiplicity.iter().map(|&m| m as f64 / scale).collect(),
        standardizer,
        train_rows: train.labels.len(),
        train_name: train.name,
        val: val.copied(),
        classes,
        fingerprint,
        options,
    };
    match options.l2 {
        Some(l2) => fitter.given(l2),
        None => fitter.search(),
    }
}

/// Validates the classes, both splits and the solver options; returns the training
/// labels as indices and the rows per class.
fn check_inputs(
    train: &Split<'_>,
    val: Option<&Split<'_>>,
    classes: &[String],
    options: &TrainOptions,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let k = classes.len();
    if k < 2 {
        return Err(Error::Data(format!(
            "a head needs at least 2 classes, the data has {k} ({classes:?})"
        )));
    }
    let train_labels = check_split(train, k, None)?;
    if let Some(v) = val {
        check_split(v, k, Some(train.features.ncols()))?;
    }
    let mut counts = vec![0usize; k];
    train_labels.iter().for_each(|&l| counts[l] += 1);
    let missing: Vec<&str> = (0..k)
        .filter(|&c| counts[c] == 0)
        .map(|c| classes[c].as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Data(format!(
            "split `{}` has no rows of class(es) {missing:?}; every class needs training rows",
            train.name
        )));
    }
    if options.max_iterations == 0
        || !options.gradient_tolerance.is_finite()
        || options.gradient_tolerance <= 0.0
    {
        return Err(Error::Options(
            "max iterations must be at least 1 and the gradient tolerance positive".to_owned(),
        ));
    }
    Ok((train_labels, counts))
}

/// The training rows the solver sees: standardised (when asked), each row
/// replicated by its class's multiplicity.
struct Design {
    /// `labels.len() × dim` values, row-major.
    x: Vec<f64>,
    labels: Vec<usize>,
    dim: usize,
}

/// The design matrix (standardised when asked), each row replicated by its
/// class's multiplicity.
fn design_matrix(
    train: &Split<'_>,
    labels: &[usize],
    multiplicity: &[usize],
    standardizer: Option<&Standardizer>,
) -> Design {
    let d = train.features.ncols();
    let total_rows: usize = labels.iter().map(|&l| multiplicity[l]).sum();
    let mut x = Vec::with_capacity(total_rows * d);
    let mut y = Vec::with_capacity(total_rows);
    let mut row_buf = vec![0f64; d];
    for (row, &label) in train.features.axis_iter(Axis(0)).zip(labels) {
        match standardizer {
            Some(s) => s.apply_row(row, &mut row_buf),
            None => row_buf
                .iter_mut()
                .zip(row.iter())
                .for_each(|(o, v)| *o = f64::from(*v)),
        }
        for _ in 0..multiplicity[label] {
            x.extend_from_slice(&row_buf);
            y.push(label);
        }
    }
    Design {
        x,
        labels: y,
        dim: d,
    }
}

/// Everything a fit needs besides the L2 strength.
struct Fitter<'a, 'v> {
    dataset: Design,
    /// The class-weight scale `s` (the L2 strength is multiplied by it).
    scale: f64,
    /// The class weights achieved, `m_c / s`.
    effective: Vec<f64>,
    standardizer: Option<Standardizer>,
    train_rows: usize,
    train_name: &'a str,
    val: Option<Split<'v>>,
    classes: &'a [String],
    fingerprint: &'a str,
    options: &'a TrainOptions,
}

impl Fitter<'_, '_> {
    fn kind(&self) -> HeadKind {
        if self.classes.len() == 2 {
            HeadKind::Binary
        } else {
            HeadKind::Multinomial
        }
    }

    /// The head fitted with the given strength, from zero.
    fn given(&self, l2: f64) -> Result<Head> {
        check_l2(l2)?;
        self.fit_head(l2, "given", None).map(|(head, _)| head)
    }

    /// The best head on the validation split over the L2 grid (accuracy, then log
    /// loss), fitted from the strongest strength down, each fit warm-started from the
    /// previous one; the head records the whole grid.
    fn search(&self) -> Result<Head> {
        let Some(val) = self.val else {
            return Err(Error::Options(
                "choosing the L2 strength needs a validation split; pass one or give the strength (--l2)".to_owned(),
            ));
        };
        let l2_grid = self.grid()?;
        let mut grid = Vec::with_capacity(l2_grid.len());
        let mut best: Option<(Head, f64, f64)> = None;
        let mut warm: Option<Vec<f64>> = None;
        for &l2 in &l2_grid {
            let started = Instant::now();
            let (head, raw) = self.fit_head(l2, "validation", warm.as_deref())?;
            warm = Some(raw);
            let fit_seconds = started.elapsed().as_secs_f64();
            let m: Metrics = head.evaluate(val.features, val.labels, self.fingerprint)?;
            tracing::info!(
                l2,
                val_accuracy = m.accuracy,
                val_log_loss = m.log_loss,
                fit_seconds,
                "grid point"
            );
            grid.push(GridPoint {
                l2,
                val_accuracy: m.accuracy,
                val_log_loss: m.log_loss,
                fit_seconds,
            });
            let better = match &best {
                None => true,
                Some((_, acc, ll)) => m.accuracy > *acc || (m.accuracy == *acc && m.log_loss < *ll),
            };
            if better {
                best = Some((head, m.accuracy, m.log_loss));
            }
        }
        let Some((mut head, _, _)) = best else {
            return Err(Error::Options("the L2 grid is empty".to_owned()));
        };
        head.hyper_parameters.l2_grid = grid;
        Ok(head)
    }

    /// The L2 grid, checked, strongest first, without repeats.
    fn grid(&self) -> Result<Vec<f64>> {
        if self.options.l2_grid.is_empty() {
            return Err(Error::Options("the L2 grid is empty".to_owned()));
        }
        let mut l2_grid = self.options.l2_grid.clone();
        for &l2 in &l2_grid {
            check_l2(l2)?;
        }
        l2_grid.sort_by(|a, b| b.total_cmp(a));
        l2_grid.dedup();
        Ok(l2_grid)
    }

    /// A head fitted with strength `l2` (chosen as `l2_source` says), from `warm` or zero.
    fn fit_head(&self, l2: f64, l2_source: &str, warm: Option<&[f64]>) -> Result<(Head, Vec<f64>)> {
        let k = self.classes.len();
        let fitted = fit(&self.dataset, k, l2 * self.scale, self.options, warm)?;
        let head = Head::new(
            self.kind(),
            self.classes.to_vec(),
            self.fingerprint.to_owned(),
            fitted.weights,
            fitted.bias,
            self.standardizer.clone(),
            self.hyper(l2, l2_source),
        )?;
        Ok((head, fitted.params))
    }

    fn hyper(&self, l2: f64, l2_source: &str) -> HyperParameters {
        let options = self.options;
        HyperParameters {
            l2,
            l2_source: l2_source.to_owned(),
            l2_grid: Vec::new(),
            standardize: options.standardize,
            class_weight: options.class_weight.clone(),
            effective_class_weights: self.effective.clone(),
            max_iterations: options.max_iterations,
            gradient_tolerance: options.gradient_tolerance,
            train_rows: self.train_rows,
            train_split: self.train_name.to_owned(),
            val_split: self.val.map(|v| v.name.to_owned()),
            solver: format!(
                "L-BFGS on the summed log loss ({}, {})",
                match self.kind() {
                    HeadKind::Binary => "binary",
                    HeadKind::Multinomial => "multinomial",
                },
                if l2_source == "given" {
                    "from zero"
                } else {
                    "warm-started down the L2 grid"
                }
            ),
        }
    }
}

fn check_l2(l2: f64) -> Result<()> {
    if l2.is_finite() && l2 >= 0.0 {
        Ok(())
    } else {
        Err(Error::Options(format!(
            "L2 strength must be a finite number ≥ 0, got {l2}"
        )))
    }
}

/// Validates a split's shape, values and labels; returns the labels as indices.
fn check_split(split: &Split<'_>, k: usize, dim: Option<usize>) -> Result<Vec<usize>> {
    let (n, d) = split.features.dim();
    if n == 0 || d == 0 {
        return Err(Error::Data(format!(
            "split `{}` is empty ({n} rows of {d} features)",
            split.name
        )));
    }
    if split.labels.len() != n {
        return Err(Error::Data(format!(
            "split `{}` has {n} embeddings but {} labels",
            split.name,
            split.labels.len()
        )));
    }
    if let Some(dim) = dim
        && dim != d
    {
        return Err(Error::Data(format!(
            "split `{}` has {d} features per row but the training split has {dim}",
            split.name
        )));
    }
    if let Some((i, _)) = split
        .features
        .axis_iter(Axis(0))
        .enumerate()
        .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::Data(format!(
            "split `{}` row {i} has a NaN or infinite feature",
            split.name
        )));
    }
    check_labels(split.labels, k).map_err(|e| Error::Data(format!("split `{}`: {e}", split.name)))
}

/// Integer row multiplicities per class and the scale `s` with `m_c ≈ s·w_c`.
fn replication(weight: &ClassWeight, counts: &[usize]) -> Result<(Vec<usize>, f64)> {
    let k = counts.len();
    let n: usize = counts.iter().sum();
    let weights: Vec<f64> = match weight {
        ClassWeight::None => return Ok((vec![1; k], 1.0)),
        ClassWeight::Balanced => counts
            .iter()
            .map(|&c| n as f64 / (k as f64 * c as f64))
            .collect(),
        ClassWeight::Given(w) => {
            if w.len() != k {
                return Err(Error::Options(format!(
                    "{} class weights given for {k} classes; give one per class, in class order",
                    w.len()
                )));
            }
            if w.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                return Err(Error::Options(format!(
                    "class weights must be positive numbers, got {w:?}"
                )));
            }
            w.clone()
        }
    };
    let w_min = weights.iter().copied().fold(f64::INFINITY, f64::min);
    let ratios: Vec<f64> = weights.iter().map(|w| w / w_min).collect();
    let mut best: Option<(f64, usize)> = None;
    for q in 1..=8usize {
        let err = ratios
            .iter()
            .map(|r| ((r * q as f64).round().max(1.0) / q as f64 - r).abs() / r)
            .fold(0.0, f64::max);
        if best.is_none_or(|(e, _)| err < e - 1e-12) {
            best = Some((err, q));
        }
        if err < 0.02 {
            break;
        }
    }
    let q = best.map_or(1, |(_, q)| q);
    let multiplicity: Vec<usize> = ratios
        .iter()
        .map(|r| (r * q as f64).round().max(1.0) as usize)
        .collect();
    let rows: usize = multiplicity.iter().zip(counts).map(|(m, c)| m * c).sum();
    if rows > 20 * n.max(1) {
        return Err(Error::Options(format!(
            "class weights {weights:?} would need {rows} replicated rows (> 20× the {n} training rows); use milder weights"
        )));
    }
    Ok((multiplicity, q as f64 / w_min))
}

/// One fit: the head's weights and biases, and the solver's parameters.
struct Fitted {
    /// `[k][d]` weights (a binary head's row 0 is zero).
    weights: Vec<Vec<f32>>,
    /// `[k]` biases.
    bias: Vec<f32>,
    /// The solver's parameter vector, to warm-start the next fit.
    params: Vec<f64>,
}

/// Fits the head's objective with L2 strength `alpha`, from `warm` or from zero.
fn fit(
    design: &Design,
    k: usize,
    alpha: f64,
    options: &TrainOptions,
    warm: Option<&[f64]>,
) -> Result<Fitted> {
    let objective = Objective::new(&design.x, &design.labels, design.dim, k, alpha);
    let start = match warm {
        Some(w) if w.len() == objective.parameters() => w.to_vec(),
        _ => vec![0.0; objective.parameters()],
    };
    let stopping = Stopping {
        max_iterations: options.max_iterations,
        gradient_tolerance: options.gradient_tolerance * design.labels.len() as f64,
    };
    let minimum = minimise(&objective, start, stopping);
    tracing::debug!(
        alpha,
        iterations = minimum.iterations,
        evaluations = minimum.evaluations,
        gradient_norm = minimum.gradient_norm,
        value = minimum.value,
        "L-BFGS"
    );
    if !minimum.value.is_finite() || minimum.x.iter().any(|v| !v.is_finite()) {
        return Err(Error::Training {
            alpha,
            reason: format!(
                "the objective became {} after {} iterations",
                minimum.value, minimum.iterations
            ),
        });
    }
    let blocks: Vec<(Vec<f32>, f32)> = minimum
        .x
        .chunks_exact(design.dim + 1)
        .map(|block| {
            let (w, b) = block.split_at(design.dim);
            (
                w.iter().map(|&v| v as f32).collect(),
                b.first().copied().unwrap_or(0.0) as f32,
            )
        })
        .collect();
    let (mut weights, mut bias): (Vec<Vec<f32>>, Vec<f32>) = blocks.into_iter().unzip();
    if k == 2 {
        // one logit (class 1's); class 0's row is zero
        weights.insert(0, vec![0.0; design.dim]);
        bias.insert(0, 0.0);
    }
    Ok(Fitted {
        weights,
        bias,
        params: minimum.x,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_replicate_the_minority_class() {
        // 30 vs 10 rows: balanced weights 40/60 = 2/3 and 40/20 = 2 → ratio 1:3.
        let (m, s) = replication(&ClassWeight::Balanced, &[30, 10]).expect("replication");
        assert_eq!(m, vec![1, 3]);
        assert!((s - 1.5).abs() < 1e-12, "{s}");
        // effective weights m/s equal the balanced weights exactly here
        assert!((m[0] as f64 / s - 2.0 / 3.0).abs() < 1e-12);
        assert!((m[1] as f64 / s - 2.0).abs() < 1e-12);
    }

    #[test]
    fn fractional_weights_use_a_small_denominator() {
        // 1 : 2.5 → multiplicities 2 : 5 with s = 2.
        let (m, s) =
            replication(&ClassWeight::Given(vec![1.0, 2.5]), &[5, 5]).expect("replication");
        assert_eq!(m, vec![2, 5]);
        assert!((s - 2.0).abs() < 1e-12);
    }

    #[test]
    fn class_weight_parses() {
        assert_eq!("balanced".parse::<ClassWeight>(), Ok(ClassWeight::Balanced));
        assert_eq!(
            "1, 2.5".parse::<ClassWeight>(),
            Ok(ClassWeight::Given(vec![1.0, 2.5]))
        );
        assert!("heavy".parse::<ClassWeight>().is_err());
    }
}
