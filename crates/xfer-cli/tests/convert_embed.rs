//! `xfer convert` and `xfer embed` end to end. Needs `just setup` (the wheel's
//! `.keras` file and photos, `models/xception`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{Array2, Axis};
use xfer_runtime::{Backbone, ModelManifest, SessionOptions};

const KERAS_FILE: &str =
    "models/.source/kitchenware/trained_models/kitchenware_xception_model_val-acc_0.901.keras";
const PHOTOS: &str = "models/.source/kitchenware/datasets/kitchenware-data/images";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `just setup`",
        path.display()
    );
    path
}

fn xfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xfer"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run xfer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn convert_with_head_writes_three_files_and_skips_when_current() {
    let keras = require(root().join(KERAS_FILE));
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("kitchenware");
    let out_s = out.to_string_lossy().into_owned();
    let keras_s = keras.to_string_lossy().into_owned();
    let args = [
        "convert",
        "--keras",
        &keras_s,
        "--with-head",
        "--classes",
        "cup,fork,glass,knife,plate,spoon",
        "--out",
        &out_s,
        "--skip-if-current",
    ];
    let first = xfer(&args);
    assert!(first.status.success(), "{}", text(&first));
    let report = text(&first);
    assert!(
        report.contains("20,861,480") || report.contains("parameters"),
        "{report}"
    );
    assert_eq!(
        files_in(&out),
        ["model.json", "model.onnx", "train.onnx"],
        "no temporary files left"
    );

    let manifest = ModelManifest::read(&out).expect("manifest");
    assert_eq!(manifest.classes.as_deref().map(<[String]>::len), Some(6));
    assert_eq!(manifest.image_size, [150, 150]);
    assert_eq!(manifest.feature_dim, 2048);
    let source = std::fs::read(&keras).expect("keras bytes");
    assert_eq!(manifest.source.sha256, xfer_runtime::fingerprint(&source));
    let onnx = xfer_onnx::read_model(&out.join("model.onnx")).expect("model.onnx");
    let outputs: Vec<&str> = onnx
        .graph
        .as_ref()
        .expect("graph")
        .output
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(outputs, ["features", "probabilities"]);

    let modified = std::fs::metadata(out.join("model.onnx"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let second = xfer(&args);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("is up to date"), "{}", text(&second));
    let again = std::fs::metadata(out.join("model.onnx"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(modified, again, "a current model is not rewritten");

    // A changed model file is no longer current: the fingerprint check catches it.
    std::fs::write(out.join("model.onnx"), b"tampered").expect("tamper");
    let third = xfer(&args);
    assert!(third.status.success(), "{}", text(&third));
    assert!(!text(&third).contains("is up to date"), "{}", text(&third));
    let bytes = std::fs::read(out.join("model.onnx")).expect("model.onnx");
    assert_eq!(
        xfer_runtime::fingerprint(&bytes),
        ModelManifest::read(&out).expect("manifest").fingerprint
    );
}

#[test]
fn convert_rejects_a_file_that_is_not_keras_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bogus = tmp.path().join("model.keras");
    std::fs::write(&bogus, b"this is not a zip").expect("write");
    let out = tmp.path().join("out");
    let o = xfer(&[
        "convert",
        "--keras",
        &bogus.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains("model.keras") && msg.contains("not a Keras 3"),
        "{msg}"
    );
    assert!(
        files_in(&out).is_empty(),
        "nothing written: {:?}",
        files_in(&out)
    );

    let missing = xfer(&[
        "convert",
        "--keras",
        "no/such/file.keras",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("just setup"), "{}", text(&missing));
}

fn photos(n: usize) -> Vec<PathBuf> {
    let dir = require(root().join(PHOTOS));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("photos")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// Reads a float32 2-d `.npy`.
fn read_npy(path: &Path) -> Array2<f32> {
    let bytes = std::fs::read(path).expect("npy");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).expect("header");
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array2::from_shape_vec((dims[0], dims[1]), data).expect("npy shape")
}

#[test]
fn embed_saves_the_same_features_as_the_library_in_argument_order() {
    let model_dir = require(root().join("models/xception"));
    let images = photos(5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let npy = tmp.path().join("features.npy");
    let json = tmp.path().join("features.json");
    let mut args: Vec<String> = vec![
        "embed".into(),
        "--batch-size".into(),
        "2".into(),
        "--out".into(),
        npy.to_string_lossy().into(),
    ];
    args.extend(images.iter().map(|p| p.to_string_lossy().into_owned()));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = xfer(&args_ref);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("images/s"), "{}", text(&o));
    let saved = read_npy(&npy);
    assert_eq!(saved.dim(), (5, 2048));

    // Independently: decode each image and run the backbone one at a time.
    let mut backbone = Backbone::load(&model_dir, &SessionOptions::default()).expect("backbone");
    for (i, path) in images.iter().enumerate() {
        let img = xfer_data::load_image(path, 150, 150)
            .expect("decode")
            .insert_axis(Axis(0));
        let want = backbone.embed(img.view()).expect("embed");
        let err = saved
            .row(i)
            .iter()
            .zip(want.row(0))
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-3, "row {i} ({}) differs by {err}", path.display());
    }

    // JSON output carries paths and the same numbers; the summary prints one line per image.
    args[4] = json.to_string_lossy().into_owned();
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = xfer(&args_ref);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid json");
    assert_eq!(doc["feature_dim"], 2048);
    let rows = doc["images"].as_array().expect("images");
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[3]["path"].as_str(),
        Some(images[3].to_string_lossy().as_ref())
    );
    let v = rows[3]["embedding"][7].as_f64().expect("number");
    assert!((v - f64::from(saved[[3, 7]])).abs() < 1e-6);

    let summary = xfer(&["embed", "--size", "131x97", &images[0].to_string_lossy()]);
    assert!(summary.status.success(), "{}", text(&summary));
    let out = String::from_utf8_lossy(&summary.stdout);
    assert!(out.contains("dim 2048") && out.contains("L2 norm"), "{out}");
}

#[test]
fn embed_names_an_unreadable_image() {
    require(root().join("models/xception"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"not an image").expect("write");
    let o = xfer(&["embed", &bad.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("broken.jpg"), "{}", text(&o));
    let o = xfer(&["embed", "--out", "x.txt", &bad.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(text(&o).contains(".npy or .json"), "{}", text(&o));
}
