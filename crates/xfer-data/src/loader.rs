//! Parallel decode → resize → augment into NCHW batches, delivered through a bounded queue.
//!
//! A producer thread walks the examples batch by batch in their given order; each batch is
//! decoded on a rayon pool (order preserved), augmented per (seed, epoch, example) and sent
//! through a channel holding at most `queue_depth` batches, so memory stays flat however
//! large the dataset is, and decoding overlaps with whatever the consumer does.
//!
//! With a [`ResizedImageCache`] in [`LoaderConfig::cache`], the resized pre-augmentation
//! image of each example is kept across loaders (epochs), so later epochs only augment.
//!
//! With a [`SkipHook`] in [`LoaderConfig::skip`], each file is read and hashed, then the hook
//! decides whether to decode it; the ones it skips (e.g. already embedded with this content)
//! are reported in [`Batch::cached`] without being decoded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;

use crate::augment::Augmentation;
use crate::cache::ResizedImageCache;
use crate::dataset::Example;
use crate::decode::{
    JpegScaling, ResizeMethod, ResizeTarget, check_size, load_image_bytes_with_scaling,
    read_image_file,
};
use crate::error::{DataError, Result};

/// What to do when an image cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Report it, count it in the [`LoadSummary`], and go on (the default).
    #[default]
    Skip,
    /// Stop at the first one.
    Fail,
}

impl std::str::FromStr for OnError {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(OnError::Skip),
            "fail" => Ok(OnError::Fail),
            other => Err(DataError::InvalidArgument {
                what: "error policy",
                reason: format!("`{other}`; use `skip` or `fail`"),
            }),
        }
    }
}

/// Settings of a [`BatchLoader`].
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Output height in pixels.
    pub height: u32,
    /// Output width in pixels.
    pub width: u32,
    /// Examples per batch (the last batch may be smaller).
    pub batch_size: usize,
    /// Batches decoded ahead of the consumer (channel capacity, at least 1).
    pub queue_depth: usize,
    /// How images are resized.
    pub resize: ResizeMethod,
    /// Whether large JPEGs are decoded at reduced scale before an antialiased resize
    /// ([`JpegScaling::Auto`], the default; [`JpegScaling::Full`] forces full decoding).
    pub jpeg_scaling: JpegScaling,
    /// Augmentation applied after resizing, or `None`.
    pub augmentation: Option<Augmentation>,
    /// Augmentation seed.
    pub seed: u64,
    /// Epoch number (a different epoch draws different augmentations).
    pub epoch: u64,
    /// Skip or stop on bad images.
    pub on_error: OnError,
    /// Decoder threads; `None` uses all cores.
    pub threads: Option<usize>,
    /// Compute the blake3 hash of each file's bytes ([`Batch::content_hashes`]). With a
    /// cache, a hit returns the hash computed when the image was first loaded.
    pub hash_contents: bool,
    /// Resized pre-augmentation images kept across loaders (epochs), or `None` (decode
    /// every image every time). It must have been built for this `height`, `width`,
    /// `resize` and `jpeg_scaling`, else starting the loader fails. A hit does not read
    /// the file: files changed during a run are not re-read while cached. Batches are
    /// bit-identical with and without a cache.
    pub cache: Option<Arc<ResizedImageCache>>,
    /// Decides after reading and hashing a file, before decoding it, whether to skip it
    /// (reported in [`Batch::cached`]); `None` decodes every file. Needs `hash_contents`.
    pub skip: Option<SkipHook>,
}

/// A predicate on `(example, blake3 hex of its file bytes)`: `true` skips decoding it.
#[derive(Clone)]
pub struct SkipHook(Arc<SkipFn>);

type SkipFn = dyn Fn(&Example, &str) -> bool + Send + Sync;

impl SkipHook {
    /// Wraps a predicate on `(example, content hash)`.
    pub fn new(skip: impl Fn(&Example, &str) -> bool + Send + Sync + 'static) -> Self {
        SkipHook(Arc::new(skip))
    }

    /// Whether `example`, whose file bytes hash to `hash`, is skipped.
    pub fn skips(&self, example: &Example, hash: &str) -> bool {
        (self.0)(example, hash)
    }
}

impl fmt::Debug for SkipHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SkipHook(..)")
    }
}

impl LoaderConfig {
    /// Defaults: bilinear resize (JPEG scaling on, used only by an antialiased resize), no augmentation, queue depth 4, skip bad files, hash contents, no cache.
    pub fn new(height: u32, width: u32, batch_size: usize) -> Self {
        LoaderConfig {
            height,
            width,
            batch_size,
            queue_depth: 4,
            resize: ResizeMethod::Bilinear,
            jpeg_scaling: JpegScaling::Auto,
            augmentation: None,
            seed: 0,
            epoch: 0,
            on_error: OnError::Skip,
            threads: None,
            hash_contents: true,
            cache: None,
            skip: None,
        }
    }

    /// For inference: every image in the given order, no augmentation, no hashing, and
    /// the first unreadable image is an error; the pixels are those of [`crate::load_image`].
    pub fn for_inference(
        height: u32,
        width: u32,
        batch_size: usize,
        threads: Option<usize>,
    ) -> Self {
        LoaderConfig {
            on_error: OnError::Fail,
            hash_contents: false,
            threads,
            ..LoaderConfig::new(height, width, batch_size)
        }
    }

