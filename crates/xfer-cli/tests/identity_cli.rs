//! Issue 18 item 2: the model identity (fingerprint, input size, preprocessing, ...) of the
//! rows a head was trained on is checked by `train-head` and `export`, naming the field.

mod common;

use std::path::{Path, PathBuf};

use common::{SIZE, fill_store, images, path, tiny_backbone, xfer};
use ndarray::Array2;
use xfer_runtime::ModelManifest;
use xfer_store::{EmbeddingRecord, EmbeddingWriter, StoreMetadata, WriterOptions};

fn cwd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The same ONNX bytes (same fingerprint) declared at another input size.
fn resized_copy(model_dir: &Path, to: &Path, size: u32) -> ModelManifest {
    std::fs::create_dir_all(to).expect("dir");
    std::fs::copy(model_dir.join("model.onnx"), to.join("model.onnx")).expect("copy");
    let mut manifest = ModelManifest::read(model_dir).expect("manifest");
    manifest.image_size = [size, size];
    manifest.write(to).expect("write manifest");
    manifest
}

#[test]
fn export_refuses_a_backbone_folder_of_another_input_size_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (model_dir, store, run) = (root.join("tiny"), root.join("store"), root.join("run"));
    let data = root.join("data");
    let manifest = tiny_backbone(&model_dir, 0.0);
    fill_store(&store, &model_dir, &data, &images(&data));
    let (ok, stdout, stderr) = xfer(
        &["train-head", "--store", path(&store), "--out", path(&run)],
        &cwd(),
    );
    assert!(ok, "train-head failed:\n{stdout}\n{stderr}");

    let bigger = root.join("tiny-bigger");
    let other = resized_copy(&model_dir, &bigger, SIZE * 2);
    assert_eq!(other.fingerprint, manifest.fingerprint, "same ONNX bytes");
    let out = root.join("model.onnx");
    let (ok, stdout, stderr) = xfer(
        &[
            "export",
            "--model",
            path(&bigger),
            "--head",
            path(&run),
            "--out",
            path(&out),
        ],
        &cwd(),
    );
    assert!(
        !ok,
        "export with another input size must be refused:\n{stdout}"
    );
    assert!(
        stderr.contains("image_size") && stderr.contains("`8x8`") && stderr.contains("`16x16`"),
        "{stderr}"
    );
    assert!(!out.exists());
    let (ok, stdout, stderr) = xfer(
        &[
            "export",
            "--model",
            path(&model_dir),
            "--head",
            path(&run),
            "--out",
            path(&out),
        ],
        &cwd(),
    );
    assert!(
        ok,
        "the model the store was made with exports:\n{stdout}\n{stderr}"
    );
}

#[test]
fn train_head_refuses_rows_of_one_fingerprint_made_at_two_input_sizes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (model_dir, store, run) = (root.join("tiny"), root.join("store"), root.join("run"));
    let data = root.join("data");
    tiny_backbone(&model_dir, 0.0);
    fill_store(&store, &model_dir, &data, &images(&data));
    // A part written by another writer (or an older xfer) at another input size.
    let other = resized_copy(&model_dir, &root.join("tiny-bigger"), SIZE * 2);
    let meta = StoreMetadata::from_manifest(&other, vec!["cat".to_owned(), "dog".to_owned()]);
    let mut writer = EmbeddingWriter::create(&store, meta, &WriterOptions::default()).expect("w");
    let records = vec![EmbeddingRecord {
        id: "cat/extra.png".to_owned(),
        label: 0,
        split: "train".to_owned(),
        content_hash: xfer_store::content_hash(b"extra"),
    }];
    writer
        .append(&records, Array2::<f32>::zeros((1, 3)).view())
        .expect("append");
    writer.finish().expect("finish");

    let (ok, stdout, stderr) = xfer(
        &["train-head", "--store", path(&store), "--out", path(&run)],
        &cwd(),
    );
    assert!(!ok, "mixed input sizes must be refused:\n{stdout}");
    assert!(
        stderr.contains("image_size") && stderr.contains("16x16"),
        "{stderr}"
    );
}
