//! The resized-image cache: bit-identical batches with and without it, cold and warm,
//! the byte budget, bad files, and refusal of a cache built for another size or method.

mod common;

use std::path::Path;
use std::sync::Arc;

use ndarray::Axis;
use xfer_data::{
    Augmentation, BatchLoader, CacheStats, DataError, Dataset, Example, JpegScaling, LoaderConfig,
    ResizeMethod, ResizedImageCache, load_batch,
};

const H: u32 = 24;
const W: u32 = 20;

/// 14 good images (PNGs and JPEGs of various sizes, larger and smaller than the output).
fn good_fixture(root: &Path) {
    for i in 0..14u32 {
        let class = if i % 2 == 0 { "cat" } else { "dog" };
        if i % 3 == 0 {
            let image = common::photo_like(60 + 7 * i, 45 + 3 * i, i);
            common::write(
                &root.join(format!("{class}/{i:03}.jpg")),
                &common::jpeg(&image),
            );
        } else {
            let image = common::noise_image(11 + 3 * i, 9 + i, u64::from(i));
            common::write(
                &root.join(format!("{class}/{i:03}.png")),
                &common::png(&image),
            );
        }
    }
}

/// What a pass delivered: every loaded image (id, bits, hash) in order, and every failure.
#[derive(Debug, PartialEq)]
struct Pass {
    images: Vec<(String, Vec<u32>, String)>,
    failures: Vec<(String, &'static str)>,
}

fn config(epoch: u64, cache: Option<&Arc<ResizedImageCache>>) -> LoaderConfig {
    let mut c = LoaderConfig::new(H, W, 4);
    c.augmentation = Some(Augmentation::keras_guide());
    c.seed = 7;
    c.epoch = epoch;
    c.threads = Some(2);
    c.hash_contents = true;
    c.cache = cache.cloned();
    c
}

fn pass(examples: &[Example], config: LoaderConfig) -> Pass {
    let mut images = Vec::new();
    let mut failures = Vec::new();
    for batch in BatchLoader::start(examples.to_vec(), config).expect("start loader") {
        let batch = batch.expect("skip policy never errors");
        for (i, example) in batch.examples.iter().enumerate() {
            let bits = batch
                .pixels
                .index_axis(Axis(0), i)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            images.push((example.id.clone(), bits, batch.content_hashes[i].clone()));
        }
        failures.extend(
            batch
                .failures
                .iter()
                .map(|(e, err)| (e.id.clone(), err.kind())),
        );
    }
    Pass { images, failures }
}

fn new_cache(capacity: u64) -> Arc<ResizedImageCache> {
    Arc::new(ResizedImageCache::new(
        H,
        W,
        ResizeMethod::Bilinear,
        JpegScaling::Auto,
        capacity,
    ))
}

#[test]
fn cached_batches_are_bit_identical_cold_and_warm_and_warm_epochs_read_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    good_fixture(dir.path());
    let ds = Dataset::open(dir.path()).expect("open");
    let examples = xfer_data::seeded_order(ds.examples(), 3);
    let n = examples.len();
    assert_eq!(n, 14);
    let reference: Vec<Pass> = (0..3)
        .map(|epoch| pass(&examples, config(epoch, None)))
        .collect();
    assert!(
        reference
            .iter()
            .all(|p| p.images.len() == n && p.failures.is_empty())
    );
    assert_ne!(
        reference[0], reference[1],
        "epochs must draw other augmentations"
    );

    let cache = new_cache(u64::MAX);
    // Cold epoch: every image is read once and stored.
    assert_eq!(pass(&examples, config(0, Some(&cache))), reference[0]);
    let cold = cache.stats();
    assert_eq!((cold.hits, cold.misses, cold.not_cached), (0, n as u64, 0));
    assert_eq!(cold.entries, n);
    assert_eq!(cold.bytes, n as u64 * 3 * u64::from(H * W) * 4);
    assert_eq!(cache.image_bytes(), 3 * u64::from(H * W) * 4);

