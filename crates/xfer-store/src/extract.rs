//! The extract pipeline: a backbone over a dataset into the store, cached and resumable.
//!
//! [`extract`] is a short list of named steps:
//!
//! 1. `select_examples`: the split assignment, the shard and the limit pick the images;
//! 2. `lock_store`: the store's [`StoreLock`] (held to the end, so a concurrent writer waits)
//!    and the removal of killed writers' temporary files; then reconciliation with the
//!    dataset as it is now (stale rows of deleted, moved or relabelled images dropped, their
//!    embeddings reused by content hash; see [`crate::Reconciliation`]);
//! 3. `StorePlan::against`: what the store holds decides which images are cached, which
//!    are re-embedded (changed bytes) and which keep their embedding under a new split
//!    (`--retag`);
//! 4. `embed_batches`: three stages overlap, joined by bounded channels so memory is
//!    bounded by the queue depth, not by the dataset size:
//!    * **read + decode**: xfer-data's [`BatchLoader`] reads each file once and hashes it;
//!      its [`SkipHook`] counts a file whose `(id, content_hash, model)` is already stored
//!      as cached without decoding it; the others are decoded and resized on its rayon pool;
//!    * **inference** (the calling thread): the decoded images are regrouped into batches of
//!      exactly `batch_size` and run through ONNX Runtime;
//!    * **write** (a writer thread): [`EmbeddingWriter`] appends record batches and renames
//!      each part file when complete;
//! 5. `finish`: the counts are checked against the rows written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use ndarray::{Array2, Array3, Array4, Axis};
use xfer_data::{
    Batch, BatchLoader, Dataset, Example, ListingProblem, LoaderConfig, OnError, ResizeMethod,
    SkipHook, SkippedFile,
};
use xfer_runtime::{Backbone, Device, ModelManifest, SessionOptions};

use crate::lock::{LockWait, StoreLock};
use crate::reader::StoreReader;
use crate::reconcile::Reconciliation;
use crate::schema::{ModelIdentity, StoreMetadata, content_hash};
use crate::writer::{EmbeddingRecord, EmbeddingWriter, WriteSummary, WriterOptions};
use crate::{Error, Result};

/// The split type, its defaults and its syntax live in xfer-data, shared by every workflow.
pub use xfer_data::{DEFAULT_SEED, DEMO_SPLITS, SplitAssignment};

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
    /// Set (e.g. by a ctrl-c handler) to stop after the batch in flight: the rows embedded
    /// so far are written, and `extract` returns [`Error::Cancelled`]; a rerun resumes.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Wait for another writer's store lock (with a message naming it) or fail at once.
    pub wait: LockWait,
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
            cancel: None,
            wait: LockWait::Wait,
        })
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
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
    /// Dataset entries that could not be listed (symlink loops, dangling links, unreadable
    /// folders), with reasons.
    pub unlisted: Vec<ListingProblem>,
    /// Class folders with no image (a warning: training refuses an empty class).
    pub empty_classes: Vec<String>,
    /// Part files written.
    pub files: Vec<PathBuf>,
    /// Temporary part files of killed writers removed.
    pub temp_removed: usize,
    /// Stale rows dropped and embeddings reused for moved, renamed or relabelled images.
    pub reconciled: Reconciliation,
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
        self.write_counts(f)?;
        self.write_skipped(f)?;
        self.write_notes(f)?;
        self.write_timing(f)
    }
}

