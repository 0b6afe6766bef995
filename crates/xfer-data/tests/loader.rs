//! The parallel batch loader: order, failures, policies, augmentation.

mod common;

use std::path::Path;

use ndarray::Axis;
use xfer_data::{
    Augmentation, BatchLoader, DataError, Dataset, Example, LoaderConfig, OnError, load_batch,
    load_image,
};

/// A dataset with 23 good images and 3 bad files, in a temporary folder.
fn fixture(root: &Path) -> Dataset {
    for i in 0..23u32 {
        let class = if i % 2 == 0 { "cat" } else { "dog" };
        common::write(
            &root.join(format!("{class}/{i:03}.png")),
            &common::png(&common::noise_image(12 + i, 9, u64::from(i))),
        );
    }
    common::write(&root.join("cat/empty.png"), b"");
    common::write(&root.join("dog/text.jpg"), b"hello");
    let jpeg = common::jpeg(&common::noise_image(40, 40, 99));
    common::write(&root.join("dog/cut.jpg"), &jpeg[..jpeg.len() / 2]);
    Dataset::open(root).expect("open fixture")
}

#[test]
fn batches_come_in_order_with_failures_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = fixture(dir.path());
    let examples = xfer_data::seeded_order(ds.examples(), 1);
    let mut config = LoaderConfig::new(16, 20, 5);
    config.queue_depth = 1;
    config.threads = Some(2);
    let mut loader = BatchLoader::start(examples.clone(), config).expect("start");
    let mut seen: Vec<Example> = Vec::new();
    let mut failed = Vec::new();
    for batch in loader.by_ref() {
        let batch = batch.expect("skip policy never errors");
        assert_eq!(batch.pixels.dim(), (batch.examples.len(), 3, 16, 20));
        assert_eq!(batch.content_hashes.len(), batch.examples.len());
        for (i, example) in batch.examples.iter().enumerate() {
            let expected = load_image(&example.path, 16, 20).expect("reload");
            assert_eq!(
                batch.pixels.index_axis(Axis(0), i),
                expected,
                "{}",
                example.id
            );
            let bytes = std::fs::read(&example.path).expect("read");
            assert_eq!(
                batch.content_hashes[i],
                blake3::hash(&bytes).to_hex().to_string()
            );
        }
        seen.extend(batch.examples.iter().cloned());
        seen.extend(batch.failures.iter().map(|(e, _)| e.clone()));
        failed.extend(
            batch
                .failures
                .into_iter()
                .map(|(e, err)| (e.id, err.kind())),
        );
    }
    // Every example appears once; good ones in the given order.
    assert_eq!(seen.len(), examples.len());
    let good_in_order: Vec<&str> = examples
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| !failed.iter().any(|(f, _)| f == id))
        .collect();
    let loaded: Vec<&str> = seen
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| !failed.iter().any(|(f, _)| f == id))
        .collect();
    assert_eq!(loaded, good_in_order);
    failed.sort();
    assert_eq!(
        failed,
        [
            ("cat/empty.png".to_string(), "empty file"),
            ("dog/cut.jpg".to_string(), "decode error"),
            ("dog/text.jpg".to_string(), "unsupported format"),
        ]
    );
    let summary = loader.summary();
    assert_eq!(summary.loaded, 23);
    assert_eq!(summary.skipped.len(), 3);
    assert_eq!(summary.skipped_by_kind().get("empty file"), Some(&1));
    assert!(
        summary
            .to_string()
            .starts_with("loaded 23 images, skipped 3"),
        "{summary}"
    );
}

#[test]
fn fail_policy_stops_at_the_first_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = fixture(dir.path());
    let mut config = LoaderConfig::new(8, 8, 4);
    config.on_error = OnError::Fail;
    let loader = BatchLoader::start(ds.examples().to_vec(), config.clone()).expect("start");
    let results: Vec<_> = loader.collect();
    let last = results.last().expect("some result");
    let err = last.as_ref().expect_err("must stop with an error");
    assert!(
        matches!(
            err,
            DataError::EmptyFile { .. }
                | DataError::Decode { .. }
                | DataError::UnsupportedFormat { .. }
        ),
        "{err:?}"
    );
    assert!(results[..results.len() - 1].iter().all(Result::is_ok));
    assert!(results.len() < 26usize.div_ceil(4) + 1);
    assert!(load_batch(ds.examples(), &config).is_err());
}

#[test]
fn augmentation_is_reproducible_and_independent_of_batching() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = fixture(dir.path());
    let good: Vec<Example> = ds
        .examples()
        .iter()
        .filter(|e| e.id.ends_with(".png") && !e.id.contains("empty"))
        .cloned()
        .collect();
    let run = |batch_size: usize, epoch: u64, threads: usize| {
        let mut config = LoaderConfig::new(24, 24, batch_size);
        config.augmentation = Some(Augmentation::keras_guide());
        config.seed = 7;
        config.epoch = epoch;
        config.threads = Some(threads);
        let mut all = Vec::new();
        for batch in BatchLoader::start(good.clone(), config).expect("start") {
            let batch = batch.expect("batch");
            for i in 0..batch.examples.len() {
                all.push(batch.pixels.index_axis(Axis(0), i).to_owned());
            }
        }
        all
    };
    let a = run(4, 0, 2);
    let b = run(7, 0, 1);
    assert_eq!(
        a, b,
        "same seed and epoch must give the same images whatever the batching"
    );
    let c = run(4, 1, 2);
    assert_ne!(a, c, "another epoch draws other augmentations");
    // Augmented images differ from plain ones, and stay in range.
    let plain = load_image(&good[0].path, 24, 24).expect("plain");
    assert!(a.iter().any(|img| *img != plain));
    assert!(
        a.iter()
            .all(|img| img.iter().all(|v| (-1e-3..=255.001).contains(v)))
    );
}