    fn validate(&self) -> Result<()> {
        check_size(self.height, self.width)?;
        if self.batch_size == 0 {
            return Err(DataError::InvalidArgument {
                what: "batch size",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(aug) = &self.augmentation {
            aug.validate()?;
        }
        if let Some(cache) = &self.cache {
            cache.check_matches(self.height, self.width, self.resize, self.jpeg_scaling)?;
        }
        if self.skip.is_some() && !self.hash_contents {
            return Err(DataError::InvalidArgument {
                what: "loader skip hook",
                reason: "it needs each file's hash; turn `hash_contents` on".into(),
            });
        }
        Ok(())
    }
}

/// One batch: the images that loaded (NCHW float32 0..255) and the ones that did not.
#[derive(Debug)]
pub struct Batch {
    /// The examples whose images are in `pixels`, in order.
    pub examples: Vec<Example>,
    /// `(examples.len(), 3, height, width)` float32 in 0..255 (before augmentation's
    /// interpolation, which stays within the same range).
    pub pixels: Array4<f32>,
    /// blake3 hex of each example's file bytes (empty strings if hashing is off).
    pub content_hashes: Vec<String>,
    /// The examples of this batch that could not be loaded, with the reason.
    pub failures: Vec<(Example, DataError)>,
    /// The examples the [`SkipHook`] skipped, with their content hash (not decoded).
    pub cached: Vec<(Example, String)>,
}

/// A file skipped by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The example id.
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// A short category ([`DataError::kind`]).
    pub kind: &'static str,
    /// The full reason.
    pub reason: String,
}

impl SkippedFile {
    /// The record of `example` failing with `error`.
    pub fn new(example: &Example, error: &DataError) -> Self {
        SkippedFile {
            id: example.id.clone(),
            path: example.path.clone(),
            kind: error.kind(),
            reason: error.to_string(),
        }
    }
}

/// What a run loaded and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Images loaded.
    pub loaded: usize,
    /// Images the [`SkipHook`] skipped (read and hashed, not decoded).
    pub cached: usize,
    /// Files skipped, with reasons.
    pub skipped: Vec<SkippedFile>,
}

impl LoadSummary {
    /// Counts the images and failures of a batch.
    pub fn record(&mut self, batch: &Batch) {
        self.loaded += batch.examples.len();
        self.cached += batch.cached.len();
        for (example, error) in &batch.failures {
            self.record_failure(example, error);
        }
    }

    /// Counts one failure.
    pub fn record_failure(&mut self, example: &Example, error: &DataError) {
        self.skipped.push(SkippedFile::new(example, error));
    }