impl ExtractSummary {
    /// The model, the images per split and what became of them.
    fn write_counts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        )
    }

    /// Skipped files by reason (the first few named) and entries that could not be listed.
    fn write_skipped(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, n) in self.skipped_by_kind() {
            writeln!(f, "  skipped {n}: {kind}")?;
        }
        for s in self.skipped.iter().take(5) {
            writeln!(f, "    {}: {}", s.id, s.reason)?;
        }
        if !self.unlisted.is_empty() {
            writeln!(f, "not listed {} (not in the store):", self.unlisted.len())?;
            for p in &self.unlisted {
                writeln!(f, "    {}: {}", p.path.display(), p.reason)?;
            }
        }
        Ok(())
    }

    /// Warnings and housekeeping: empty classes, removed temp files, images not taken.
    fn write_notes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.empty_classes.is_empty() {
            writeln!(
                f,
                "warning: class folder(s) with no images: {} (train-head and finetune refuse an empty class)",
                self.empty_classes.join(", ")
            )?;
        }
        if self.temp_removed > 0 {
            writeln!(
                f,
                "removed {} temporary part file(s) of killed writers",
                self.temp_removed
            )?;
        }
        let r = &self.reconciled;
        if r.dropped() + r.reused() > 0 || r.deferred.is_some() {
            writeln!(f, "{r}")?;
        }
        if self.not_in_split + self.other_shards + self.over_limit > 0 {
            writeln!(
                f,
                "not taken: {} in no split, {} in other shards, {} over --limit",
                self.not_in_split, self.other_shards, self.over_limit
            )?;
        }
        Ok(())
    }

    /// The last line: time, throughput and part files written (or why none was).
    fn write_timing(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        if self.per_split.values().sum::<usize>() == 0 {
            return write!(
                f,
                "time {secs:.1}s, no image selected (see `not taken` above), no part file written"
            );
        }
        if self.embedded == 0 && self.files.is_empty() {
            return write!(
                f,
                "time {secs:.1}s, nothing to embed (every image already in the store), no part file written"
            );
        }
        let rate = if secs > 0.0 {
            self.embedded as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "time {secs:.1}s ({rate:.1} images/s embedded; {:.1}s in ONNX Runtime{}), {} part file(s) written",
            self.inference.as_secs_f64(),
            self.device.map(|d| format!(" on {d}")).unwrap_or_default(),
            self.files.len()
        )
    }
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
    if config.rows_per_part == 0 {
        return Err(Error::Spec {
            what: "--rows-per-part",
            spec: "0".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    config.session.check()?;
    let manifest = ModelManifest::read(&config.model_dir)?;
    let dataset = Dataset::open(&config.data)?;
    let unlisted = check_listing(config, &dataset)?;
    let mut summary = ExtractSummary {
        model_name: manifest.name.clone(),
        fingerprint: manifest.fingerprint.clone(),
        dataset_examples: dataset.len(),
        unlisted,
        empty_classes: empty_classes(&dataset),
        ..Default::default()
    };
    let selected = select_examples(config, &dataset, &mut summary)?;
    let meta = StoreMetadata::from_manifest(&manifest, dataset.classes().to_vec())
        .with_resize(config.resize)
        .with_engine(config.session.device, config.session.precision());
    let reconcile = Reconcile {
        config,
        manifest: &manifest,
        meta: &meta,
        dataset: &dataset,
        selected: &selected,
    };
    let _lock = reconcile.lock_store(&mut summary)?;
    let store = StoreReader::open_or_empty(&config.store)?;
    check_identity(&store, config, &meta)?;
    let plan = StorePlan::against(&store, config, &manifest, dataset.classes(), selected)?;
    let mut state = ExtractProgress {
        total: plan.to_embed.len(),
        ..Default::default()
    };
    progress(&state);
    let mut writer = EmbeddingWriter::create(&config.store, meta, &writer_options(config))?;
    summary.retagged = plan.write_retagged(&store, &manifest.fingerprint, &mut writer)?;
    if summary.retagged > 0 {
        state.done += summary.retagged;
        state.total += summary.retagged;
        progress(&state);
    }
    let run = Run {
        config,
        manifest: &manifest,
        summary: &mut summary,
        state: &mut state,
        progress,
    };
    let written = run.embed_batches(plan, writer)?;
    finish(summary, &state, written, start)
}

/// The entries of `dataset` that could not be listed; an error under [`OnError::Fail`].
fn check_listing(config: &ExtractConfig, dataset: &Dataset) -> Result<Vec<ListingProblem>> {
    let problems = dataset.listing_problems().to_vec();
    if config.on_error == OnError::Fail && !problems.is_empty() {
        let names: Vec<String> = problems
            .iter()
            .map(|p| format!("{} ({})", p.path.display(), p.reason))
            .collect();
        return Err(Error::Unlisted {
            data: config.data.clone(),
            count: problems.len(),
            names: names.join("; "),
        });
    }
    Ok(problems)
}

/// The classes of `dataset` with no example.
fn empty_classes(dataset: &Dataset) -> Vec<String> {
    dataset
        .classes()
        .iter()
        .zip(dataset.counts_per_class())
        .filter(|(_, n)| *n == 0)
        .map(|(c, _)| c.clone())
        .collect()
}

/// The examples this run looks at, tagged with their split, in seeded order: the split
/// assignment, then this shard, then `limit`; `summary` gets the counts left out and per split.
fn select_examples(
    config: &ExtractConfig,
    dataset: &Dataset,
    summary: &mut ExtractSummary,
) -> Result<Vec<(Example, String)>> {
    let mut selected = config.splits.assign(dataset.examples(), config.seed)?;
    summary.not_in_split = dataset.len() - selected.len();
    if let Some(shard) = config.shard {
        let before = selected.len();
        selected.retain(|(e, _)| shard.contains(&e.id));
        summary.other_shards = before - selected.len();
    }
    if let Some(limit) = config.limit
        && selected.len() > limit
    {
        summary.over_limit = selected.len() - limit;
        selected = lowest_id_hashes(selected, limit);
    }
    for (_, s) in &selected {
        *summary.per_split.entry(s.clone()).or_default() += 1;
    }
    Ok(selected)
}

/// A sample across all splits, independent of the seed: the `limit` lowest id hashes.
fn lowest_id_hashes(selected: Vec<(Example, String)>, limit: usize) -> Vec<(Example, String)> {
    let mut keyed: Vec<(u64, (Example, String))> = selected
        .into_iter()
        .map(|s| (xfer_data::example_key(&s.0.id), s))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.id.cmp(&b.1.0.id)));
    keyed.truncate(limit);
    keyed.into_iter().map(|(_, s)| s).collect()
}

