//! The head's L-BFGS against the previous solver, linfa-logistic, run here as an
//! independent reference: on the same standardised rows, every point of the
//! default L2 grid fitted from zero by linfa-logistic to a tight tolerance gives
//! the same validation accuracy, the same chosen strength and the same test
//! accuracy and log loss as `train` (warm-started, default tolerance).

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas they check

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array2, ArrayView2, Axis, s};
use ndarray_linfa as nd16;
use xfer_head::{Split, Standardizer, TrainOptions, train};

/// Deterministic pseudo-random numbers (xorshift64*), normal via Box–Muller.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// Overlapping classes in `dim` dimensions (few informative directions, many
/// noisy ones, like embeddings): the grid's choice is not trivial.
fn rows(classes: usize, n: usize, dim: usize, seed: u64) -> (Array2<f32>, Vec<i32>) {
    let mut rng = Rng(seed);
    let mut x = Array2::<f32>::zeros((n, dim));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let label = i % classes;
        for j in 0..dim {
            let signal = if j % (classes * 4) == label { 0.6 } else { 0.0 };
            x[[i, j]] = (3.0 + 2.0 * (rng.normal() + signal)) as f32;
        }
        y.push(label as i32);
    }
    (x, y)
}

/// Accuracy and mean log loss of class probabilities `p` (one row per example).
fn score(p: &Array2<f64>, y: &[i32]) -> (f64, f64) {
    let mut correct = 0;
    let mut loss = 0.0;
    for (row, &label) in p.axis_iter(Axis(0)).zip(y) {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("classes");
        correct += usize::from(best == label as usize);
        loss -= row[label as usize].max(1e-15).ln();
    }
    (correct as f64 / y.len() as f64, loss / y.len() as f64)
}

fn standardised(s: &Standardizer, x: ArrayView2<'_, f32>) -> nd16::Array2<f64> {
    let mut out = nd16::Array2::<f64>::zeros((x.nrows(), x.ncols()));
    let mut buf = vec![0.0; x.ncols()];
    for (i, row) in x.axis_iter(Axis(0)).enumerate() {
        s.apply_row(row, &mut buf);
        for j in 0..buf.len() {
            out[[i, j]] = buf[j];
        }
    }
    out
}

/// linfa-logistic's class probabilities on `eval`, fitted from zero on `train` with strength `l2`.
fn reference(
    classes: usize,
    train: (&nd16::Array2<f64>, &[i32]),
    eval: &nd16::Array2<f64>,
    l2: f64,
) -> Array2<f64> {
    let labels: nd16::Array1<usize> = train.1.iter().map(|&l| l as usize).collect();
    let data = Dataset::new(train.0.clone(), labels);
    let tolerance = 1e-6 * train.1.len() as f64;
    let mut p = Array2::<f64>::zeros((eval.nrows(), classes));
    if classes == 2 {
        let fitted = LogisticRegression::default()
            .alpha(l2)
            .max_iterations(5000)
            .gradient_tolerance(tolerance)
            .fit(&data)
            .expect("linfa binary fit");
        // linfa's probabilities are those of its "positive" class
        let pos = fitted.predict_probabilities(eval);
        let class1 = fitted.labels().pos.class == 1;
        for i in 0..eval.nrows() {
            p[[i, 1]] = if class1 { pos[i] } else { 1.0 - pos[i] };
            p[[i, 0]] = 1.0 - p[[i, 1]];
        }
    } else {
        let fitted = MultiLogisticRegression::default()
            .alpha(l2)
            .max_iterations(5000)
            .gradient_tolerance(tolerance)
            .fit(&data)
            .expect("linfa multinomial fit");
        let q = fitted.predict_probabilities(eval);
        for i in 0..eval.nrows() {
            for c in 0..classes {
                p[[i, c]] = q[[i, c]];
            }
        }
    }
    p
}

fn agrees_with_linfa(classes: usize, seed: u64) {
    let (n, dim) = (600, 48);
    let (x, y) = rows(classes, n, dim, seed);
    let (xt, yt) = (x.slice(s![..300, ..]), &y[..300]);
    let (xv, yv) = (x.slice(s![300..450, ..]), &y[300..450]);
    let (xe, ye) = (x.slice(s![450.., ..]), &y[450..]);
    let names: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
    let train_split = Split {
        name: "train",
        features: xt,
        labels: yt,
    };
    let val_split = Split {
        name: "val",
        features: xv,
        labels: yv,
    };
    let head = train(
        &train_split,
        Some(&val_split),
        &names,
        "fixture",
        &TrainOptions::default(),
    )
    .expect("train");

    let std = Standardizer::fit(xt);
    let (st, sv, se) = (
        standardised(&std, xt),
        standardised(&std, xv),
        standardised(&std, xe),
    );
    // the reference's choice: best validation accuracy, then lowest log loss
    let mut best: Option<(f64, f64, f64)> = None;
    for point in &head.hyper_parameters.l2_grid {
        let (acc, ll) = score(&reference(classes, (&st, yt), &sv, point.l2), yv);
        assert_eq!(point.val_accuracy, acc, "val accuracy at l2 {}", point.l2);
        assert!(
            (point.val_log_loss - ll).abs() < 1e-4,
            "val log loss at l2 {}: {} vs linfa {ll}",
            point.l2,
            point.val_log_loss
        );
        if best.is_none_or(|(_, a, l)| acc > a || (acc == a && ll < l)) {
            best = Some((point.l2, acc, ll));
        }
    }
    let (l2, _, _) = best.expect("a grid");
    assert_eq!(head.hyper_parameters.l2, l2, "chosen L2 strength");
    let ours = score(&head.probabilities(xe).expect("probabilities"), ye);
    let theirs = score(&reference(classes, (&st, yt), &se, l2), ye);
    assert_eq!(ours.0, theirs.0, "test accuracy");
    assert!(
        (ours.1 - theirs.1).abs() < 1e-4,
        "test log loss {} vs linfa {}",
        ours.1,
        theirs.1
    );
}

#[test]
fn binary_grid_agrees_with_linfa_logistic() {
    agrees_with_linfa(2, 11);
}

#[test]
fn multinomial_grid_agrees_with_linfa_logistic() {
    agrees_with_linfa(3, 23);
}
