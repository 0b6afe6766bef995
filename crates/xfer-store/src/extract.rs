//! The extract pipeline: a backbone over a dataset into the store, cached and resumable.
//!
//! Three stages overlap, joined by bounded channels so memory is bounded by
//! the queue depth, not by the dataset size:
//!
//! 1. **read + decode** (a producer thread driving a rayon pool): each file is
//!    read once; its blake3 is compared with the store; a file whose
//!    `(id, content_hash, model)` is already stored is counted as cached and
//!    not decoded; the others are decoded and resized (xfer-data) into NCHW
//!    batches of `batch_size`.
//! 2. **inference** (the calling thread): ONNX Runtime on each batch.
//! 3. **write** (a writer thread): [`EmbeddingWriter`] appends record batches
//!    and renames each part file when complete.
//!
//! xfer-data's `BatchLoader` decodes every file it is given; the cache check
//! has to sit between reading and decoding, so this module drives xfer-data's
//! read/decode functions itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use ndarray::{Array2, Array3, Array4, Axis};
use rayon::prelude::*;
use xfer_data::{Dataset, Example, OnError, ResizeMethod, SkippedFile, SplitSpec};
use xfer_runtime::{Backbone, Device, ModelManifest, SessionOptions};

use crate::reader::StoreReader;
use crate::schema::{StoreMetadata, content_hash};
use crate::writer::{EmbeddingRecord, EmbeddingWriter, WriteSummary, WriterOptions};
use crate::{Error, Result};

/// The demo split assignment: 70/15/15 of the whole dataset's seeded order.
pub const DEMO_SPLITS: &str = "train=train[:70%],val=train[70%:85%],test=train[85%:]";
/// The demo seed of the split order.
pub const DEFAULT_SEED: u64 = 1337;

/// Which split each example is tagged with: `name=SPEC,name=SPEC,...` or one `SPEC`.
///
/// Each `SPEC` is an xfer-data split (`train[:70%]`, `train[70%:85%]`,
/// `train[-10%:]`, unions with `+`) over the seeded order of the whole
/// dataset; `name` is the tag stored in the `split` column. A single `SPEC`
/// without `name=` is tagged with its own name (`train[:40%]` → `train`).
/// The named splits must not overlap; examples in none of them are not
/// extracted.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitAssignment {
    text: String,
    parts: Vec<(String, SplitSpec)>,
}

impl SplitAssignment {
    /// Parses `train=train[:70%],val=train[70%:85%],test=train[85%:]` or a single spec.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Spec {
            what: "--split",
            spec: text.to_owned(),
            reason: format!(
                "{reason}; expected `name=SPEC,...` like `{DEMO_SPLITS}`, or one SPEC like `train[:80%]`"
            ),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(bad("empty".to_owned()));
        }
        let mut parts: Vec<(String, SplitSpec)> = Vec::new();
        if !trimmed.contains('=') {
            let spec = SplitSpec::parse(trimmed).map_err(|e| bad(e.to_string()))?;
            parts.push((spec.name().to_owned(), spec));
        } else {
            for item in trimmed.split(',') {
                let (name, spec) = item
                    .split_once('=')
                    .ok_or_else(|| bad(format!("`{}` has no `name=`", item.trim())))?;
                let name = name.trim();
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(bad(format!(
                        "split name `{name}` must be letters, digits, `_` or `-`"
                    )));
                }
                if parts.iter().any(|(n, _)| n == name) {
                    return Err(bad(format!("split `{name}` is named twice")));
                }
                let spec = SplitSpec::parse(spec).map_err(|e| bad(e.to_string()))?;
                parts.push((name.to_owned(), spec));
            }
        }
        Ok(SplitAssignment {
            text: trimmed.to_owned(),
            parts,
        })
    }

    /// The split names, in the order given.
    pub fn names(&self) -> Vec<&str> {
        self.parts.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Tags examples with their split, in the seeded order of the whole dataset.
    ///
    /// An error if two splits share an example.
    pub fn assign(&self, examples: &[Example], seed: u64) -> Result<Vec<(Example, String)>> {
        let mut tag: HashMap<&str, &str> = HashMap::new();
        let mut chosen: Vec<Vec<Example>> = Vec::with_capacity(self.parts.len());
        for (_, spec) in &self.parts {
            chosen.push(xfer_data::split_examples(examples, spec, seed)?);
        }
        for ((name, _), list) in self.parts.iter().zip(&chosen) {
            for e in list {
                if let Some(other) = tag.insert(e.id.as_str(), name.as_str())
                    && other != name
                {
                    return Err(Error::Spec {
                        what: "--split",
                        spec: self.text.clone(),
                        reason: format!(
                            "splits `{other}` and `{name}` overlap (both hold `{}`); make the slices disjoint",
                            e.id
                        ),
                    });
                }
            }
        }
        Ok(xfer_data::seeded_order(examples, seed)
            .into_iter()
            .filter_map(|e| {
                tag.get(e.id.as_str())
                    .map(|t| (*t).to_owned())
                    .map(|t| (e, t))
            })
            .collect())
    }
}