/// The part-name tag (and shard lock name) of a `--shard` run.
fn shard_tag(config: &ExtractConfig) -> Option<String> {
    config.shard.map(|s| format!("s{}of{}", s.index, s.count))
}

fn writer_options(config: &ExtractConfig) -> WriterOptions {
    WriterOptions {
        rows_per_part: config.rows_per_part,
        tag: shard_tag(config),
        ..Default::default()
    }
}

/// Locks the store for this run (held until `extract` returns) and removes the temporary
/// files killed writers left.
fn lock_store(config: &ExtractConfig, summary: &mut ExtractSummary) -> Result<StoreLock> {
    let lock = StoreLock::acquire(&config.store, shard_tag(config).as_deref(), config.wait)?;
    summary.temp_removed = lock.remove_dead_temp_files()?;
    Ok(lock)
}

/// What reconciling the store with the dataset needs (see [`crate::reconcile`]).
struct Reconcile<'a> {
    config: &'a ExtractConfig,
    manifest: &'a ModelManifest,
    meta: &'a StoreMetadata,
    dataset: &'a Dataset,
    selected: &'a [(Example, String)],
}

impl Reconcile<'_> {
    /// Locks the store for this run and reconciles it with the dataset under the whole-store
    /// lock: a whole-store run under its own lock; a `--shard` run when it can take the
    /// whole store's lock at once (then it drops it and takes its shard's), else it says so.
    fn lock_store(&self, summary: &mut ExtractSummary) -> Result<StoreLock> {
        if self.config.shard.is_none() {
            let lock = lock_store(self.config, summary)?;
            summary.reconciled = self.run()?;
            return Ok(lock);
        }
        match StoreLock::acquire(&self.config.store, None, LockWait::NoWait) {
            Ok(whole) => {
                summary.reconciled = self.run()?;
                drop(whole);
            }
            Err(Error::Locked { holder, .. }) => {
                summary.reconciled.deferred = Some(format!(
                    "other writers hold the store ({holder}); the next run that gets the whole store drops stale rows"
                ));
            }
            Err(e) => return Err(e),
        }
        lock_store(self.config, summary)
    }

    /// Checks the store against this run's model and classes, then reconciles it.
    fn run(&self) -> Result<Reconciliation> {
        let store = StoreReader::open_or_empty(&self.config.store)?;
        check_identity(&store, self.config, self.meta)?;
        check_models(&store, self.config, self.manifest)?;
        check_classes(&store, self.config, self.manifest, self.dataset.classes())?;
        crate::reconcile::reconcile(
            &self.config.store,
            self.dataset,
            self.selected,
            self.meta,
            &writer_options(self.config),
        )
    }
}