#[test]
fn invalid_configs_are_rejected() {
    assert!(matches!(
        BatchLoader::start(vec![], LoaderConfig::new(0, 8, 1)),
        Err(DataError::InvalidArgument { .. })
    ));
    assert!(matches!(
        BatchLoader::start(vec![], LoaderConfig::new(8, 8, 0)),
        Err(DataError::InvalidArgument { .. })
    ));
    let mut loader =
        BatchLoader::start(vec![], LoaderConfig::new(8, 8, 1)).expect("empty list is fine");
    assert!(loader.next().is_none());
    assert!("later".parse::<OnError>().is_err());
}

#[test]
fn dropping_a_loader_early_does_not_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = fixture(dir.path());
    let mut config = LoaderConfig::new(8, 8, 1);
    config.queue_depth = 1;
    let mut loader = BatchLoader::start(ds.examples().to_vec(), config).expect("start");
    let first = loader.next().expect("one batch").expect("ok");
    assert_eq!(first.examples.len() + first.failures.len(), 1);
    drop(loader);
}

#[test]
fn the_skip_hook_sees_each_hash_before_decoding_and_skipped_files_are_reported_as_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = fixture(dir.path());
    let examples = xfer_data::seeded_order(ds.examples(), 3);
    let hash_of = |e: &Example| {
        blake3::hash(&std::fs::read(&e.path).expect("read"))
            .to_hex()
            .to_string()
    };
    // "Already stored": every readable cat and the undecodable `dog/text.jpg`, by their
    // hashes (the empty file cannot be read, so it fails before any hash).
    let known: std::collections::HashMap<String, String> = examples
        .iter()
        .filter(|e| (e.id.starts_with("cat/") && e.id != "cat/empty.png") || e.id == "dog/text.jpg")
        .map(|e| (e.id.clone(), hash_of(e)))
        .collect();
    let known = std::sync::Arc::new(known);
    let hook_known = std::sync::Arc::clone(&known);
    let mut config = LoaderConfig::new(16, 20, 4);
    config.threads = Some(2);
    config.skip = Some(xfer_data::SkipHook::new(move |e, hash| {
        hook_known.get(&e.id).is_some_and(|h| h == hash)
    }));
    let mut loader = BatchLoader::start(examples.clone(), config.clone()).expect("start");
    let (mut decoded, mut cached, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for batch in loader.by_ref() {
        let batch = batch.expect("skip policy");
        assert_eq!(batch.pixels.dim().0, batch.examples.len());
        for (i, e) in batch.examples.iter().enumerate() {
            let expected = load_image(&e.path, 16, 20).expect("reload");
            assert_eq!(batch.pixels.index_axis(Axis(0), i), expected, "{}", e.id);
        }
        decoded.extend(batch.examples.iter().map(|e| e.id.clone()));
        for (e, hash) in &batch.cached {
            assert_eq!(hash, &hash_of(e), "{}", e.id);
        }
        cached.extend(batch.cached.iter().map(|(e, _)| e.id.clone()));
        failed.extend(batch.failures.iter().map(|(e, _)| e.id.clone()));
    }
    let mut want_cached: Vec<String> = known.keys().cloned().collect();
    want_cached.sort();
    cached.sort();
    // `dog/text.jpg` is skipped by its hash, so it is never decoded and never fails.
    assert_eq!(cached, want_cached);
    assert!(cached.contains(&"dog/text.jpg".to_owned()));
    assert!(decoded.iter().all(|id| id.starts_with("dog/")));
    failed.sort();
    assert_eq!(failed, ["cat/empty.png", "dog/cut.jpg"]);
    assert_eq!(decoded.len() + cached.len() + failed.len(), examples.len());
    assert_eq!(loader.summary().cached, cached.len());
    assert_eq!(loader.summary().loaded, decoded.len());

    // A changed file is not skipped: its hash no longer matches.
    let cat = examples
        .iter()
        .find(|e| e.id == "cat/000.png")
        .expect("cat/000");
    common::write(&cat.path, &common::png(&common::noise_image(5, 5, 12_345)));
    let batch = load_batch(std::slice::from_ref(cat), &config).expect("load");
    assert_eq!((batch.examples.len(), batch.cached.len()), (1, 0));

    // The hook needs the hashes.
    config.hash_contents = false;
    assert!(matches!(
        BatchLoader::start(examples, config),
        Err(DataError::InvalidArgument { .. })
    ));
}
