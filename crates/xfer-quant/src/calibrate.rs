//! Range collection: the running min/max of each calibrated tensor and, for the
//! percentile and entropy methods, a histogram of its absolute values.
//!
//! The histogram has [`BINS`] bins over `[0, top]`; when a batch holds a larger value,
//! `top` doubles and neighbouring bins merge, so the counts stay exact whatever the order
//! of the batches.

use std::fmt;
use std::str::FromStr;

use xfer_onnx::quant::Range;

use crate::{Error, Result};

/// Bins of each tensor's histogram of absolute values.
pub const BINS: usize = 2048;
/// Quantized levels the entropy method compares the histogram against (as ONNX Runtime's
/// and TensorRT's entropy calibrators do).
pub const ENTROPY_LEVELS: usize = 128;
/// Default percentile of the percentile method (ONNX Runtime's default).
pub const DEFAULT_PERCENTILE: f64 = 99.999;

/// How a tensor's range is chosen from the calibration data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest value seen.
    MinMax,
    /// Clip the absolute values at this percentile (e.g. 99.999).
    Percentile(f64),
    /// The clipping threshold whose quantized histogram is closest to the real one
    /// (least Kullback–Leibler divergence).
    Entropy,
}

impl Method {
    /// Whether the method needs histograms.
    pub fn needs_histogram(&self) -> bool {
        !matches!(self, Method::MinMax)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => f.write_str("minmax"),
            Method::Percentile(p) => write!(f, "percentile {p}"),
            Method::Entropy => f.write_str("entropy"),
        }
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile(DEFAULT_PERCENTILE)),
            "entropy" => Ok(Method::Entropy),
            other => Err(Error::Argument(format!(
                "unknown calibration method `{other}`; use minmax, percentile or entropy"
            ))),
        }
    }
}

/// What calibration has seen of one tensor.
#[derive(Debug, Clone)]
pub struct Collector {
    min: f32,
    max: f32,
    histogram: Option<Histogram>,
}

impl Collector {
    /// An empty collector, with a histogram when `method` needs one.
    pub fn new(method: Method) -> Self {
        Collector {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            histogram: method.needs_histogram().then(Histogram::default),
        }
    }

    /// Adds the values of one batch (non-finite values are ignored).
    pub fn update(&mut self, values: &[f32]) {
        let mut max_abs = 0.0f32;
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            max_abs = max_abs.max(v.abs());
        }
        if let Some(h) = self.histogram.as_mut() {
            h.add(values, max_abs);
        }
    }

    /// The range `method` picks from what was seen (`None` when nothing finite was seen).
    pub fn range(&self, method: Method) -> Option<Range> {
        if self.min > self.max {
            return None;
        }
        let full = Range::new(self.min, self.max);
        let threshold = match (method, &self.histogram) {
            (Method::Percentile(p), Some(h)) => h.percentile(p),
            (Method::Entropy, Some(h)) => h.entropy_threshold(),
            _ => return Some(full),
        };
        Some(Range::new(
            self.min.max(-threshold),
            self.max.min(threshold),
        ))
    }
}

/// Counts of absolute values in [`BINS`] equal bins over `[0, top]`.
#[derive(Debug, Clone, Default)]
struct Histogram {
    top: f32,
    counts: Vec<u64>,
}

impl Histogram {
    fn width(&self) -> f32 {
        self.top / BINS as f32
    }

    fn add(&mut self, values: &[f32], max_abs: f32) {
        if self.counts.is_empty() {
            // All-zero batches so far: the first bin holds them until a range appears.
            self.top = max_abs.max(1e-30);
            self.counts = vec![0; BINS];
        }
        while self.top < max_abs {
            self.double();
        }
        let scale = BINS as f32 / self.top;
        for &v in values.iter().filter(|v| v.is_finite()) {
            let bin = ((v.abs() * scale) as usize).min(BINS - 1);
            self.counts[bin] += 1;
        }
    }

    /// Doubles `top`: bins 2k and 2k+1 become bin k.
    fn double(&mut self) {
        let mut merged = vec![0u64; BINS];
        for (k, m) in merged.iter_mut().enumerate().take(BINS / 2) {
            *m = self.counts[2 * k] + self.counts[2 * k + 1];
        }
        self.counts = merged;
        self.top *= 2.0;
    }