/// The selected images measured against what the store holds for this model.
struct StorePlan {
    /// Images to read: embedded unless their stored hash matches (then counted as cached).
    to_embed: Vec<(Example, String)>,
    /// Content hash of every live stored row of this model, by id.
    stored_hash: HashMap<String, String>,
    /// Unchanged images stored under another split: a new row with the stored embedding.
    retag: HashMap<String, EmbeddingRecord>,
}

impl StorePlan {
    /// Refuses a store of other models (unless allowed) or other classes, and images stored
    /// under another split (unless `retag`); plans the rest.
    fn against(
        store: &StoreReader,
        config: &ExtractConfig,
        manifest: &ModelManifest,
        classes: &[String],
        mut selected: Vec<(Example, String)>,
    ) -> Result<StorePlan> {
        check_models(store, config, manifest)?;
        check_classes(store, config, manifest, classes)?;
        let stored = stored_rows(store, &manifest.fingerprint)?;
        let moved: Vec<&(Example, String)> = selected
            .iter()
            .filter(|(e, split)| matches!(stored.get(&e.id), Some((_, old)) if old != split))
            .collect();
        if !moved.is_empty() && !config.retag {
            return Err(refuse_moved(config, &moved, &stored));
        }
        let retag = unchanged_moved(&moved, &stored)?;
        selected.retain(|(e, _)| !retag.contains_key(&e.id));
        Ok(StorePlan {
            to_embed: selected,
            stored_hash: stored
                .into_iter()
                .map(|(id, (hash, _))| (id, hash))
                .collect(),
            retag,
        })
    }

    /// Writes the retagged rows (stored embeddings under their new split); their count.
    fn write_retagged(
        &self,
        store: &StoreReader,
        fingerprint: &str,
        writer: &mut EmbeddingWriter,
    ) -> Result<usize> {
        if self.retag.is_empty() {
            return Ok(0);
        }
        let ids: HashSet<String> = self.retag.keys().cloned().collect();
        let (keys, features) = store.load_rows(fingerprint, &ids)?;
        let records: Vec<EmbeddingRecord> = keys
            .iter()
            .filter_map(|k| self.retag.get(&k.id).cloned())
            .collect();
        if records.len() != keys.len() {
            return Err(Error::InvalidRows {
                op: "extract --retag",
                reason: "stored rows changed while retagging".to_owned(),
            });
        }
        writer.append(&records, features.view())?;
        Ok(records.len())
    }
}

fn check_models(
    store: &StoreReader,
    config: &ExtractConfig,
    manifest: &ModelManifest,
) -> Result<()> {
    let others: Vec<(String, String)> = store
        .models()
        .into_iter()
        .filter(|(fp, _)| *fp != manifest.fingerprint)
        .collect();
    if others.is_empty() || config.allow_mixed_models {
        return Ok(());
    }
    Err(Error::MixedModels {
        store: config.store.display().to_string(),
        existing: others
            .iter()
            .map(|(fp, name)| format!("{fp} ({name})"))
            .collect::<Vec<_>>()
            .join(", "),
        requested: format!("{} ({})", manifest.fingerprint, manifest.name),
    })
}

/// Refuses a store holding rows of the same ONNX bytes made another way (input size,
/// preprocessing, resize...), whatever `--allow-mixed-models` says: such rows carry the
/// same `model` value, so no reader could tell them apart.
fn check_identity(store: &StoreReader, config: &ExtractConfig, meta: &StoreMetadata) -> Result<()> {
    let identity = meta.model_identity();
    for f in store.files() {
        if f.meta.fingerprint != meta.fingerprint {
            continue;
        }
        if let Some((field, stored, requested)) = f.meta.model_identity().difference(&identity) {
            return Err(Error::IdentityMismatch {
                store: config.store.display().to_string(),
                field,
                stored: format!(
                    "`{stored}` (fingerprint {}, e.g. in {})",
                    meta.fingerprint,
                    f.path.display()
                ),
                requested,
            });
        }
    }
    Ok(())
}

fn check_classes(
    store: &StoreReader,
    config: &ExtractConfig,
    manifest: &ModelManifest,
    classes: &[String],
) -> Result<()> {
    let Some(existing) = store.model_metadata(&manifest.fingerprint)? else {
        return Ok(());
    };
    if existing.classes == classes && existing.feature_dim == manifest.feature_dim {
        return Ok(());
    }
    Err(Error::Inconsistent {
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
    })
}