    // Remove every file: warm epochs must not need them.
    for e in &examples {
        std::fs::remove_file(&e.path).expect("remove fixture");
    }
    assert_eq!(pass(&examples, config(1, Some(&cache))), reference[1]);
    assert_eq!(pass(&examples, config(2, Some(&cache))), reference[2]);
    // The same epoch again gives the same batches (augmentation per (seed, epoch, id)).
    assert_eq!(pass(&examples, config(0, Some(&cache))), reference[0]);
    let warm = cache.stats();
    assert_eq!(warm.hits, 3 * n as u64, "every warm load is a hit");
    assert_eq!(warm.misses, n as u64, "no miss after the cold epoch");
    assert_eq!((warm.entries, warm.bytes), (cold.entries, cold.bytes));
    // Without the cache the files are gone indeed.
    let gone = pass(&examples, config(1, None));
    assert!(gone.images.is_empty());
    assert_eq!(gone.failures.len(), n);
    assert!(gone.failures.iter().all(|(_, kind)| *kind == "not found"));
}

#[test]
fn without_augmentation_or_hashing_a_cache_changes_nothing_either() {
    let dir = tempfile::tempdir().expect("tempdir");
    good_fixture(dir.path());
    let ds = Dataset::open(dir.path()).expect("open");
    let examples = ds.examples().to_vec();
    let plain = |cache: Option<&Arc<ResizedImageCache>>, hash: bool| {
        let mut c = config(0, cache);
        c.augmentation = None;
        c.hash_contents = hash;
        c
    };
    let reference = pass(&examples, plain(None, false));
    let cache = new_cache(u64::MAX);
    assert_eq!(pass(&examples, plain(Some(&cache), false)), reference);
    assert_eq!(pass(&examples, plain(Some(&cache), false)), reference);
    assert_eq!(cache.stats().hits, examples.len() as u64);
    // Entries stored without a hash do not serve a loader that wants one: it reads the
    // files (misses), gets their hashes, and the entries gain them.
    let hashed = pass(&examples, plain(Some(&cache), true));
    assert_eq!(hashed, pass(&examples, plain(None, true)));
    assert!(hashed.images.iter().all(|(_, _, h)| h.len() == 64));
    let before = cache.stats();
    assert_eq!(before.misses, 2 * examples.len() as u64);
    assert_eq!(pass(&examples, plain(Some(&cache), true)), hashed);
    assert_eq!(cache.stats().hits, before.hits + examples.len() as u64);
    // load_batch uses the cache too.
    let batch = load_batch(&examples, &plain(Some(&cache), false)).expect("load_batch");
    assert_eq!(batch.examples.len(), examples.len());
    assert_eq!(cache.stats().hits, before.hits + 2 * examples.len() as u64);
}

#[test]
fn a_budget_smaller_than_the_dataset_caches_what_fits_and_changes_no_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    good_fixture(dir.path());
    let ds = Dataset::open(dir.path()).expect("open");
    let examples = ds.examples().to_vec();
    let n = examples.len() as u64;
    let reference: Vec<Pass> = (0..2)
        .map(|epoch| pass(&examples, config(epoch, None)))
        .collect();
    let per_image = 3 * u64::from(H * W) * 4;
    // Room for 5 images and a bit more, not 6.
    let cache = new_cache(5 * per_image + per_image / 2);
    assert_eq!(pass(&examples, config(0, Some(&cache))), reference[0]);
    let cold = cache.stats();
    assert_eq!((cold.entries, cold.bytes), (5, 5 * per_image));
    assert_eq!((cold.hits, cold.misses, cold.not_cached), (0, n, n - 5));
    assert_eq!(pass(&examples, config(1, Some(&cache))), reference[1]);
    let warm = cache.stats();
    assert_eq!((warm.entries, warm.bytes), (5, 5 * per_image));
    assert_eq!(warm.hits, 5);
    assert_eq!(warm.misses, n + (n - 5));
    assert_eq!(warm.not_cached, 2 * (n - 5));
    assert!(
        warm.to_string().starts_with("5 hits, 23 misses; 5 images"),
        "{warm}"
    );

    // A zero budget caches nothing.
    let none = new_cache(0);
    assert_eq!(pass(&examples, config(0, Some(&none))), reference[0]);
    assert_eq!(
        none.stats(),
        CacheStats {
            hits: 0,
            misses: n,
            not_cached: n,
            entries: 0,
            bytes: 0,
            capacity_bytes: 0
        }
    );
}

