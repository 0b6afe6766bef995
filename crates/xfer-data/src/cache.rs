//! An in-memory cache of resized, pre-augmentation images, shared by the loaders of a run
//! (see [`ResizedImageCache`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ndarray::Array3;

use crate::decode::{JpegScaling, ResizeMethod};
use crate::error::{DataError, Result};

/// One cached image: the resized pixels and, when the first load hashed the file, its hash.
#[derive(Debug)]
pub(crate) struct CachedImage {
    /// CHW float32 in 0..255, before augmentation.
    pub(crate) pixels: Arc<Array3<f32>>,
    /// blake3 hex of the bytes the pixels came from, if they were hashed.
    pub(crate) hash: Option<String>,
}

#[derive(Debug, Default)]
struct Entries {
    images: HashMap<PathBuf, Arc<CachedImage>>,
    bytes: u64,
}

/// Thread-safe cache of resized, pre-augmentation images for one size and resize method,
/// shared by loaders through an `Arc`.
///
/// Decoding and resizing give the same array for a file in every epoch; only the
/// augmentation, applied after the resize (Keras semantics), changes. A
/// [`ResizedImageCache`] given to [`LoaderConfig::cache`](crate::LoaderConfig::cache)
/// keeps that array (CHW float32, exactly what the loader feeds to augmentation, so
/// results stay bit-identical), and from the second epoch on a loader only augments —
/// like `.cache()` on a `tf.data` pipeline in the Keras transfer-learning guide.
///
/// * Key: the example's file path. The cache itself carries the resize parameters
///   (height, width, [`ResizeMethod`], [`JpegScaling`]); a loader configured otherwise
///   refuses it with [`DataError::InvalidArgument`] instead of serving images of
///   another size or method.
/// * Budget: a capacity in bytes of pixel data (4 bytes per value; the per-entry
///   bookkeeping — path, map slot — is not counted, well under 0.1 % at 150×150), fixed at
///   construction. Once full, further images are simply not cached (no eviction: cheap,
///   and every cached image stays cached for the run). All images of a cache have the same
///   size, so how many fit is fixed; which ones, when the budget runs out within a batch,
///   depends on thread timing (results do not).
/// * Files are read once: a hit does not open the file, so a file changed, replaced or
///   deleted during a run is not re-read while its image is cached. With
///   [`LoaderConfig::hash_contents`](crate::LoaderConfig::hash_contents), the hash is
///   computed on the first load and stored with the image: it is the hash of the bytes the
///   cached pixels came from, not of the file as it is now. An entry stored without a hash
///   (by a loader that did not hash) does not serve a loader that wants one: that load
///   reads the file as without a cache and replaces the entry with its pixels and hash.
/// * Images that fail to load are never cached, so every epoch reports and skips them
///   exactly as without a cache.
pub struct ResizedImageCache {
    height: u32,
    width: u32,
    resize: ResizeMethod,
    jpeg_scaling: JpegScaling,
    capacity_bytes: u64,
    entries: RwLock<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
    not_cached: AtomicU64,
}