/// `(content_hash, split)` of every live stored row of model `fingerprint`, by id.
fn stored_rows(
    store: &StoreReader,
    fingerprint: &str,
) -> Result<HashMap<String, (String, String)>> {
    Ok(store
        .stored_keys()?
        .into_iter()
        .filter(|k| k.live && k.model == fingerprint)
        .map(|k| (k.id, (k.content_hash, k.split)))
        .collect())
}

/// The error for images stored under another split than the assignment gives now (a
/// different `--split`/`--seed`, or files added to the dataset moved a boundary).
fn refuse_moved(
    config: &ExtractConfig,
    moved: &[&(Example, String)],
    stored: &HashMap<String, (String, String)>,
) -> Error {
    let examples: Vec<String> = moved
        .iter()
        .take(3)
        .map(|(e, s)| {
            let old = stored.get(&e.id).map(|(_, o)| o.as_str()).unwrap_or("");
            format!("{} (stored `{old}`, now `{s}`)", e.id)
        })
        .collect();
    Error::Inconsistent {
        store: config.store.display().to_string(),
        reason: format!(
            "{} image(s) are stored under another split than --split {} --seed {} gives now, e.g. {}; use the --split and --seed the store was made with, pass --retag to move the stored rows to the new splits (no re-embedding), or use another --store",
            moved.len(),
            config.splits,
            config.seed,
            examples.join(", ")
        ),
    }
}

/// The moved images whose bytes are unchanged: a new row with the stored embedding each
/// (changed or unreadable ones are left to be re-embedded or skipped).
fn unchanged_moved(
    moved: &[&(Example, String)],
    stored: &HashMap<String, (String, String)>,
) -> Result<HashMap<String, EmbeddingRecord>> {
    let mut retag = HashMap::new();
    for (e, split) in moved {
        let Ok(bytes) = xfer_data::read_image_file(&e.path) else {
            continue;
        };
        let hash = content_hash(&bytes);
        if stored.get(&e.id).map(|(h, _)| h) == Some(&hash) {
            let record = EmbeddingRecord::for_example(e, split, hash)?;
            retag.insert(e.id.clone(), record);
        }
    }
    Ok(retag)
}

/// Rows handed to the writer thread.
type Rows = (Vec<EmbeddingRecord>, Array2<f32>);

/// The state of one run's embedding stage, borrowed from [`extract`].
struct Run<'a> {
    config: &'a ExtractConfig,
    manifest: &'a ModelManifest,
    summary: &'a mut ExtractSummary,
    state: &'a mut ExtractProgress,
    progress: &'a mut dyn FnMut(&ExtractProgress),
}

impl Run<'_> {
    /// Read + decode (the loader), inference (this thread) and writing (a writer thread),
    /// overlapped; the writer's summary once every row is written.
    fn embed_batches(mut self, plan: StorePlan, writer: EmbeddingWriter) -> Result<WriteSummary> {
        let splits: HashMap<String, String> = plan
            .to_embed
            .iter()
            .map(|(e, s)| (e.id.clone(), s.clone()))
            .collect();
        let stored = Arc::new(plan.stored_hash);
        let examples = plan.to_embed.into_iter().map(|(e, _)| e).collect();
        let loader = start_loader(self.config, self.manifest, examples, Arc::clone(&stored))?;
        let (write_tx, writer_thread) = spawn_writer(writer, self.config.queue_depth.max(1))?;
        let outcome = self.infer(loader, &splits, &stored, &write_tx);
        drop(write_tx);
        let written = writer_thread.join().map_err(writer_panicked)?;
        let cancelled = outcome?;
        let written = written?;
        if cancelled {
            return Err(Error::Cancelled {
                stored: written.rows,
            });
        }
        Ok(written)
    }

    /// Embeds the loader's images and hands the rows to the writer; `Ok(true)` when cancelled.
    fn infer(
        &mut self,
        loader: BatchLoader,
        splits: &HashMap<String, String>,
        stored: &HashMap<String, String>,
        write_tx: &Sender<Rows>,
    ) -> Result<bool> {
        let mut embedder = Embedder::new(self.config, self.manifest);
        let mut rebatch = Rebatch::new(self.config.batch_size);
        for batch in loader {
            if self.config.cancelled() {
                return Ok(true);
            }
            let batch = batch?;
            self.count_not_decoded(&batch);
            let records = decoded_records(&batch, splits, stored)?;
            for ready in rebatch.push(records, batch.pixels) {
                if !self.embed(&mut embedder, ready, write_tx)? {
                    return Ok(false);
                }
            }
            (self.progress)(self.state);
        }
        if let Some(ready) = rebatch.finish() {
            self.embed(&mut embedder, ready, write_tx)?;
        }
        Ok(false)
    }

    /// Counts the batch's cached and skipped images.
    fn count_not_decoded(&mut self, batch: &Batch) {
        self.state.cached += batch.cached.len();
        self.state.skipped += batch.failures.len();
        self.state.done += batch.cached.len() + batch.failures.len();
        self.summary.skipped.extend(
            batch
                .failures
                .iter()
                .map(|(e, err)| SkippedFile::new(e, err)),
        );
    }

    /// Embeds one batch and sends it to the writer; `false` when the writer has stopped
    /// (its error is reported when it is joined).
    fn embed(
        &mut self,
        embedder: &mut Embedder<'_>,
        ready: Ready,
        write_tx: &Sender<Rows>,
    ) -> Result<bool> {
        let features = embedder.embed(ready.pixels.view(), self.summary)?;
        let n = ready.records.len();
        if write_tx.send((ready.records, features)).is_err() {
            return Ok(false);
        }
        self.state.embedded += n;
        self.state.done += n;
        self.summary.changed += ready.changed;
        (self.progress)(self.state);
        Ok(true)
    }
}