impl std::str::FromStr for SplitAssignment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SplitAssignment::parse(s)
    }
}

impl fmt::Display for SplitAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `--shard I/N`: this process extracts the examples whose id hashes to `I` modulo `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` with `0 <= I < N`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Spec {
            what: "--shard",
            spec: text.to_owned(),
            reason: format!("{reason}; expected `I/N` with 0 <= I < N, e.g. `0/4`"),
        };
        let (i, n) = text.trim().split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: u32 = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 || index >= count {
            return Err(bad("out of range"));
        }
        Ok(Shard { index, count })
    }

    /// Whether example `id` belongs to this shard (blake3 of the id, independent of the seed).
    pub fn contains(&self, id: &str) -> bool {
        xfer_data::example_key(id) % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Shard::parse(s)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Everything `xfer extract` needs.
#[derive(Debug, Clone)]
pub struct ExtractConfig {
    /// Dataset root (class folders or a CSV manifest).
    pub data: PathBuf,
    /// Split tags.
    pub splits: SplitAssignment,
    /// Seed of the split order.
    pub seed: u64,
    /// Model folder (`model.onnx` + `model.json`).
    pub model_dir: PathBuf,
    /// Store directory.
    pub store: PathBuf,
    /// Images per ONNX Runtime run.
    pub batch_size: usize,
    /// Session settings (library, device, threads).
    pub session: SessionOptions,
    /// Extract only this shard.
    pub shard: Option<Shard>,
    /// Allow a store that already holds another model's rows.
    pub allow_mixed_models: bool,
    /// Skip or stop on unreadable images.
    pub on_error: OnError,
    /// Decoded batches waiting for inference (and embedded batches waiting for the writer).
    pub queue_depth: usize,
    /// Decoder threads (`None`: rayon's default, one per core).
    pub decode_threads: Option<usize>,
    /// Rows per part file.
    pub rows_per_part: usize,
    /// Only N of the selected examples (those with the lowest blake3 of their id, so a
    /// sample of every split that does not depend on the seed), for quick runs and benchmarks.
    pub limit: Option<usize>,
    /// Resize method.
    pub resize: ResizeMethod,
    /// Move stored rows whose split changed to their new split (copying the embedding) instead of refusing.
    pub retag: bool,
}

impl ExtractConfig {
    /// Defaults: demo splits and seed, batch 32, queue depth 4, skip bad files, 256 rows per part.
    pub fn new(data: &Path, model_dir: &Path, store: &Path) -> Result<Self> {
        Ok(ExtractConfig {
            data: data.to_path_buf(),
            splits: SplitAssignment::parse(DEMO_SPLITS)?,
            seed: DEFAULT_SEED,
            model_dir: model_dir.to_path_buf(),
            store: store.to_path_buf(),
            batch_size: 32,
            session: SessionOptions::default(),
            shard: None,
            allow_mixed_models: false,
            on_error: OnError::Skip,
            queue_depth: 4,
            decode_threads: None,
            rows_per_part: WriterOptions::default().rows_per_part,
            limit: None,
            resize: ResizeMethod::Bilinear,
            retag: false,
        })
    }
}

/// Counts reported while extracting.
#[derive(Debug, Clone, Default)]
pub struct ExtractProgress {
    /// Images this run looks at (after splits, shard and limit).
    pub total: usize,
    /// Images dealt with so far (embedded + cached + skipped).
    pub done: usize,
    /// Images embedded and handed to the writer.
    pub embedded: usize,
    /// Images found in the store.
    pub cached: usize,
    /// Images that could not be read or decoded.
    pub skipped: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct ExtractSummary {
    /// Model name.
    pub model_name: String,
    /// Model fingerprint.
    pub fingerprint: String,
    /// Execution provider actually used (`None` when nothing needed embedding).
    pub device: Option<Device>,
    /// Examples in the dataset.
    pub dataset_examples: usize,
    /// Examples in no split.
    pub not_in_split: usize,
    /// Examples left to other shards.
    pub other_shards: usize,
    /// Examples left out by `limit`.
    pub over_limit: usize,
    /// Examples this run looked at, per split.
    pub per_split: BTreeMap<String, usize>,
    /// Images embedded now.
    pub embedded: usize,
    /// Of those, images whose bytes changed since they were stored.
    pub changed: usize,
    /// Images moved to another split with their stored embedding (`retag`).
    pub retagged: usize,
    /// Images already in the store.
    pub cached: usize,
    /// Images skipped, with reasons.
    pub skipped: Vec<SkippedFile>,
    /// Part files written.
    pub files: Vec<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
    /// Time spent inside ONNX Runtime.
    pub inference: Duration,
}

impl ExtractSummary {
    /// Skipped files per reason.
    pub fn skipped_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.kind).or_insert(0) += 1;
        }
        m
    }
}

