//! Classification metrics: accuracy, balanced accuracy, log loss, ROC AUC
//! (binary), per-class precision/recall/F1 and the confusion matrix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use xfer_fs::write_json;

/// File name of the metrics inside a run folder.
pub const METRICS_JSON: &str = "metrics.json";

/// Probabilities are clipped to `[EPS, 1 - EPS]` before taking logs (as scikit-learn did up to 1.5).
const LOG_LOSS_EPS: f64 = 1e-15;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class: String,
    /// Of the rows predicted as this class, the fraction that are (0 when none is predicted).
    pub precision: f64,
    /// Of the rows of this class, the fraction predicted as it (0 when it has no rows).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Rows of this class.
    pub support: usize,
}

/// Metrics of a classifier on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Number of rows.
    pub rows: usize,
    /// Fraction of rows whose most probable class is the true one.
    pub accuracy: f64,
    /// Mean recall over the classes that have rows.
    pub balanced_accuracy: f64,
    /// Mean negative log probability of the true class (natural log).
    pub log_loss: f64,
    /// Area under the ROC curve of the probability of class 1 (binary heads with both classes present).
    pub roc_auc: Option<f64>,
    /// Per-class precision, recall, F1.
    pub per_class: Vec<ClassMetrics>,
    /// Confusion matrix: `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// Computes the metrics of probabilities `[n, classes]` against integer labels.
    pub fn compute(probs: ArrayView2<'_, f64>, labels: &[i32], classes: &[String]) -> Result<Self> {
        let n = probs.nrows();
        let k = classes.len();
        if n == 0 {
            return Err(Error::Data("no rows to evaluate".to_owned()));
        }
        if labels.len() != n {
            return Err(Error::Data(format!(
                "{n} probability rows but {} labels",
                labels.len()
            )));
        }
        if probs.ncols() != k {
            return Err(Error::Data(format!(
                "{} probability columns but {k} classes",
                probs.ncols()
            )));
        }
        let labels = check_labels(labels, k)?;
        let predicted: Vec<usize> = probs
            .axis_iter(Axis(0))
            .map(|p| argmax(p.iter().copied()))
            .collect();

        let confusion = confusion_matrix(&labels, &predicted, k);
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let per_class = per_class_metrics(&confusion, classes);
        let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
        let balanced_accuracy =
            present.iter().map(|m| m.recall).sum::<f64>() / present.len() as f64;
        let log_loss = log_loss(probs, &labels);
        let roc_auc = if k == 2 {
            let scores: Vec<f64> = probs.column(1).to_vec();
            roc_auc(&scores, &labels)
        } else {
            None
        };
        Ok(Metrics {
            rows: n,
            accuracy: correct as f64 / n as f64,
            balanced_accuracy,
            log_loss,
            roc_auc,
            per_class,
            confusion,
        })
    }
}

/// `confusion[true][predicted]` counts.
fn confusion_matrix(labels: &[usize], predicted: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in labels.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    confusion
}

/// Precision, recall and F1 of every class from the confusion matrix.
fn per_class_metrics(confusion: &[Vec<usize>], classes: &[String]) -> Vec<ClassMetrics> {
    let ratio = |a: f64, b: usize| if b > 0 { a / b as f64 } else { 0.0 };
    classes
        .iter()
        .enumerate()
        .map(|(c, class)| {
            let tp = confusion[c][c] as f64;
            let support: usize = confusion[c].iter().sum();
            let predicted_c: usize = confusion.iter().map(|row| row[c]).sum();
            let precision = ratio(tp, predicted_c);
            let recall = ratio(tp, support);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: class.clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Mean negative log probability of the true class, probabilities clipped to
/// `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`.
fn log_loss(probs: ArrayView2<'_, f64>, labels: &[usize]) -> f64 {
    labels
        .iter()
        .zip(probs.axis_iter(Axis(0)))
        .map(|(&t, p)| -p[t].clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS).ln())
        .sum::<f64>()
        / labels.len() as f64
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0usize, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Labels as class indices, refusing any outside `0..k`.
pub(crate) fn check_labels(labels: &[i32], k: usize) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            usize::try_from(l).ok().filter(|&l| l < k).ok_or_else(|| {
                Error::Data(format!(
                    "row {i} has label {l}, outside the {k} classes (labels must be 0..{k})"
                ))
            })
        })
        .collect()
}

/// ROC AUC of `scores` for the positive class 1 (Mann–Whitney U with tied ranks
/// averaged); `None` unless both classes occur.
fn roc_auc(scores: &[f64], labels: &[usize]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l == 1).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their mean
        let mean_rank = (i + j + 2) as f64 / 2.0;
        rank_sum_pos += mean_rank * order[i..=j].iter().filter(|&&r| labels[r] == 1).count() as f64;
        i = j + 1;
    }
    let (p, q) = (positives as f64, negatives as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q))
}

/// Writes `dir/metrics.json`: one object per split name.
pub fn save_metrics(dir: &Path, splits: &[(String, Metrics)]) -> Result<()> {
    let map: BTreeMap<&str, &Metrics> = splits.iter().map(|(s, m)| (s.as_str(), m)).collect();
    Ok(write_json(&dir.join(METRICS_JSON), &map)?)
}