/// The loader over `examples`: it skips (as cached) the files whose hash is stored.
fn start_loader(
    config: &ExtractConfig,
    manifest: &ModelManifest,
    examples: Vec<Example>,
    stored: Arc<HashMap<String, String>>,
) -> Result<BatchLoader> {
    let [height, width] = manifest.image_size;
    let mut loader = LoaderConfig::new(height, width, config.batch_size);
    loader.queue_depth = config.queue_depth.max(1);
    loader.resize = config.resize;
    loader.on_error = config.on_error;
    loader.threads = config.decode_threads;
    loader.skip = Some(SkipHook::new(move |e, hash| {
        stored.get(&e.id).is_some_and(|h| h == hash)
    }));
    Ok(BatchLoader::start(examples, loader)?)
}

/// The records of a batch's decoded images, each flagged when its id was stored with other
/// bytes (a changed image).
fn decoded_records(
    batch: &Batch,
    splits: &HashMap<String, String>,
    stored: &HashMap<String, String>,
) -> Result<Vec<(EmbeddingRecord, bool)>> {
    batch
        .examples
        .iter()
        .zip(&batch.content_hashes)
        .map(|(e, hash)| {
            let split = splits.get(&e.id).map_or("", String::as_str);
            let record = EmbeddingRecord::for_example(e, split, hash.clone())?;
            Ok((record, stored.contains_key(&e.id)))
        })
        .collect()
}

/// The backbone, loaded on the first batch (a fully cached run never starts a session).
struct Embedder<'a> {
    config: &'a ExtractConfig,
    manifest: &'a ModelManifest,
    backbone: Option<Backbone>,
}

impl<'a> Embedder<'a> {
    fn new(config: &'a ExtractConfig, manifest: &'a ModelManifest) -> Self {
        Embedder {
            config,
            manifest,
            backbone: None,
        }
    }

    fn embed(
        &mut self,
        pixels: ndarray::ArrayView4<'_, f32>,
        summary: &mut ExtractSummary,
    ) -> Result<Array2<f32>> {
        let model = match self.backbone.as_mut() {
            Some(b) => b,
            None => {
                let b = Backbone::load(&self.config.model_dir, &self.config.session)?;
                if b.manifest.fingerprint != self.manifest.fingerprint {
                    return Err(Error::Inconsistent {
                        store: self.config.store.display().to_string(),
                        reason: format!(
                            "{} changed while extracting",
                            self.config.model_dir.display()
                        ),
                    });
                }
                check_engine(self.config, &b.model)?;
                summary.device = Some(b.model.device());
                self.backbone.insert(b)
            }
        };
        let t = Instant::now();
        let features = model.embed(pixels)?;
        summary.inference += t.elapsed();
        Ok(features)
    }
}