/// Counters of a [`ResizedImageCache`], from [`ResizedImageCache::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Loads served from the cache (the file was not read).
    pub hits: u64,
    /// Loads that read the file (not cached yet, failed images, or an entry without the requested hash).
    pub misses: u64,
    /// Successful loads not stored because the budget was full (counted on every such load).
    pub not_cached: u64,
    /// Images held.
    pub entries: usize,
    /// Pixel bytes held.
    pub bytes: u64,
    /// The budget in pixel bytes.
    pub capacity_bytes: u64,
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        write!(
            f,
            "{} hits, {} misses; {} images, {:.1} of {:.1} MiB",
            self.hits,
            self.misses,
            self.entries,
            self.bytes as f64 / MIB,
            self.capacity_bytes as f64 / MIB
        )?;
        if self.not_cached > 0 {
            write!(f, " ({} loads not cached: budget full)", self.not_cached)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResizedImageCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResizedImageCache")
            .field("height", &self.height)
            .field("width", &self.width)
            .field("resize", &self.resize)
            .field("jpeg_scaling", &self.jpeg_scaling)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ResizedImageCache {
    /// An empty cache for images resized to `height`×`width` with `resize` and
    /// `jpeg_scaling`, holding at most `capacity_bytes` of pixel data (0 caches nothing).
    pub fn new(
        height: u32,
        width: u32,
        resize: ResizeMethod,
        jpeg_scaling: JpegScaling,
        capacity_bytes: u64,
    ) -> Self {
        ResizedImageCache {
            height,
            width,
            resize,
            jpeg_scaling,
            capacity_bytes,
            entries: RwLock::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            not_cached: AtomicU64::new(0),
        }
    }

    /// An empty cache matching `config`'s size, resize method and JPEG scaling.
    pub fn for_config(config: &crate::LoaderConfig, capacity_bytes: u64) -> Self {
        Self::new(
            config.height,
            config.width,
            config.resize,
            config.jpeg_scaling,
            capacity_bytes,
        )
    }

    /// Output height in pixels of the images this cache holds.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Output width in pixels of the images this cache holds.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The resize method of the images this cache holds.
    pub fn resize(&self) -> ResizeMethod {
        self.resize
    }

    /// The JPEG scaling of the images this cache holds.
    pub fn jpeg_scaling(&self) -> JpegScaling {
        self.jpeg_scaling
    }

    /// The budget in bytes of pixel data.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes of one cached image: 3 × height × width × 4.
    pub fn image_bytes(&self) -> u64 {
        3 * u64::from(self.height) * u64::from(self.width) * 4
    }

    /// Hits, misses, entries and bytes so far.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = {
            let e = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            (e.images.len(), e.bytes)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            not_cached: self.not_cached.load(Ordering::Relaxed),
            entries,
            bytes,
            capacity_bytes: self.capacity_bytes,
        }
    }

    /// Refuses a loader whose size, resize method or JPEG scaling differ from the cache's.
    pub fn check_matches(
        &self,
        height: u32,
        width: u32,
        resize: ResizeMethod,
        jpeg_scaling: JpegScaling,
    ) -> Result<()> {
        let mine = (self.height, self.width, self.resize, self.jpeg_scaling);
        if mine == (height, width, resize, jpeg_scaling) {
            return Ok(());
        }
        Err(DataError::InvalidArgument {
            what: "image cache",
            reason: format!(
                "the cache holds images resized to {}×{} ({:?}, JPEG scaling {:?}) but the loader resizes to {height}×{width} ({resize:?}, JPEG scaling {jpeg_scaling:?}); use one cache per size and resize method",
                self.height, self.width, self.resize, self.jpeg_scaling
            ),
        })
    }

    /// The cached image of `path`, counting a hit; `None` (a miss) when absent, or when
    /// `need_hash` and the entry has no hash.
    pub(crate) fn get(&self, path: &Path, need_hash: bool) -> Option<Arc<CachedImage>> {
        let found = {
            let e = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            e.images.get(path).cloned()
        };
        match found {
            Some(image) if !need_hash || image.hash.is_some() => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(image)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a successfully loaded image if the budget allows; a path already cached
    /// keeps its entry, unless that entry lacks the hash this load has (then this load
    /// replaces it).
    pub(crate) fn insert(&self, path: &Path, pixels: Arc<Array3<f32>>, hash: Option<String>) {
        let size = (pixels.len() as u64).saturating_mul(4);
        let mut e = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = e.images.get_mut(path) {
            // Same size, so the byte count is unchanged; the new pixels and hash come from
            // the same read, so they stay consistent even if the file changed meanwhile.
            if existing.hash.is_none() && hash.is_some() {
                *existing = Arc::new(CachedImage { pixels, hash });
            }
            return;
        }
        if e.bytes.saturating_add(size) > self.capacity_bytes {
            drop(e);
            self.not_cached.fetch_add(1, Ordering::Relaxed);
            return;
        }
        e.bytes += size;
        e.images
            .insert(path.to_path_buf(), Arc::new(CachedImage { pixels, hash }));
    }
}
