//! Per-feature standardisation `(x - mean) / scale`, fitted on training embeddings.

use ndarray::{ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Per-feature mean and scale (population standard deviation, 1 where it is 0),
/// as scikit-learn's `StandardScaler` computes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of every feature over the training rows.
    pub mean: Vec<f32>,
    /// Standard deviation of every feature (1 for constant features).
    pub scale: Vec<f32>,
}

impl Standardizer {
    /// Fits mean and scale on the rows of `x` (accumulated in f64).
    pub fn fit(x: ArrayView2<'_, f32>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mut mean = vec![0f64; x.ncols()];
        for row in x.axis_iter(Axis(0)) {
            for (m, v) in mean.iter_mut().zip(row.iter()) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; x.ncols()];
        for row in x.axis_iter(Axis(0)) {
            for ((s, v), m) in var.iter_mut().zip(row.iter()).zip(&mean) {
                let d = f64::from(*v) - m;
                *s += d * d;
            }
        }
        let scale = var
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > f64::from(f32::EPSILON) * 10.0 {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer {
            mean: mean.iter().map(|m| *m as f32).collect(),
            scale,
        }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Standardises one row into `out` (f64), with the same f32 mean and scale the ONNX graph uses.
    pub fn apply_row(&self, row: ArrayView1<'_, f32>, out: &mut [f64]) {
        for (((o, v), m), s) in out
            .iter_mut()
            .zip(row.iter())
            .zip(&self.mean)
            .zip(&self.scale)
        {
            *o = (f64::from(*v) - f64::from(*m)) / f64::from(*s);
        }
    }
}
