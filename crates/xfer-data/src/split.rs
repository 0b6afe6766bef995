//! Stable example order and TFDS-style split slices.
//!
//! Examples are ordered by a seeded hash of their id (`blake3(seed_le ‖ id)`, first 8 bytes
//! little-endian, ties broken by id), so the relative order of two files never depends on
//! which other files exist: adding files does not reshuffle the others, and the same seed
//! gives the same order on any machine. A split is a slice of that order written as TFDS
//! does: `train[:40%]`, `train[40%:50%]`, `train[-10%:]`, `train[:1400]`, unions with `+`.
//! Every split name refers to the whole dataset (a folder has no predefined splits), so
//! `train`, `all` and `validation[...]` slice the same order; the name is kept for display.

use std::fmt;

use crate::dataset::Example;
use crate::error::{DataError, Result};

/// One end of a slice: an absolute index or a percentage (negative values count from the end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// An absolute number of examples.
    Count(i64),
    /// A percentage of the examples, -100..=100.
    Percent(f64),
}

/// A `[from:to]` slice of the seeded order; `None` ends are open.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSpec {
    /// The split name as written (`train`, `all`, ...).
    pub name: String,
    /// The first example (inclusive).
    pub from: Option<Bound>,
    /// The end (exclusive).
    pub to: Option<Bound>,
}

/// A parsed split: one or more slices joined by `+`, optionally stratified by class.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSpec {
    text: String,
    slices: Vec<SliceSpec>,
    stratified: bool,
}

impl fmt::Display for SplitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for SplitSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        SplitSpec::parse(s)
    }
}

/// Python's `round` (half to even), which TFDS uses for percent boundaries.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

impl Bound {
    /// The boundary as an index into `n` examples (clamped to `0..=n`).
    pub fn resolve(&self, n: usize) -> usize {
        let n_i = n as i64;
        let raw = match *self {
            Bound::Count(c) => c,
            Bound::Percent(p) => round_half_even(p * n as f64 / 100.0),
        };
        let index = if raw < 0 { n_i + raw } else { raw };
        index.clamp(0, n_i) as usize
    }
}

fn parse_bound(spec: &str, text: &str) -> Result<Option<Bound>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| DataError::InvalidSplit {
        spec: spec.to_string(),
        reason,
    };
    if let Some(number) = text.strip_suffix('%') {
        let p: f64 = number
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{text}` is not a percentage like `40%`")))?;
        if !p.is_finite() || p.abs() > 100.0 {
            return Err(bad(format!("percentage `{text}` is outside -100%..100%")));
        }
        Ok(Some(Bound::Percent(p)))
    } else {
        let c: i64 = text
            .parse()
            .map_err(|_| bad(format!("`{text}` is not an example count or a percentage")))?;
        Ok(Some(Bound::Count(c)))
    }
}

impl SplitSpec {
    /// Parses `name`, `name[from:to]` (bounds `N`, `-N`, `N%`, `-N%`, either optional) and
    /// unions `a+b`. Examples: `train`, `train[:40%]`, `train[40%:50%]`, `train[:1400]`.
    pub fn parse(text: &str) -> Result<SplitSpec> {
        let trimmed = text.trim();
        let bad = |reason: &str| DataError::InvalidSplit {
            spec: text.to_string(),
            reason: reason.to_string(),
        };
        if trimmed.is_empty() {
            return Err(bad("empty; write e.g. `train[:80%]`"));
        }
        let mut slices = Vec::new();
        for part in trimmed.split('+') {
            let part = part.trim();
            let (name, range) = match part.find('[') {
                Some(open) => {
                    let close = part
                        .strip_suffix(']')
                        .ok_or_else(|| bad("a slice must end with `]`"))?;
                    (&part[..open], Some(&close[open + 1..]))
                }
                None => (part, None),
            };
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(
                    "each part needs a name like `train` (letters, digits, `_`, `-`)",
                ));
            }
            let (from, to) = match range {
                None => (None, None),
                Some(range) => {
                    let (from, to) = range
                        .split_once(':')
                        .ok_or_else(|| bad("a slice is written `[from:to]`, e.g. `[:40%]`"))?;
                    (parse_bound(text, from)?, parse_bound(text, to)?)
                }
            };
            slices.push(SliceSpec {
                name: name.to_string(),
                from,
                to,
            });
        }
        Ok(SplitSpec {
            text: trimmed.to_string(),
            slices,
            stratified: false,
        })
    }

    /// The same split, sliced per class (each class keeps its share; see [`split_examples`]).
    pub fn stratified(mut self, stratified: bool) -> SplitSpec {
        self.stratified = stratified;
        self
    }

    /// Whether the split is sliced per class.
    pub fn is_stratified(&self) -> bool {
        self.stratified
    }

    /// The slices joined by `+`.
    pub fn slices(&self) -> &[SliceSpec] {
        &self.slices
    }

    /// The name of the first slice (`train` for `train[:40%]`).
    pub fn name(&self) -> &str {
        self.slices.first().map_or("", |s| s.name.as_str())
    }

    /// The half-open index ranges this split takes from `n` ordered examples.
    pub fn ranges(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        self.slices
            .iter()
            .map(|s| {
                let from = s.from.map_or(0, |b| b.resolve(n));
                let to = s.to.map_or(n, |b| b.resolve(n));
                from..to.max(from)
            })
            .collect()
    }
}

/// The order key of an example id under `seed`: the first 8 bytes of `blake3(seed_le ‖ id)`.
pub fn order_key(seed: u64, id: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(id.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The examples in seeded-hash order (ties broken by id).
pub fn seeded_order(examples: &[Example], seed: u64) -> Vec<Example> {
    let mut keyed: Vec<(u64, &Example)> = examples
        .iter()
        .map(|e| (order_key(seed, &e.id), e))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    keyed.into_iter().map(|(_, e)| e.clone()).collect()
}

/// Applies `spec` to `examples` under `seed`; the result is in seeded order.
///
/// Plain mode slices the whole seeded order. Stratified mode slices each class's part of
/// the seeded order separately and merges the pieces back in seeded order, so every class
/// keeps its share (useful for small datasets); disjoint slices stay disjoint.
pub fn split_examples(examples: &[Example], spec: &SplitSpec, seed: u64) -> Result<Vec<Example>> {
    let ordered = seeded_order(examples, seed);
    if !spec.stratified {
        let mut out = Vec::new();
        for range in spec.ranges(ordered.len()) {
            out.extend_from_slice(&ordered[range]);
        }
        return Ok(out);
    }
    let mut labels: Vec<u32> = ordered.iter().map(|e| e.label).collect();
    labels.sort_unstable();
    labels.dedup();
    let mut chosen: Vec<(u64, Example)> = Vec::new();
    for label in labels {
        let class: Vec<&Example> = ordered.iter().filter(|e| e.label == label).collect();
        for range in spec.ranges(class.len()) {
            chosen.extend(
                class[range]
                    .iter()
                    .map(|e| (order_key(seed, &e.id), (*e).clone())),
            );
        }
    }
    chosen.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    Ok(chosen.into_iter().map(|(_, e)| e).collect())
}

impl crate::dataset::Dataset {
    /// The examples of split `spec` under `seed`, in seeded order (see [`split_examples`]).
    pub fn split(&self, spec: &SplitSpec, seed: u64) -> Result<Vec<Example>> {
        split_examples(self.examples(), spec, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(-2.5), -2);
        assert_eq!(round_half_even(2.4999), 2);
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
    }
}