impl fmt::Display for ExtractSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.embedded as f64 / secs
        } else {
            0.0
        };
        writeln!(f, "model {} ({})", self.model_name, self.fingerprint)?;
        let splits: Vec<String> = self
            .per_split
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(
            f,
            "images: {} ({})",
            self.per_split.values().sum::<usize>(),
            splits.join(", ")
        )?;
        write!(f, "embedded {}", self.embedded)?;
        if self.changed > 0 {
            write!(f, " ({} changed since stored)", self.changed)?;
        }
        if self.retagged > 0 {
            write!(
                f,
                ", retagged {} (split changed, embedding kept)",
                self.retagged
            )?;
        }
        writeln!(
            f,
            ", cached {}, skipped {}",
            self.cached,
            self.skipped.len()
        )?;
        for (kind, n) in self.skipped_by_kind() {
            writeln!(f, "  skipped {n}: {kind}")?;
        }
        for s in self.skipped.iter().take(5) {
            writeln!(f, "    {}: {}", s.id, s.reason)?;
        }
        if self.not_in_split + self.other_shards + self.over_limit > 0 {
            writeln!(
                f,
                "not taken: {} in no split, {} in other shards, {} over --limit",
                self.not_in_split, self.other_shards, self.over_limit
            )?;
        }
        if self.embedded == 0 && self.files.is_empty() {
            return write!(
                f,
                "time {secs:.1}s, nothing to embed (every image already in the store), no part file written"
            );
        }
        write!(
            f,
            "time {secs:.1}s ({rate:.1} images/s embedded; {:.1}s in ONNX Runtime{}), {} part file(s) written",
            self.inference.as_secs_f64(),
            self.device.map(|d| format!(" on {d}")).unwrap_or_default(),
            self.files.len()
        )
    }
}

enum Msg {
    Cached(usize),
    Skipped(Vec<SkippedFile>),
    Batch {
        records: Vec<EmbeddingRecord>,
        pixels: Array4<f32>,
        changed: usize,
    },
    Failed(xfer_data::DataError),
}

enum Item {
    Cached,
    Decoded(EmbeddingRecord, Array3<f32>, bool),
    Failed(Example, xfer_data::DataError),
}

