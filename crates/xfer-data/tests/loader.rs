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