#[test]
fn bad_files_are_skipped_in_every_epoch_and_never_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    good_fixture(dir.path());
    common::write(&dir.path().join("cat/empty.png"), b"");
    common::write(&dir.path().join("dog/text.jpg"), b"hello");
    let jpeg = common::jpeg(&common::noise_image(40, 40, 99));
    common::write(&dir.path().join("dog/cut.jpg"), &jpeg[..jpeg.len() / 2]);
    let ds = Dataset::open(dir.path()).expect("open");
    let examples = xfer_data::seeded_order(ds.examples(), 5);
    let good = 14u64;
    let cache = new_cache(u64::MAX);
    for epoch in 0..3 {
        let reference = pass(&examples, config(epoch, None));
        let mut expected_failures = reference.failures.clone();
        expected_failures.sort();
        assert_eq!(
            expected_failures,
            [
                ("cat/empty.png".to_owned(), "empty file"),
                ("dog/cut.jpg".to_owned(), "decode error"),
                ("dog/text.jpg".to_owned(), "unsupported format"),
            ]
        );
        assert_eq!(pass(&examples, config(epoch, Some(&cache))), reference);
        let stats = cache.stats();
        assert_eq!(
            stats.entries as u64, good,
            "epoch {epoch}: bad files cached"
        );
        assert_eq!(stats.hits, epoch * good);
        assert_eq!(stats.misses, good + 3 * (epoch + 1));
    }
    // A bad file repaired during the run is read (it was never cached) and then cached.
    common::write(
        &dir.path().join("cat/empty.png"),
        &common::png(&common::noise_image(30, 30, 5)),
    );
    let after = pass(&examples, config(3, Some(&cache)));
    assert_eq!(after.failures.len(), 2);
    assert_eq!(after, pass(&examples, config(3, None)));
    assert_eq!(cache.stats().entries as u64, good + 1);
}

#[test]
fn a_cache_built_for_another_size_or_method_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    good_fixture(dir.path());
    let ds = Dataset::open(dir.path()).expect("open");
    let examples = ds.examples().to_vec();
    let others = [
        ResizedImageCache::new(W, H, ResizeMethod::Bilinear, JpegScaling::Auto, u64::MAX),
        ResizedImageCache::new(H, H, ResizeMethod::Bilinear, JpegScaling::Auto, u64::MAX),
        ResizedImageCache::new(
            H,
            W,
            ResizeMethod::BilinearAntialias,
            JpegScaling::Auto,
            u64::MAX,
        ),
        ResizedImageCache::new(H, W, ResizeMethod::Bilinear, JpegScaling::Full, u64::MAX),
    ];
    for other in others {
        let other = Arc::new(other);
        let config = config(0, Some(&other));
        let err = BatchLoader::start(examples.clone(), config.clone())
            .err()
            .expect("a mismatching cache must be refused");
        assert!(
            matches!(
                err,
                DataError::InvalidArgument {
                    what: "image cache",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("the loader resizes to 24×20"), "{text}");
        assert!(text.contains("one cache per size"), "{text}");
        assert!(load_batch(&examples, &config).is_err());
        assert_eq!(
            other.stats(),
            CacheStats {
                capacity_bytes: u64::MAX,
                ..CacheStats::default()
            }
        );
    }
    // The matching one, built from the loader's own configuration, is accepted.
    let base = config(0, None);
    let own = Arc::new(ResizedImageCache::for_config(&base, u64::MAX));
    assert!(BatchLoader::start(examples, config(0, Some(&own))).is_ok());
}