/// Runs the backbone over the selected images that are not yet stored; `progress` is called on
/// the calling thread after every step.
pub fn extract(
    config: &ExtractConfig,
    progress: &mut dyn FnMut(&ExtractProgress),
) -> Result<ExtractSummary> {
    let start = Instant::now();
    if config.batch_size == 0 {
        return Err(Error::Spec {
            what: "--batch-size",
            spec: "0".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    let manifest = ModelManifest::read(&config.model_dir)?;
    let dataset = Dataset::open(&config.data)?;
    let classes = dataset.classes().to_vec();
    let meta = StoreMetadata::from_manifest(&manifest, classes.clone());

    // Which images, tagged with which split.
    let assigned = config.splits.assign(dataset.examples(), config.seed)?;
    let mut summary = ExtractSummary {
        model_name: manifest.name.clone(),
        fingerprint: manifest.fingerprint.clone(),
        dataset_examples: dataset.len(),
        not_in_split: dataset.len() - assigned.len(),
        ..Default::default()
    };
    let mut selected: Vec<(Example, String)> = match config.shard {
        Some(shard) => {
            let before = assigned.len();
            let kept: Vec<_> = assigned
                .into_iter()
                .filter(|(e, _)| shard.contains(&e.id))
                .collect();
            summary.other_shards = before - kept.len();
            kept
        }
        None => assigned,
    };
    if let Some(limit) = config.limit
        && selected.len() > limit
    {
        // A sample across all splits, independent of the seed: the lowest id hashes.
        summary.over_limit = selected.len() - limit;
        let mut keyed: Vec<(u64, (Example, String))> = selected
            .into_iter()
            .map(|s| (xfer_data::example_key(&s.0.id), s))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.id.cmp(&b.1.0.id)));
        keyed.truncate(limit);
        selected = keyed.into_iter().map(|(_, s)| s).collect();
    }
    for (_, s) in &selected {
        *summary.per_split.entry(s.clone()).or_default() += 1;
    }

    // What the store already holds.
    let store = StoreReader::open_or_empty(&config.store)?;
    let others: Vec<(String, String)> = store
        .models()
        .into_iter()
        .filter(|(fp, _)| *fp != manifest.fingerprint)
        .collect();
    if !others.is_empty() && !config.allow_mixed_models {
        return Err(Error::MixedModels {
            store: config.store.display().to_string(),
            existing: others
                .iter()
                .map(|(fp, name)| format!("{fp} ({name})"))
                .collect::<Vec<_>>()
                .join(", "),
            requested: format!("{} ({})", manifest.fingerprint, manifest.name),
        });
    }
    if let Some(existing) = store.model_metadata(&manifest.fingerprint)?
        && (existing.classes != classes || existing.feature_dim != manifest.feature_dim)
    {
        return Err(Error::Inconsistent {
            store: config.store.display().to_string(),
            reason: format!(
                "its rows of model {} have classes {:?} (dim {}) but the dataset {} has classes {:?} (dim {}); extract into another --store",
                manifest.name,
                existing.classes,
                existing.feature_dim,
                config.data.display(),
                classes,
                manifest.feature_dim
            ),
        });
    }
    let mut stored: HashMap<String, (String, String)> = HashMap::new();
    for k in store.stored_keys()? {
        if k.live && k.model == manifest.fingerprint {
            stored.insert(k.id, (k.content_hash, k.split));
        }
    }
    // Images stored under another split than the assignment gives now (a different
    // --split/--seed, or files added to the dataset moved a boundary).
    let moved: Vec<usize> = (0..selected.len())
        .filter(
            |&i| matches!(stored.get(&selected[i].0.id), Some((_, old)) if *old != selected[i].1),
        )
        .collect();
    if !moved.is_empty() && !config.retag {
        let examples: Vec<String> = moved
            .iter()
            .take(3)
            .map(|&i| {
                let (e, s) = &selected[i];
                let old = stored.get(&e.id).map(|(_, o)| o.as_str()).unwrap_or("");
                format!("{} (stored `{old}`, now `{s}`)", e.id)
            })
            .collect();
        return Err(Error::Inconsistent {
            store: config.store.display().to_string(),
            reason: format!(
                "{} image(s) are stored under another split than --split {} --seed {} gives now, e.g. {}; use the --split and --seed the store was made with, pass --retag to move the stored rows to the new splits (no re-embedding), or use another --store",
                moved.len(),
                config.splits,
                config.seed,
                examples.join(", ")
            ),
        });
    }
    // Unchanged moved images get a new row with the stored embedding; changed ones are re-embedded.
    let mut retag: HashMap<String, EmbeddingRecord> = HashMap::new();
    for &i in &moved {
        let (e, split) = &selected[i];
        let Ok(bytes) = xfer_data::read_image_file(&e.path) else {
            continue;
        };
        let hash = content_hash(&bytes);
        if stored.get(&e.id).map(|(h, _)| h) == Some(&hash) {
            retag.insert(
                e.id.clone(),
                EmbeddingRecord {
                    id: e.id.clone(),
                    label: i32::try_from(e.label).unwrap_or(i32::MAX),
                    split: split.clone(),
                    content_hash: hash,
                },
            );
        }
    }
    selected.retain(|(e, _)| !retag.contains_key(&e.id));
    let stored_hash: Arc<HashMap<String, String>> = Arc::new(
        stored
            .into_iter()
            .map(|(id, (hash, _))| (id, hash))
            .collect(),
    );

    let mut state = ExtractProgress {
        total: selected.len(),
        ..Default::default()
    };
    progress(&state);

    // Stage 1: read, hash, decode.
    let pool = {
        let mut b = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("xfer-decode-{i}"));
        if let Some(n) = config.decode_threads {
            b = b.num_threads(n.max(1));
        }
        b.build().map_err(|e| Error::Io {
            op: "start decoder pool",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
    };
    let depth = config.queue_depth.max(1);
    let (batch_tx, batch_rx) = bounded::<Msg>(depth);
    let batch_size = config.batch_size;
    let [height, width] = manifest.image_size;
    let resize = config.resize;
    let on_error = config.on_error;
    let hashes = Arc::clone(&stored_hash);
    let producer = std::thread::Builder::new()
        .name("xfer-extract-decode".into())
        .spawn(move || {
            let mut pending: Vec<(EmbeddingRecord, Array3<f32>, bool)> = Vec::new();
            let send_batches =
                |pending: &mut Vec<(EmbeddingRecord, Array3<f32>, bool)>, all: bool| -> bool {
                    while pending.len() >= batch_size || (all && !pending.is_empty()) {
                        let take = pending.len().min(batch_size);
                        let items: Vec<_> = pending.drain(..take).collect();
                        let mut pixels =
                            Array4::<f32>::zeros((take, 3, height as usize, width as usize));
                        let mut records = Vec::with_capacity(take);
                        let mut changed = 0;
                        for (i, (rec, img, was_changed)) in items.into_iter().enumerate() {
                            pixels.index_axis_mut(Axis(0), i).assign(&img);
                            records.push(rec);
                            changed += usize::from(was_changed);
                        }
                        if batch_tx
                            .send(Msg::Batch {
                                records,
                                pixels,
                                changed,
                            })
                            .is_err()
                        {
                            return false;
                        }
                    }
                    true
                };
            for chunk in selected.chunks(batch_size) {
                let items: Vec<Item> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|(e, split)| {
                            let bytes = match xfer_data::read_image_file(&e.path) {
                                Ok(b) => b,
                                Err(err) => return Item::Failed(e.clone(), err),
                            };
                            let hash = content_hash(&bytes);
                            let known = hashes.get(&e.id);
                            if known == Some(&hash) {
                                return Item::Cached;
                            }
                            match xfer_data::load_image_bytes_with(
                                &bytes, &e.path, height, width, resize,
                            ) {
                                Ok(img) => Item::Decoded(
                                    EmbeddingRecord {
                                        id: e.id.clone(),
                                        label: i32::try_from(e.label).unwrap_or(i32::MAX),
                                        split: split.clone(),
                                        content_hash: hash,
                                    },
                                    img,
                                    known.is_some(),
                                ),
                                Err(err) => Item::Failed(e.clone(), err),
                            }
                        })
                        .collect()
                });
                let mut cached = 0;
                let mut skipped = Vec::new();
                for item in items {
                    match item {
                        Item::Cached => cached += 1,
                        Item::Decoded(rec, img, changed) => pending.push((rec, img, changed)),
                        Item::Failed(e, err) => {
                            if on_error == OnError::Fail {
                                let _ = batch_tx.send(Msg::Failed(err));
                                return;
                            }
                            skipped.push(SkippedFile {
                                id: e.id.clone(),
                                path: e.path.clone(),
                                kind: err.kind(),
                                reason: err.to_string(),
                            });
                        }
                    }
                }
                if cached > 0 && batch_tx.send(Msg::Cached(cached)).is_err() {
                    return;
                }
                if !skipped.is_empty() && batch_tx.send(Msg::Skipped(skipped)).is_err() {
                    return;
                }
                if !send_batches(&mut pending, false) {
                    return;
                }
            }
            send_batches(&mut pending, true);
        })
        .map_err(|e| Error::Io {
            op: "start decoder thread",
            path: String::new(),
            source: e,
        })?;

    // Stage 3: the writer.
    let (write_tx, write_rx) = bounded::<(Vec<EmbeddingRecord>, Array2<f32>)>(depth);
    let writer_options = WriterOptions {
        rows_per_part: config.rows_per_part,
        tag: config.shard.map(|s| format!("s{}of{}", s.index, s.count)),
        ..Default::default()
    };
    let mut writer = EmbeddingWriter::create(&config.store, meta, &writer_options)?;
    if !retag.is_empty() {
        let ids: std::collections::HashSet<String> = retag.keys().cloned().collect();
        let (keys, features) = store.load_rows(&manifest.fingerprint, &ids)?;
        let records: Vec<EmbeddingRecord> = keys
            .iter()
            .filter_map(|k| retag.get(&k.id).cloned())
            .collect();
        if records.len() != keys.len() {
            return Err(Error::InvalidRows {
                op: "extract --retag",
                reason: "stored rows changed while retagging".to_owned(),
            });
        }
        writer.append(&records, features.view())?;
        summary.retagged = records.len();
        state.done += records.len();
        state.total += records.len();
        progress(&state);
    }
    let writer_thread = std::thread::Builder::new()
        .name("xfer-extract-write".into())
        .spawn(move || -> Result<WriteSummary> {
            for (records, features) in write_rx {
                writer.append(&records, features.view())?;
            }
            writer.finish()
        })
        .map_err(|e| Error::Io {
            op: "start writer thread",
            path: String::new(),
            source: e,
        })?;

    // Stage 2: inference on this thread.
    let mut backbone: Option<Backbone> = None;
    let mut run = || -> Result<()> {
        for msg in &batch_rx {
            match msg {
                Msg::Cached(n) => {
                    state.cached += n;
                    state.done += n;
                }
                Msg::Skipped(list) => {
                    state.skipped += list.len();
                    state.done += list.len();
                    summary.skipped.extend(list);
                }
                Msg::Failed(err) => return Err(err.into()),
                Msg::Batch {
                    records,
                    pixels,
                    changed,
                } => {
                    let model = match backbone.as_mut() {
                        Some(b) => b,
                        None => {
                            let b = Backbone::load(&config.model_dir, &config.session)?;
                            if b.manifest.fingerprint != manifest.fingerprint {
                                return Err(Error::Inconsistent {
                                    store: config.store.display().to_string(),
                                    reason: format!(
                                        "{} changed while extracting",
                                        config.model_dir.display()
                                    ),
                                });
                            }
                            summary.device = Some(b.model.device());
                            backbone.insert(b)
                        }
                    };
                    let t = Instant::now();
                    let features = model.embed(pixels.view())?;
                    summary.inference += t.elapsed();
                    let n = records.len();
                    if write_tx.send((records, features)).is_err() {
                        // The writer stopped; its error is reported below.
                        return Ok(());
                    }
                    state.embedded += n;
                    state.done += n;
                    summary.changed += changed;
                }
            }
            progress(&state);
        }
        Ok(())
    };
    let outcome = run();
    drop(batch_rx);
    drop(write_tx);
    let producer_ok = producer.join().is_ok();
    let written = writer_thread.join().map_err(|_| Error::InvalidRows {
        op: "extract",
        reason: "the writer thread panicked".to_owned(),
    })?;
    outcome?;
    let written = written?;
    if !producer_ok {
        return Err(Error::Data(xfer_data::DataError::LoaderStopped {
            reason: "the decoder thread panicked".to_owned(),
        }));
    }
    if written.rows != state.embedded + summary.retagged {
        return Err(Error::InvalidRows {
            op: "extract",
            reason: format!(
                "{} rows embedded but {} written",
                state.embedded, written.rows
            ),
        });
    }
    summary.embedded = state.embedded;
    summary.cached = state.cached;
    summary.files = written.files;
    summary.elapsed = start.elapsed();
    Ok(summary)
}
