//! `xfer data info`: classes, counts per class and split, image sizes, unreadable files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::dataset::{Dataset, count_per_class};
use crate::decode::{decode_rgb8, image_dimensions, read_image_file};
use crate::error::Result;
use crate::split::SplitSpec;

/// A file that could not be read (or decoded, with full checking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableFile {
    /// The example id (or the path, for listing problems).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// A short category.
    pub kind: &'static str,
    /// The full reason.
    pub reason: String,
}

/// A description of a dataset.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    /// Class names.
    pub classes: Vec<String>,
    /// Examples per class, indexed by label.
    pub counts: Vec<usize>,
    /// Per requested split: its text and examples per class.
    pub splits: Vec<(String, Vec<usize>)>,
    /// Number of images per (width, height).
    pub size_histogram: BTreeMap<(u32, u32), usize>,
    /// Files that could not be read, and entries skipped while listing.
    pub unreadable: Vec<UnreadableFile>,
}

/// Describes `dataset`: counts per class and per split (under `seed`), image sizes from the
/// headers, and unreadable files; with `full_decode` every image is decoded, which also
/// catches truncated and corrupt files whose header is intact.
pub fn dataset_info(
    dataset: &Dataset,
    splits: &[SplitSpec],
    seed: u64,
    full_decode: bool,
) -> Result<DatasetInfo> {
    let num_classes = dataset.classes().len();
    let mut split_counts = Vec::new();
    for spec in splits {
        let examples = dataset.split(spec, seed)?;
        split_counts.push((spec.to_string(), count_per_class(&examples, num_classes)));
    }
    let probes: Vec<_> = dataset
        .examples()
        .par_iter()
        .map(|example| {
            let result = if full_decode {
                read_image_file(&example.path)
                    .and_then(|bytes| decode_rgb8(&bytes, &example.path))
                    .map(|rgb| (rgb.width(), rgb.height()))
            } else {
                image_dimensions(&example.path)
            };
            (example, result)
        })
        .collect();
    let mut size_histogram = BTreeMap::new();
    let mut unreadable = Vec::new();
    for problem in dataset.listing_problems() {
        unreadable.push(UnreadableFile {
            id: problem.path.display().to_string(),
            path: problem.path.clone(),
            kind: "unlistable entry",
            reason: problem.reason.clone(),
        });
    }
    for (example, result) in probes {
        match result {
            Ok(size) => *size_histogram.entry(size).or_insert(0) += 1,
            Err(err) => unreadable.push(UnreadableFile {
                id: example.id.clone(),
                path: example.path.clone(),
                kind: err.kind(),
                reason: err.to_string(),
            }),
        }
    }
    Ok(DatasetInfo {
        classes: dataset.classes().to_vec(),
        counts: dataset.counts_per_class(),
        splits: split_counts,
        size_histogram,
        unreadable,
    })
}
