//! `--device openvino` on the real thing: Xception and demo photos through `extract` with
//! the OpenVINO provider at bf16, against fp32 features of the same images computed
//! independently by ONNX Runtime's own CPU kernels (same library, no OpenVINO).
//!
//! Tolerance: bf16 keeps 8 mantissa bits, and its error grows through Xception's 36
//! convolutions. Over all 2000 demo images the relative L2 of bf16 against fp32 features
//! measured median 4.1e-2, p99 0.12, worst 0.20 (AMX-BF16); on these 32 images this test
//! measured median 4.4e-2, worst 0.10 (AVX512-BF16, 2026-11-29). The bounds, median <= 8e-2
//! and worst <= 0.25, are about twice the measured median and above the 2000-image worst: a bug (fp32 weights read as bf16 bits, a wrong layout, a
//! skipped layer) gives errors of order 1, while bf16 that was not applied gives < 1e-4,
//! which the lower bound catches.
//!
//! Needs `models/xception` + `data/cats_vs_dogs` (`just setup fetch-data`; required under
//! XFER_REQUIRE_DEMO) and `.ort-openvino/` (`just setup-openvino`; required under
//! XFER_REQUIRE_OPENVINO). Every session here uses onnxruntime-openvino's library.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4, Axis};
use xfer_runtime::{Backbone, Device, Precision, SessionOptions};
use xfer_store::StoreReader;
use xfer_store::extract::{ExtractConfig, SplitAssignment, extract};

const IMAGES: usize = 32;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The OpenVINO library, model and data, or `None` (skipped) where they are missing and not required.
fn inputs() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let root = workspace_root();
    let model = root.join("models/xception");
    let data = root.join("data/cats_vs_dogs");
    let lib = root
        .join(xfer_runtime::OPENVINO_LIBRARY_DIR)
        .join("libonnxruntime.so.1.24.1");
    if !model.join("model.json").is_file() || !data.is_dir() {
        assert!(
            std::env::var_os("XFER_REQUIRE_DEMO").is_none(),
            "models/xception or data/cats_vs_dogs missing; run `just setup fetch-data`"
        );
        eprintln!("skipped: models/xception or data/cats_vs_dogs missing");
        return None;
    }
    if !lib.is_file() {
        assert!(
            std::env::var_os("XFER_REQUIRE_OPENVINO").is_none(),
            "{} missing; run `just setup-openvino`",
            lib.display()
        );
        eprintln!(
            "skipped: {} missing (run `just setup-openvino`)",
            lib.display()
        );
        return None;
    }
    Some((lib, model, data))
}

fn options(lib: &Path, device: Device, precision: Precision) -> SessionOptions {
    SessionOptions {
        ort_lib: Some(lib.to_path_buf()),
        device,
        precision: Some(precision),
        ..SessionOptions::default()
    }
}

/// Relative L2 error of each row of `got` against the same row of `want`, sorted.
fn row_errors(got: &Array2<f32>, want: &Array2<f32>) -> Vec<f64> {
    let mut errors: Vec<f64> = got
        .outer_iter()
        .zip(want.outer_iter())
        .map(|(g, w)| {
            let diff: f64 = g
                .iter()
                .zip(w.iter())
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let norm: f64 = w.iter().map(|b| f64::from(*b).powi(2)).sum();
            (diff / norm).sqrt()
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    errors
}

/// The stored rows' features, and fp32 features of the same images by `backbone`.
fn reference(backbone: &mut Backbone, data: &Path, ids: &[String]) -> Array2<f32> {
    let [h, w] = backbone.manifest.image_size;
    let mut pixels = Array4::<f32>::zeros((ids.len(), 3, h as usize, w as usize));
    for (i, id) in ids.iter().enumerate() {
        let img = xfer_data::load_image(&data.join(id), h, w).expect("image");
        pixels.index_axis_mut(Axis(0), i).assign(&img);
    }
    backbone.embed(pixels.view()).expect("embed")
}

#[test]
fn bf16_openvino_features_of_demo_photos_are_within_the_measured_tolerance_of_fp32() {
    let Some((lib, model, data)) = inputs() else {
        return;
    };
    let bf16 = xfer_runtime::cpu_bf16().any();
    let precision = if bf16 {
        Precision::Bf16
    } else {
        Precision::Fp32
    };
    let store = tempfile::tempdir().expect("tempdir");
    let mut config = ExtractConfig::new(&data, &model, store.path()).expect("config");
    config.splits = SplitAssignment::parse("all").expect("splits");
    config.limit = Some(IMAGES);
    config.batch_size = 16;
    config.session = options(&lib, Device::OpenVino, precision);
    let summary = extract(&config, &mut |_| {}).expect("extract on openvino");
    assert_eq!(summary.embedded, IMAGES);
    assert_eq!(summary.device, Some(Device::OpenVino));

    let reader = StoreReader::open(store.path()).expect("open");
    let info = reader.info().expect("info");
    assert_eq!(info.models[0].precision, precision.to_string());
    assert_eq!(info.models[0].provider, "openvino");
    let stored = reader.load_split("all", None).expect("load");

    let mut cpu =
        Backbone::load(&model, &options(&lib, Device::Cpu, Precision::Fp32)).expect("cpu backbone");
    assert_eq!(cpu.model.device(), Device::Cpu);
    let want = reference(&mut cpu, &data, &stored.ids);
    let errors = row_errors(&stored.features, &want);
    let median = errors[errors.len() / 2];
    let worst = errors[errors.len() - 1];
    println!(
        "{precision} openvino vs fp32 cpu, {IMAGES} images: rel L2 median {median:.2e}, worst {worst:.2e}"
    );
    if bf16 {
        assert!(median <= 8e-2, "bf16 median rel L2 {median}");
        assert!(worst <= 0.25, "bf16 worst rel L2 {worst}");
        assert!(
            median >= 1e-3,
            "bf16 median rel L2 {median}: was bf16 applied?"
        );
    } else {
        assert!(worst <= 1e-4, "fp32 openvino worst rel L2 {worst}");
    }

    // OpenVINO at fp32 agrees with the CPU kernels to float rounding.
    let mut ov32 = Backbone::load(&model, &options(&lib, Device::OpenVino, Precision::Fp32))
        .expect("openvino fp32 backbone");
    let got = reference(&mut ov32, &data, &stored.ids);
    let errors = row_errors(&got, &want);
    let worst = errors[errors.len() - 1];
    println!("fp32 openvino vs fp32 cpu: rel L2 worst {worst:.2e}");
    assert!(worst <= 1e-4, "fp32 openvino worst rel L2 {worst}");
}