    /// Skipped files per category.
    pub fn skipped_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for s in &self.skipped {
            *counts.entry(s.kind).or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} images, skipped {}",
            self.loaded,
            self.skipped.len()
        )?;
        if self.cached > 0 {
            write!(f, ", cached {}", self.cached)?;
        }
        let kinds = self.skipped_by_kind();
        if !kinds.is_empty() {
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// The augmentation key of an example: derived from its id, so it does not depend on the
/// example's position in a list.
pub fn example_key(id: &str) -> u64 {
    let hash = blake3::hash(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// What became of one example: its image (shared with the cache when it came from or went
/// into it) or the [`SkipHook`]'s skip, each with the content hash (empty when not hashed).
enum Item {
    Image(Arc<Array3<f32>>, String),
    Skipped(String),
}

type Loaded = Result<Item>;

/// The hash of `bytes` when the config asks for it, else empty.
fn hash_if_asked(bytes: &[u8], config: &LoaderConfig) -> String {
    if config.hash_contents {
        blake3::hash(bytes).to_hex().to_string()
    } else {
        String::new()
    }
}

/// Whether the config's skip hook skips `example` with `hash`.
fn skipped(example: &Example, hash: &str, config: &LoaderConfig) -> bool {
    config
        .skip
        .as_ref()
        .is_some_and(|hook| hook.skips(example, hash))
}

/// The resized, pre-augmentation image of `example` and its hash (empty when not hashed):
/// from the cache when it holds it, else read, hashed, offered to the skip hook, decoded and
/// resized (and then cached).
fn load_resized(example: &Example, config: &LoaderConfig) -> Loaded {
    if let Some(cache) = &config.cache
        && let Some(hit) = cache.get(&example.path, config.hash_contents)
    {
        let hash = match (config.hash_contents, &hit.hash) {
            (true, Some(h)) => h.clone(),
            _ => String::new(),
        };
        if skipped(example, &hash, config) {
            return Ok(Item::Skipped(hash));
        }
        return Ok(Item::Image(hit.pixels.clone(), hash));
    }
    let bytes = read_image_file(&example.path)?;
    let hash = hash_if_asked(&bytes, config);
    if skipped(example, &hash, config) {
        return Ok(Item::Skipped(hash));
    }
    let image = Arc::new(load_image_bytes_with_scaling(
        &bytes,
        &example.path,
        ResizeTarget::new(
            config.height,
            config.width,
            config.resize,
            config.jpeg_scaling,
        ),
    )?);
    if let Some(cache) = &config.cache {
        let stored_hash = config.hash_contents.then(|| hash.clone());
        cache.insert(&example.path, image.clone(), stored_hash);
    }
    Ok(Item::Image(image, hash))
}

fn load_one(example: &Example, config: &LoaderConfig) -> Loaded {
    match (load_resized(example, config)?, &config.augmentation) {
        (Item::Image(image, hash), Some(aug)) => {
            let key = example_key(&example.id);
            let image = aug.apply(&image, config.seed, config.epoch, key);
            Ok(Item::Image(Arc::new(image), hash))
        }
        (item, _) => Ok(item),
    }
}

fn assemble(examples: &[Example], results: Vec<Loaded>, config: &LoaderConfig) -> Batch {
    let (h, w) = (config.height as usize, config.width as usize);
    let ok = results
        .iter()
        .filter(|r| matches!(r, Ok(Item::Image(..))))
        .count();
    let mut pixels = Array4::<f32>::zeros((ok, 3, h, w));
    let mut kept = Vec::with_capacity(ok);
    let mut hashes = Vec::with_capacity(ok);
    let mut failures = Vec::new();
    let mut cached = Vec::new();
    for (example, result) in examples.iter().zip(results) {
        match result {
            Ok(Item::Image(image, hash)) => {
                pixels.index_axis_mut(Axis(0), kept.len()).assign(&*image);
                kept.push(example.clone());
                hashes.push(hash);
            }
            Ok(Item::Skipped(hash)) => cached.push((example.clone(), hash)),
            Err(err) => failures.push((example.clone(), err)),
        }
    }
    Batch {
        examples: kept,
        pixels,
        content_hashes: hashes,
        failures,
        cached,
    }
}

/// Loads a list of examples synchronously into one batch (on the current rayon pool).
pub fn load_batch(examples: &[Example], config: &LoaderConfig) -> Result<Batch> {
    config.validate()?;
    let results: Vec<Loaded> = examples.par_iter().map(|e| load_one(e, config)).collect();
    let mut batch = assemble(examples, results, config);
    if config.on_error == OnError::Fail && !batch.failures.is_empty() {
        return Err(batch.failures.swap_remove(0).1);
    }
    Ok(batch)
}

/// Decodes examples on a background pool and yields [`Batch`]es in the examples' order.
///
/// Iterate it: each item is `Ok(batch)`, or `Err` once (then the iteration ends) when the
/// policy is [`OnError::Fail`] and a file fails, or when a worker stops unexpectedly.
pub struct BatchLoader {
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    summary: LoadSummary,
    total: usize,
    finished: bool,
}

impl BatchLoader {
    /// Starts loading `examples` with `config` on a background thread and rayon pool.
    pub fn start(examples: Vec<Example>, config: LoaderConfig) -> Result<BatchLoader> {
        config.validate()?;
        let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("xfer-decode-{i}"));
        if let Some(threads) = config.threads {
            pool = pool.num_threads(threads.max(1));
        }
        let pool = pool.build().map_err(|e| DataError::LoaderStopped {
            reason: format!("cannot start the decoder pool: {e}"),
        })?;
        let (sender, receiver) = bounded(config.queue_depth.max(1));
        let total = examples.len();
        let producer = std::thread::Builder::new()
            .name("xfer-batches".into())
            .spawn(move || {
                for chunk in examples.chunks(config.batch_size) {
                    let results: Vec<Loaded> =
                        pool.install(|| chunk.par_iter().map(|e| load_one(e, &config)).collect());
                    let mut batch = assemble(chunk, results, &config);
                    let message = if config.on_error == OnError::Fail && !batch.failures.is_empty()
                    {
                        Err(batch.failures.swap_remove(0).1)
                    } else {
                        Ok(batch)
                    };
                    let stop = message.is_err();
                    if sender.send(message).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::LoaderStopped {
                reason: format!("cannot start the loader thread: {e}"),
            })?;
        Ok(BatchLoader {
            receiver: Some(receiver),
            producer: Some(producer),
            summary: LoadSummary::default(),
            total,
            finished: false,
        })
    }

    /// What has been loaded and skipped so far (complete once iteration has ended).
    pub fn summary(&self) -> &LoadSummary {
        &self.summary
    }

    /// The number of examples this loader was given.
    pub fn total(&self) -> usize {
        self.total
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.finished {
            return None;
        }
        let received = self.receiver.as_ref().map(Receiver::recv);
        match received {
            Some(Ok(Ok(batch))) => {
                self.summary.record(&batch);
                Some(Ok(batch))
            }
            Some(Ok(Err(err))) => {
                self.finished = true;
                Some(Err(err))
            }
            _ => {
                self.finished = true;
                let joined = self.producer.take().map(JoinHandle::join);
                match joined {
                    Some(Err(_)) => Some(Err(DataError::LoaderStopped {
                        reason: "a decoder thread panicked".into(),
                    })),
                    _ => None,
                }
            }
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked producer return.
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}