/// A readable table: one summary line per split, then per-class figures and the
/// confusion matrix of the last split.
pub fn format_table(splits: &[(String, Metrics)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>9} {:>9} {:>9} {:>8}",
        "split", "rows", "accuracy", "balanced", "log loss", "ROC AUC"
    );
    for (name, m) in splits {
        let auc = m
            .roc_auc
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.4}"));
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            name, m.rows, m.accuracy, m.balanced_accuracy, m.log_loss, auc
        );
    }
    if let Some((name, m)) = splits.last() {
        let width = m
            .per_class
            .iter()
            .map(|c| c.class.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<width$} {:>9} {:>9} {:>9} {:>8}   ({name})",
            "class", "precision", "recall", "F1", "support"
        );
        for c in &m.per_class {
            let _ = writeln!(
                s,
                "{:<width$} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(s);
        let corner = "true \\ predicted";
        let label_width = width.max(corner.len());
        let _ = write!(s, "{corner:<label_width$}");
        let col = width.max(6);
        for c in &m.per_class {
            let _ = write!(s, " {:>col$}", c.class);
        }
        let _ = writeln!(s);
        for (c, row) in m.per_class.iter().zip(&m.confusion) {
            let _ = write!(s, "{:<label_width$}", c.class);
            for v in row {
                let _ = write!(s, " {v:>col$}");
            }
            let _ = writeln!(s);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn classes(k: usize) -> Vec<String> {
        (0..k).map(|c| format!("c{c}")).collect()
    }

    /// Binary example worked by hand.
    /// scores (p1) = [0.9, 0.6, 0.6, 0.2], labels = [1, 0, 1, 0]
    /// - predictions (p1 > 0.5): [1, 1, 1, 0] → 3 correct of 4 → accuracy 0.75
    /// - recall c0 = 1/2, recall c1 = 2/2 → balanced accuracy 0.75
    /// - precision c1 = 2/3, precision c0 = 1/1; F1 c1 = 2·(2/3)·1/(5/3) = 0.8; F1 c0 = 2·1·0.5/1.5 = 2/3
    /// - log loss = -(ln 0.9 + ln 0.4 + ln 0.6 + ln 0.8)/4
    /// - AUC: pairs (pos, neg): (0.9,0.6)=1, (0.9,0.2)=1, (0.6,0.6)=½, (0.6,0.2)=1 → 3.5/4 = 0.875
    #[test]
    fn binary_metrics_match_hand_computation() {
        let p1 = [0.9, 0.6, 0.6, 0.2];
        let probs =
            ndarray::Array2::from_shape_fn(
                (4, 2),
                |(i, j)| if j == 1 { p1[i] } else { 1.0 - p1[i] },
            );
        let m = Metrics::compute(probs.view(), &[1, 0, 1, 0], &classes(2)).expect("metrics");
        assert_eq!(m.rows, 4);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.balanced_accuracy - 0.75).abs() < 1e-12);
        let ll = -(0.9f64.ln() + 0.4f64.ln() + 0.6f64.ln() + 0.8f64.ln()) / 4.0;
        assert!((m.log_loss - ll).abs() < 1e-12, "{} vs {ll}", m.log_loss);
        assert!((m.log_loss - 0.438_905).abs() < 1e-6); // (0.10536 + 0.91629 + 0.51083 + 0.22314) / 4
        assert!((m.roc_auc.expect("auc") - 0.875).abs() < 1e-12);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[1].recall - 1.0).abs() < 1e-12);
        assert!((m.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!((m.per_class[0].precision - 1.0).abs() < 1e-12);
        assert!((m.per_class[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[0].support, 2);
    }

    /// Three classes, imbalanced: labels [0,0,0,1,2], predictions [0,0,1,1,0].
    /// recall: c0 2/3, c1 1/1, c2 0/1 → balanced (2/3+1+0)/3 = 5/9; accuracy 3/5.
    #[test]
    fn multiclass_balanced_accuracy_and_confusion() {
        let probs = array![
            [0.7, 0.2, 0.1],
            [0.5, 0.3, 0.2],
            [0.2, 0.5, 0.3],
            [0.1, 0.8, 0.1],
            [0.4, 0.3, 0.3]
        ];
        let m = Metrics::compute(probs.view(), &[0, 0, 0, 1, 2], &classes(3)).expect("metrics");
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.balanced_accuracy - 5.0 / 9.0).abs() < 1e-12);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]
        );
        assert_eq!(m.roc_auc, None);
        let ll = -(0.7f64.ln() + 0.5f64.ln() + 0.2f64.ln() + 0.8f64.ln() + 0.3f64.ln()) / 5.0;
        assert!((m.log_loss - ll).abs() < 1e-12);
        assert_eq!(m.per_class[2].precision, 0.0);
        assert_eq!(m.per_class[2].f1, 0.0);
    }

    #[test]
    fn bad_labels_are_refused_with_a_message() {
        let probs = array![[0.5, 0.5]];
        let err =
            Metrics::compute(probs.view(), &[2], &classes(2)).expect_err("label 2 of 2 classes");
        assert!(err.to_string().contains("label 2"), "{err}");
        let err = Metrics::compute(probs.view(), &[-1], &classes(2)).expect_err("negative label");
        assert!(err.to_string().contains("label -1"), "{err}");
    }

    #[test]
    fn table_lists_every_split() {
        let probs = array![[0.8, 0.2], [0.3, 0.7]];
        let m = Metrics::compute(probs.view(), &[0, 1], &classes(2)).expect("metrics");
        let t = format_table(&[("train".to_owned(), m.clone()), ("test".to_owned(), m)]);
        assert!(t.contains("train"), "{t}");
        assert!(t.contains("test"), "{t}");
        assert!(t.contains("1.0000"), "{t}");
    }
}
