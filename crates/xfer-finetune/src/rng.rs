//! Counter-based randomness: every random draw of a run is a pure function of
//! (seed, purpose, epoch, step, ...), so a resumed run draws exactly what an
//! uninterrupted one would, and the "RNG state" of a checkpoint is just its
//! position (seed, epoch, step).

/// SplitMix64's finaliser: a bijective 64-bit mixer with good avalanche.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a seed for one purpose and position from a run seed and a list of counters.
pub fn mix_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix(seed), |acc, &p| splitmix(acc ^ splitmix(p)))
}

/// A small deterministic generator (SplitMix64 stream) started from a derived seed.
#[derive(Debug, Clone)]
pub struct StreamRng {
    state: u64,
}

impl StreamRng {
    /// A stream starting at `seed`.
    pub fn new(seed: u64) -> Self {
        StreamRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.state)
    }

    /// A uniform float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform integer in [0, n) (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_f32() as f64).max(1e-12);
        let u2 = self.next_f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// The order in which epoch `epoch` visits `n` training examples (Fisher–Yates, seeded).
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StreamRng::new(mix_seed(seed, &[0x5348_5546, epoch]));
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = epoch_permutation(7, 3, 100);
        assert_eq!(a, epoch_permutation(7, 3, 100));
        assert_ne!(a, epoch_permutation(7, 4, 100));
        assert_ne!(a, epoch_permutation(8, 3, 100));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_floats_stay_in_range_and_spread() {
        let mut rng = StreamRng::new(mix_seed(1, &[2]));
        let draws: Vec<f32> = (0..10_000).map(|_| rng.next_f32()).collect();
        assert!(draws.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
