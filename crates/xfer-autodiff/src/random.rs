//! Seeded, counter-based random numbers: dropout masks and Glorot initialization.
//!
//! Every value is a pure function of (seed, step, stream, index), so a mask can
//! be regenerated in any language: see [`DROPOUT_MASK_RULE`].

/// The rule of [`dropout_mask`], in words (written into `graph.json`).
pub const DROPOUT_MASK_RULE: &str = "splitmix64(x) = (z = (x + 0x9E3779B97F4A7C15) mod 2^64; \
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB; z ^ (z >> 31)); \
h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ stream) ; for flat element i (row-major over [N, ...]): \
u = (splitmix64(h ^ i) >> 40) / 2^24; value = 0 if u < rate else 1 / (1 - rate)";

/// One step of the splitmix64 generator (a bijective 64-bit mix).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) with 24 random bits (exact in f32).
fn unit(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// An inverted-dropout mask of `len` elements for training step `step`: each
/// element is 0 with probability `rate`, else `1 / (1 - rate)`. `stream`
/// separates the masks of different dropout layers. Deterministic in all arguments.
pub fn dropout_mask(seed: u64, step: u64, stream: u64, len: usize, rate: f32) -> Vec<f32> {
    let keep = if rate < 1.0 { 1.0 / (1.0 - rate) } else { 0.0 };
    let h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ stream);
    (0..len as u64)
        .map(|i| {
            if unit(splitmix64(h ^ i)) < rate {
                0.0
            } else {
                keep
            }
        })
        .collect()
}

/// Keras `glorot_uniform` for a `[fan_in, fan_out]` kernel: uniform in
/// `±sqrt(6 / (fan_in + fan_out))`, seeded.
pub fn glorot_uniform(fan_in: usize, fan_out: usize, seed: u64) -> Vec<f32> {
    let limit = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    let h = splitmix64(seed ^ 0x676C_6F72_6F74); // "glorot"
    (0..(fan_in * fan_out) as u64)
        .map(|i| ((f64::from(unit(splitmix64(h ^ i))) * 2.0 - 1.0) * limit) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference: the first outputs of Vigna's splitmix64 seeded with 0
        // are splitmix64(0), splitmix64(0x9E3779B97F4A7C15), ...
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn mask_is_reproducible_scaled_and_near_the_rate() {
        let a = dropout_mask(7, 3, 0, 100_000, 0.2);
        let b = dropout_mask(7, 3, 0, 100_000, 0.2);
        assert_eq!(a, b);
        let c = dropout_mask(7, 4, 0, 100_000, 0.2);
        assert_ne!(a, c, "another step gives another mask");
        let d = dropout_mask(7, 3, 1, 100_000, 0.2);
        assert_ne!(a, d, "another stream gives another mask");
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.2).abs() < 0.01, "dropped fraction {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
    }

    #[test]
    fn glorot_stays_in_its_limit_and_is_centered() {
        let w = glorot_uniform(2048, 1, 1);
        let limit = (6.0f32 / 2049.0).sqrt();
        assert!(w.iter().all(|v| v.abs() <= limit));
        let mean = w.iter().map(|&v| f64::from(v)).sum::<f64>() / w.len() as f64;
        assert!(mean.abs() < 0.1 * f64::from(limit), "mean {mean}");
    }
}
