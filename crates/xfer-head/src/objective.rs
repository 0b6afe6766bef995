//! The penalised logistic objective a head minimises, with its gradient, in one
//! pass over the design matrix.
//!
//! `f(θ) = Σᵢ −log pᵢ(yᵢ) + alpha/2·‖W‖²` (the intercepts are not penalised), where
//! `pᵢ = σ(wᵀxᵢ + b)` for a binary head and `softmax(Wxᵢ + b)` for a multinomial one.
//! This is linfa-logistic's objective, and scikit-learn's with `C = 1/alpha`.
//!
//! The parameters are `blocks` consecutive `[w (d values), b]` blocks: one block
//! (class 1's logit) for a binary head, one per class for a multinomial head.
//! Every row's logits, loss and gradient contribution are computed while the row
//! is in cache, so an evaluation reads the matrix once. Rows are cut into chunks
//! of a fixed size that are evaluated in parallel and summed in chunk order, so
//! the result does not depend on the number of threads.

use rayon::prelude::*;

/// Rows per parallel chunk (fixed: the summation order must not depend on the thread count).
const CHUNK_ROWS: usize = 64;

/// The objective on a standardised, row-major design matrix.
pub(crate) struct Objective<'a> {
    /// `rows × dim` values, row-major.
    x: &'a [f64],
    /// Class index of every row.
    labels: &'a [usize],
    dim: usize,
    /// Number of classes (2: binary, one logit).
    classes: usize,
    alpha: f64,
}

impl<'a> Objective<'a> {
    /// The objective of `labels.len()` rows of `dim` features in `x` (row-major),
    /// `classes` classes and L2 strength `alpha`.
    pub(crate) fn new(
        x: &'a [f64],
        labels: &'a [usize],
        dim: usize,
        classes: usize,
        alpha: f64,
    ) -> Self {
        debug_assert_eq!(x.len(), labels.len() * dim);
        Objective {
            x,
            labels,
            dim,
            classes,
            alpha,
        }
    }

    /// Number of `[w, b]` blocks: 1 for two classes, one per class otherwise.
    pub(crate) fn blocks(&self) -> usize {
        if self.classes == 2 { 1 } else { self.classes }
    }

    /// Length of the parameter vector.
    pub(crate) fn parameters(&self) -> usize {
        self.blocks() * (self.dim + 1)
    }

    /// The objective at `theta`; its gradient is written into `gradient`.
    pub(crate) fn value_and_gradient(&self, theta: &[f64], gradient: &mut [f64]) -> f64 {
        let partials: Vec<(f64, Vec<f64>)> = self
            .x
            .par_chunks(CHUNK_ROWS * self.dim)
            .zip(self.labels.par_chunks(CHUNK_ROWS))
            .map(|(x, labels)| self.chunk(theta, x, labels))
            .collect();
        gradient.fill(0.0);
        let mut loss = 0.0;
        for (l, g) in &partials {
            loss += l;
            axpy(1.0, g, gradient);
        }
        let mut penalty = 0.0;
        for (block, grad) in theta
            .chunks_exact(self.dim + 1)
            .zip(gradient.chunks_exact_mut(self.dim + 1))
        {
            let w = &block[..self.dim];
            penalty += dot(w, w);
            axpy(self.alpha, w, &mut grad[..self.dim]);
        }
        loss + 0.5 * self.alpha * penalty
    }

    /// Loss and loss gradient of the rows `x` (labels `labels`).
    fn chunk(&self, theta: &[f64], x: &[f64], labels: &[usize]) -> (f64, Vec<f64>) {
        let mut gradient = vec![0.0; theta.len()];
        let mut logits = vec![0.0; self.blocks()];
        let mut loss = 0.0;
        for (row, &label) in x.chunks_exact(self.dim).zip(labels) {
            for (z, block) in logits.iter_mut().zip(theta.chunks_exact(self.dim + 1)) {
                *z = dot(&block[..self.dim], row) + block[self.dim];
            }
            loss += if self.classes == 2 {
                binary_residual(&mut logits[0], label)
            } else {
                softmax_residual(&mut logits, label)
            };
            for (&r, grad) in logits.iter().zip(gradient.chunks_exact_mut(self.dim + 1)) {
                axpy(r, row, &mut grad[..self.dim]);
                grad[self.dim] += r;
            }
        }
        (loss, gradient)
    }
}