/// Refuses a session that fell back to another provider or precision than the store rows
/// are labelled with (`--allow-cpu-fallback` from OpenVINO): the rows would be mislabelled.
fn check_engine(config: &ExtractConfig, model: &xfer_runtime::Model) -> Result<()> {
    let asked = ModelIdentity::engine(config.session.device, config.session.precision());
    let got = ModelIdentity::engine(model.device(), model.precision());
    if asked == got {
        return Ok(());
    }
    Err(Error::Inconsistent {
        store: config.store.display().to_string(),
        reason: format!(
            "--device {} --precision {} fell back to {} at {}, which would label its rows wrongly; fix the device (`xfer doctor --device {}`) or ask for {} directly",
            config.session.device,
            config.session.precision(),
            model.device(),
            model.precision(),
            config.session.device,
            model.device()
        ),
    })
}

/// A batch ready for inference.
struct Ready {
    records: Vec<EmbeddingRecord>,
    pixels: Array4<f32>,
    /// How many of its images were stored with other bytes.
    changed: usize,
}

/// Decoded images regrouped into batches of exactly `size` (the last one smaller), so the
/// batches ONNX Runtime sees do not depend on which images were cached or skipped.
struct Rebatch {
    size: usize,
    pending: Vec<(EmbeddingRecord, bool, Array3<f32>)>,
}

impl Rebatch {
    fn new(size: usize) -> Self {
        Rebatch {
            size,
            pending: Vec::new(),
        }
    }

    /// Adds decoded images; the batches now complete.
    fn push(&mut self, records: Vec<(EmbeddingRecord, bool)>, pixels: Array4<f32>) -> Vec<Ready> {
        if self.pending.is_empty() && records.len() == self.size {
            let changed = records.iter().filter(|(_, c)| *c).count();
            let records = records.into_iter().map(|(r, _)| r).collect();
            return vec![Ready {
                records,
                pixels,
                changed,
            }];
        }
        for ((record, changed), image) in records.into_iter().zip(pixels.outer_iter()) {
            self.pending.push((record, changed, image.to_owned()));
        }
        let mut ready = Vec::new();
        while self.pending.len() >= self.size {
            ready.push(self.take(self.size));
        }
        ready
    }

    /// The last, partial batch.
    fn finish(&mut self) -> Option<Ready> {
        (!self.pending.is_empty()).then(|| self.take(self.pending.len()))
    }

    fn take(&mut self, n: usize) -> Ready {
        let items: Vec<_> = self.pending.drain(..n).collect();
        let shape = items
            .first()
            .map_or([0, 0], |(_, _, img)| [img.shape()[1], img.shape()[2]]);
        let mut pixels = Array4::<f32>::zeros((n, 3, shape[0], shape[1]));
        let mut records = Vec::with_capacity(n);
        let mut changed = 0;
        for (i, (record, was_changed, image)) in items.into_iter().enumerate() {
            pixels.index_axis_mut(Axis(0), i).assign(&image);
            records.push(record);
            changed += usize::from(was_changed);
        }
        Ready {
            records,
            pixels,
            changed,
        }
    }
}

/// The writer thread: appends the rows it receives, then finishes the last part file.
fn spawn_writer(
    mut writer: EmbeddingWriter,
    depth: usize,
) -> Result<(Sender<Rows>, JoinHandle<Result<WriteSummary>>)> {
    let (write_tx, write_rx) = bounded::<Rows>(depth);
    let handle = std::thread::Builder::new()
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
    Ok((write_tx, handle))
}

/// The error for a writer thread that panicked, with its message when it has one.
fn writer_panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    Error::WriterPanicked { message }
}

/// Checks the rows written against the rows embedded and completes the summary.
fn finish(
    mut summary: ExtractSummary,
    state: &ExtractProgress,
    written: WriteSummary,
    start: Instant,
) -> Result<ExtractSummary> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_thread_panic_is_its_own_error_with_the_message() {
        for payload in [
            std::thread::spawn(|| panic!("disk on fire")).join(),
            std::thread::spawn(|| panic!("row {} of {}", 3, 7)).join(),
        ] {
            let Err(payload) = payload;
            let err = writer_panicked(payload);
            assert!(matches!(err, Error::WriterPanicked { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("writer thread panicked"), "{text}");
            assert!(
                text.contains("disk on fire") || text.contains("row 3 of 7"),
                "{text}"
            );
        }
    }
}