    /// The upper edge of the first bin where the cumulative share reaches `p` percent.
    fn percentile(&self, p: f64) -> f32 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return self.top;
        }
        let target = (p / 100.0).clamp(0.0, 1.0) * total as f64;
        let mut cumulative = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            cumulative += c;
            if cumulative as f64 >= target {
                return (i + 1) as f32 * self.width();
            }
        }
        self.top
    }

    /// The clipping threshold of least KL divergence between the clipped histogram and its
    /// [`ENTROPY_LEVELS`]-level quantization (the TensorRT / ONNX Runtime algorithm).
    fn entropy_threshold(&self) -> f32 {
        if self.counts.iter().sum::<u64>() == 0 {
            return self.top;
        }
        let mut best = (f64::INFINITY, BINS);
        for end in ENTROPY_LEVELS..=BINS {
            let kl = clipped_divergence(&self.counts, end);
            if kl < best.0 {
                best = (kl, end);
            }
        }
        best.1 as f32 * self.width()
    }
}

/// KL(P‖Q) for P = the first `end` bins with the outliers added to the last one, and Q =
/// P's bins merged into [`ENTROPY_LEVELS`] levels and spread back over P's non-empty bins.
fn clipped_divergence(counts: &[u64], end: usize) -> f64 {
    let mut p: Vec<f64> = counts[..end].iter().map(|&c| c as f64).collect();
    let outliers: u64 = counts[end..].iter().sum();
    let mut q = vec![0.0f64; end];
    let per_level = end / ENTROPY_LEVELS;
    for level in 0..ENTROPY_LEVELS {
        let start = level * per_level;
        let stop = if level + 1 == ENTROPY_LEVELS {
            end
        } else {
            start + per_level
        };
        let bins = &p[start..stop];
        let mass: f64 = bins.iter().sum();
        let nonzero = bins.iter().filter(|&&v| v > 0.0).count();
        if nonzero > 0 {
            let share = mass / nonzero as f64;
            for (qi, &pi) in q[start..stop].iter_mut().zip(bins) {
                if pi > 0.0 {
                    *qi = share;
                }
            }
        }
    }
    if let Some(last) = p.last_mut() {
        *last += outliers as f64;
    }
    let p_total: f64 = p.iter().sum();
    let q_total: f64 = q.iter().sum();
    if p_total == 0.0 || q_total == 0.0 {
        return f64::INFINITY;
    }
    let eps = 1e-12;
    p.iter()
        .zip(&q)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(pi, qi)| {
            let pn = pi / p_total;
            let qn = (qi / q_total).max(eps);
            pn * (pn / qn).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_is_the_extremes_over_batches() {
        let mut c = Collector::new(Method::MinMax);
        c.update(&[0.5, -1.0, f32::NAN]);
        c.update(&[3.0, 0.0]);
        assert_eq!(c.range(Method::MinMax), Some(Range::new(-1.0, 3.0)));
        assert_eq!(Collector::new(Method::MinMax).range(Method::MinMax), None);
    }

    #[test]
    fn histograms_merge_exactly_when_the_range_grows() {
        let mut h = Histogram::default();
        h.add(&[0.5, 1.0], 1.0);
        h.add(&[3.9], 3.9);
        // top 1 → 2 → 4: 0.5 (bin 1024 of [0, 1]) ends in bin 256 of [0, 4]; 1.0, the top of
        // [0, 1], was in its last bin (2047), which ends in bin 511; 3.9 falls in bin 1996.
        assert_eq!(h.top, 4.0);
        assert_eq!(h.counts.iter().sum::<u64>(), 3);
        assert_eq!(h.counts[256], 1);
        assert_eq!(h.counts[511], 1);
        assert_eq!(h.counts[1996], 1);
    }

    #[test]
    fn percentile_clips_the_rare_outlier() {
        let mut c = Collector::new(Method::Percentile(99.0));
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        values.push(100.0);
        c.update(&values);
        let r = c.range(Method::Percentile(99.0)).expect("range");
        assert_eq!(r.min, 0.0);
        assert!(r.max > 0.9 && r.max < 1.1, "{r:?}");
        assert_eq!(c.range(Method::MinMax).expect("range").max, 100.0);
    }

    #[test]
    fn entropy_clips_a_long_tail_but_keeps_the_bulk() {
        let mut c = Collector::new(Method::Entropy);
        // The bulk uniform on [0, 1], a thin tail up to 50.
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        values.extend((0..10).map(|i| 5.0 * (i + 1) as f32));
        c.update(&values);
        let r = c.range(Method::Entropy).expect("range");
        assert!(r.max >= 0.9 && r.max < 10.0, "{r:?}");
    }

    #[test]
    fn methods_parse() {
        assert_eq!("minmax".parse::<Method>().expect("m"), Method::MinMax);
        assert_eq!("Entropy".parse::<Method>().expect("m"), Method::Entropy);
        assert_eq!(
            "percentile".parse::<Method>().expect("m"),
            Method::Percentile(DEFAULT_PERCENTILE)
        );
        assert!("kl".parse::<Method>().is_err());
    }
}