/// The log loss of one binary row with logit `*z`; `*z` becomes the residual `σ(z) − y`.
fn binary_residual(z: &mut f64, label: usize) -> f64 {
    let (y, margin) = if label == 1 { (1.0, *z) } else { (0.0, -*z) };
    let loss = softplus(-margin);
    *z = sigmoid(*z) - y;
    loss
}

/// The log loss of one multinomial row with logits `z`; `z` becomes the residuals
/// `softmax(z) − onehot(label)`.
fn softmax_residual(z: &mut [f64], label: usize) -> f64 {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
    let log_sum = max + sum.ln();
    let loss = log_sum - z.get(label).copied().unwrap_or(log_sum);
    for (c, v) in z.iter_mut().enumerate() {
        *v = (*v - log_sum).exp() - if c == label { 1.0 } else { 0.0 };
    }
    loss
}

/// `ln(1 + eᵗ)` without overflow.
fn softplus(t: f64) -> f64 {
    if t > 0.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}

/// `1 / (1 + e⁻ᵗ)` without overflow.
fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// `Σ aᵢbᵢ` with eight independent accumulators (vectorised), summed in a fixed order.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            *s += xi * yi;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a·x`.
pub(crate) fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of the value agree with the analytic gradient.
    fn check_gradient(classes: usize, labels: &[usize], alpha: f64) {
        let dim = 3;
        let x: Vec<f64> = (0..labels.len() * dim)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let objective = Objective::new(&x, labels, dim, classes, alpha);
        let theta: Vec<f64> = (0..objective.parameters())
            .map(|i| ((i * 13 % 7) as f64 - 3.0) / 4.0)
            .collect();
        let mut gradient = vec![0.0; theta.len()];
        objective.value_and_gradient(&theta, &mut gradient);
        let mut scratch = vec![0.0; theta.len()];
        for (i, analytic) in gradient.iter().enumerate() {
            let h = 1e-6;
            let mut plus = theta.clone();
            plus[i] += h;
            let mut minus = theta.clone();
            minus[i] -= h;
            let numeric = (objective.value_and_gradient(&plus, &mut scratch)
                - objective.value_and_gradient(&minus, &mut scratch))
                / (2.0 * h);
            assert!(
                (numeric - analytic).abs() < 1e-5 * (1.0 + numeric.abs()),
                "component {i}: numeric {numeric} vs analytic {analytic}"
            );
        }
    }

    #[test]
    fn binary_gradient_matches_finite_differences() {
        check_gradient(2, &[0, 1, 1, 0, 1, 0, 0], 0.7);
    }

    #[test]
    fn multinomial_gradient_matches_finite_differences() {
        check_gradient(3, &[0, 1, 2, 2, 1, 0, 1], 0.3);
    }

    #[test]
    fn value_is_the_log_loss_plus_penalty() {
        // one feature, two rows: z = 2x + 1 at x = 1 (label 1) and x = -1 (label 0)
        let x = [1.0, -1.0];
        let labels = [1, 0];
        let objective = Objective::new(&x, &labels, 1, 2, 0.5);
        let mut g = [0.0; 2];
        let value = objective.value_and_gradient(&[2.0, 1.0], &mut g);
        let expected = -(1.0 / (1.0 + (-3.0f64).exp())).ln()
            - (1.0 - 1.0 / (1.0 + 1.0f64.exp())).ln()
            + 0.25 * 4.0;
        assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
    }
}
