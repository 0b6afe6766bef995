//! Named splits over one seeded order: `train=train[:70%],val=train[70%:85%],test=train[85%:]`.
//!
//! Every workflow (`data info`, `extract`, `evaluate`, `finetune`, `train-graph`) tags its
//! examples through a [`SplitAssignment`], so the same text gives the same images everywhere,
//! and named splits that share an image are refused before anything is trained on it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::dataset::Example;
use crate::error::{DataError, Result, SplitOverlap};
use crate::split::{SplitSpec, seeded_order, split_examples};

/// The default split assignment: 70/15/15 of the whole dataset's seeded order.
pub const DEMO_SPLITS: &str = "train=train[:70%],val=train[70%:85%],test=train[85%:]";
/// The default seed of the split order.
pub const DEFAULT_SEED: u64 = 1337;

/// Which split each example is tagged with: `name=SPEC,name=SPEC,...` or one `SPEC`.
///
/// Each `SPEC` is a [`SplitSpec`] (`train[:70%]`, `train[70%:85%]`, `train[-10%:]`, unions
/// with `+`) over the seeded order of the whole dataset; `name` is the tag. A single `SPEC`
/// without `name=` is tagged with its own name (`train[:40%]` → `train`). The named splits
/// must not overlap; examples in none of them are left out. [`SplitAssignment::stratified`]
/// slices every class separately by the same fractions.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitAssignment {
    text: String,
    parts: Vec<(String, SplitSpec)>,
}

/// Whether `name` is usable as a split tag (letters, digits, `_`, `-`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl SplitAssignment {
    /// Parses `train=train[:70%],val=train[70%:85%],test=train[85%:]` or a single spec.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| DataError::InvalidSplit {
            spec: text.to_owned(),
            reason: format!(
                "{reason}; expected `name=SPEC,...` like `{DEMO_SPLITS}`, or one SPEC like `train[:80%]`"
            ),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(bad("empty".to_owned()));
        }
        if !trimmed.contains('=') {
            let spec = SplitSpec::parse(trimmed).map_err(|e| bad(e.to_string()))?;
            return Ok(SplitAssignment {
                text: trimmed.to_owned(),
                parts: vec![(spec.name().to_owned(), spec)],
            });
        }
        let mut named = Vec::new();
        for item in trimmed.split(',') {
            let (name, spec) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{}` has no `name=`", item.trim())))?;
            if spec.trim().is_empty() {
                return Err(bad(format!("split `{}` has no SPEC", name.trim())));
            }
            named.push((name.trim(), spec.trim()));
        }
        let mut assignment = Self::from_named(&named).map_err(|e| match e {
            DataError::InvalidSplit { reason, .. } => bad(reason),
            other => other,
        })?;
        assignment.text = trimmed.to_owned();
        Ok(assignment)
    }

    /// Named splits given separately, e.g. `--train SPEC --val SPEC --test SPEC`:
    /// `from_named(&[("train", "train[:80%]"), ("test", "train[70%:]")])`.
    ///
    /// A blank SPEC names no split (an optional split left out). [`SplitAssignment::assign`]
    /// and [`SplitAssignment::select`] refuse overlapping splits as [`SplitAssignment::parse`]
    /// does.
    pub fn from_named<S: AsRef<str>>(named: &[(&str, S)]) -> Result<Self> {
        let mut parts: Vec<(String, SplitSpec)> = Vec::new();
        for (name, spec) in named {
            let (name, spec) = (name.trim(), spec.as_ref().trim());
            let bad = |reason: String| DataError::InvalidSplit {
                spec: format!("{name}={spec}"),
                reason,
            };
            if !valid_name(name) {
                return Err(bad(format!(
                    "split name `{name}` must be letters, digits, `_` or `-`"
                )));
            }
            if parts.iter().any(|(n, _)| n == name) {
                return Err(bad(format!("split `{name}` is named twice")));
            }
            if spec.is_empty() {
                continue;
            }
            let spec = SplitSpec::parse(spec).map_err(|e| bad(e.to_string()))?;
            parts.push((name.to_owned(), spec));
        }
        let text = parts
            .iter()
            .map(|(n, s)| format!("{n}={s}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(SplitAssignment { text, parts })
    }

    /// The same assignment, sliced per class: each class's part of the seeded order is cut
    /// by the same fractions, so every split keeps the dataset's class proportions.
    pub fn stratified(mut self, stratified: bool) -> Self {
        for (_, spec) in &mut self.parts {
            *spec = spec.clone().stratified(stratified);
        }
        self
    }

    /// Whether the splits are sliced per class.
    pub fn is_stratified(&self) -> bool {
        self.parts.iter().any(|(_, s)| s.is_stratified())
    }

    /// The split names, in the order given.
    pub fn names(&self) -> Vec<&str> {
        self.parts.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The named specs, in the order given.
    pub fn specs(&self) -> &[(String, SplitSpec)] {
        &self.parts
    }

    /// The examples of each named split (in the order given), each in seeded order.
    ///
    /// An error naming every pair of splits that share examples, and how many.
    pub fn select(&self, examples: &[Example], seed: u64) -> Result<Vec<(String, Vec<Example>)>> {
        let mut chosen = Vec::with_capacity(self.parts.len());
        for (name, spec) in &self.parts {
            chosen.push((name.clone(), split_examples(examples, spec, seed)?));
        }
        self.refuse_overlaps(&chosen)?;
        Ok(chosen)
    }

    /// Tags examples with their split, in the seeded order of the whole dataset.
    ///
    /// An error if two splits share an example (see [`SplitAssignment::select`]).
    pub fn assign(&self, examples: &[Example], seed: u64) -> Result<Vec<(Example, String)>> {
        let chosen = self.select(examples, seed)?;
        let tag: HashMap<&str, &str> = chosen
            .iter()
            .flat_map(|(name, list)| list.iter().map(|e| (e.id.as_str(), name.as_str())))
            .collect();
        Ok(seeded_order(examples, seed)
            .into_iter()
            .filter_map(|e| {
                let t = (*tag.get(e.id.as_str())?).to_owned();
                Some((e, t))
            })
            .collect())
    }

    fn refuse_overlaps(&self, chosen: &[(String, Vec<Example>)]) -> Result<()> {
        let sets: Vec<HashSet<&str>> = chosen
            .iter()
            .map(|(_, list)| list.iter().map(|e| e.id.as_str()).collect())
            .collect();
        let mut overlaps = Vec::new();
        for (i, (first, _)) in chosen.iter().enumerate() {
            for (second, list) in chosen.iter().skip(i + 1) {
                let mut shared = list.iter().filter(|e| sets[i].contains(e.id.as_str()));
                let Some(example) = shared.next() else {
                    continue;
                };
                overlaps.push(SplitOverlap {
                    first: first.clone(),
                    second: second.clone(),
                    shared: 1 + shared.count(),
                    example: example.id.clone(),
                });
            }
        }
        if overlaps.is_empty() {
            return Ok(());
        }
        Err(DataError::OverlappingSplits {
            splits: self.text.clone(),
            overlaps,
        })
    }
}

impl std::str::FromStr for SplitAssignment {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        SplitAssignment::parse(s)
    }
}

impl fmt::Display for SplitAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
