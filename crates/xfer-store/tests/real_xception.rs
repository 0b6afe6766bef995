//! The pipeline on the real Xception backbone and demo data (from `just setup fetch-data`).
//!
//! Skips with a message when `models/xception` or `data/cats_vs_dogs` are absent;
//! set `XFER_REQUIRE_DEMO=1` to make their absence a failure.

use std::path::{Path, PathBuf};

use ndarray::{Array4, Axis};
use xfer_runtime::{Backbone, SessionOptions};
use xfer_store::StoreReader;
use xfer_store::extract::{ExtractConfig, extract};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn xception_rows_equal_direct_inference_and_rerun_is_cached() {
    let root = workspace_root();
    let model = root.join("models/xception");
    let data = root.join("data/cats_vs_dogs");
    if !model.join("model.json").is_file() || !data.is_dir() {
        assert!(
            std::env::var_os("XFER_REQUIRE_DEMO").is_none(),
            "models/xception or data/cats_vs_dogs missing; run `just setup fetch-data`"
        );
        eprintln!(
            "skipped: models/xception or data/cats_vs_dogs missing (run `just setup fetch-data`)"
        );
        return;
    }
    let store = tempfile::tempdir().expect("tempdir");
    let mut config = ExtractConfig::new(&data, &model, store.path()).expect("config");
    config.limit = Some(20);
    config.batch_size = 8;
    let summary = extract(&config, &mut |_| {}).expect("extract");
    assert_eq!(summary.embedded, 20);
    assert_eq!(summary.per_split.values().sum::<usize>(), 20);

    let reader = StoreReader::open(store.path()).expect("open");
    let info = reader.info().expect("info");
    assert_eq!(info.models[0].feature_dim, 2048);
    assert_eq!(info.models[0].rows, 20);
    let split = info.models[0]
        .per_split
        .keys()
        .next()
        .expect("a split")
        .clone();
    let loaded = reader.load_split(&split, None).expect("load");
    assert_eq!(loaded.features.ncols(), 2048);
    assert_eq!(loaded.classes, vec!["cat", "dog"]);

    // The same images through the backbone directly, as one batch.
    let mut backbone = Backbone::load(&model, &SessionOptions::default()).expect("backbone");
    let [h, w] = backbone.manifest.image_size;
    let mut pixels = Array4::<f32>::zeros((loaded.ids.len(), 3, h as usize, w as usize));
    for (i, id) in loaded.ids.iter().enumerate() {
        let img = xfer_data::load_image(&data.join(id), h, w).expect("image");
        pixels.index_axis_mut(Axis(0), i).assign(&img);
    }
    let direct = backbone.embed(pixels.view()).expect("embed");
    let scale = direct.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = (&direct - &loaded.features)
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(worst <= 1e-4 * scale, "max |diff| {worst} vs scale {scale}");
    assert!(loaded.features.iter().all(|v| v.is_finite() && *v >= 0.0));

    let again = extract(&config, &mut |_| {}).expect("rerun");
    assert_eq!((again.embedded, again.cached), (0, 20));
}
