//! A model folder from a Keras model: `model.onnx` (BatchNorm folded, for inference),
//! `train.onnx` (BatchNorm kept, for training graphs) and the manifest `model.json`,
//! written so that a manifest never describes files other than its own.

use std::io::Write;
use std::path::Path;

use xfer_fs::AtomicFile;

use xfer_runtime::{MANIFEST_FILE_NAME, ModelManifest, ModelSource, fingerprint};

use crate::convert::{ConvertOptions, Converted, Part, Preprocessing, convert};
use crate::keras::KerasModel;
use crate::{Error, Result};

/// File name of the inference graph inside a model folder.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the training-ready graph inside a model folder.
pub const TRAIN_FILE: &str = "train.onnx";

/// Both graphs of one Keras model.
pub struct ConvertedPair {
    /// The inference graph (BatchNorm and preprocessing folded into the convolutions).
    pub inference: Converted,
    /// The training graph (BatchNorm kept with the Keras variables).
    pub training: Converted,
    /// The options of the inference graph (input and output names, preprocessing).
    pub options: ConvertOptions,
}

/// Converts `keras` twice: the inference graph and the training graph.
pub fn convert_pair(
    keras: &KerasModel,
    part: Part,
    preprocessing: Preprocessing,
) -> Result<ConvertedPair> {
    let options = ConvertOptions {
        part,
        fold_batch_norm: true,
        preprocessing,
        ..Default::default()
    };
    let inference = convert(keras, &options)?;
    let training = convert(
        keras,
        &ConvertOptions {
            fold_batch_norm: false,
            ..options.clone()
        },
    )?;
    Ok(ConvertedPair {
        inference,
        training,
        options,
    })
}

/// What the manifest says beyond the graphs themselves.
#[derive(Debug, Clone)]
pub struct PublishInfo {
    /// Model name (default: the Keras base model's name).
    pub name: Option<String>,
    /// Default input size `[h, w]` (default: the Keras input size, else 150x150).
    pub image_size: Option<[u32; 2]>,
    /// Class names of the head's outputs (with the head).
    pub classes: Option<Vec<String>>,
    /// Where the Keras model came from.
    pub source: ModelSource,
}

/// A written model folder.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its manifest.
    pub manifest: ModelManifest,
    /// Size of `model.onnx` in bytes.
    pub model_bytes: usize,
    /// Size of `train.onnx` in bytes.
    pub train_bytes: usize,
}

/// Writes `pair` into `dir`: both graphs under temporary names, then the old manifest
/// removed, the graphs renamed into place, and the new manifest written last.
pub fn publish(dir: &Path, pair: &ConvertedPair, info: PublishInfo) -> Result<Published> {
    let model_bytes = xfer_onnx::write_model_bytes(&pair.inference.model);
    let train_bytes = xfer_onnx::write_model_bytes(&pair.training.model);
    let manifest = manifest(pair, info, fingerprint(&model_bytes));
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    replace_graphs(dir, &model_bytes, &train_bytes)?;
    manifest.write(dir).map_err(|e| Error::Publish {
        op: "writing the manifest in",
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Published {
        manifest,
        model_bytes: model_bytes.len(),
        train_bytes: train_bytes.len(),
    })
}

/// The manifest of `pair` with the inference graph's `fingerprint`.
fn manifest(pair: &ConvertedPair, info: PublishInfo, fingerprint: String) -> ModelManifest {
    let inference = &pair.inference;
    let image_size = info.image_size.unwrap_or_else(|| {
        inference
            .input_size
            .map(|[h, w]| [h as u32, w as u32])
            .unwrap_or([150, 150])
    });
    ModelManifest {
        name: info.name.unwrap_or_else(|| inference.base_name.clone()),
        onnx: MODEL_FILE.to_owned(),
        training_onnx: Some(TRAIN_FILE.to_owned()),
        input: pair.options.input_name.clone(),
        layout: "NCHW".to_owned(),
        channel_order: "RGB".to_owned(),
        value_range: [0.0, 255.0],
        image_size,
        preprocessing: pair.options.preprocessing.description.clone(),
        output: pair.options.features_name.clone(),
        feature_dim: inference.feature_dim,
        classes: info.classes,
        source: info.source,
        fingerprint,
        xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Writes both graphs under temporary names (synced), removes the old manifest (it
/// must not describe the new files), then renames the graphs into place. A failure
/// before the renames leaves the folder as it was and no temporary file behind.
fn replace_graphs(dir: &Path, model_bytes: &[u8], train_bytes: &[u8]) -> Result<()> {
    let model = synced_temp(&dir.join(MODEL_FILE), model_bytes)?;
    let train = synced_temp(&dir.join(TRAIN_FILE), train_bytes)?;
    let manifest_path = dir.join(MANIFEST_FILE_NAME);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path)
            .map_err(|e| io_error("removing the old", &manifest_path, e))?;
    }
    model.commit().map_err(fs_error)?;
    train.commit().map_err(fs_error)
}

/// Whether `dir` already holds an intact conversion of a source with this sha256
/// (with the head or not, as asked); its manifest if so.
pub fn current_conversion(
    dir: &Path,
    source_sha256: &str,
    with_head: bool,
) -> Option<ModelManifest> {
    let manifest = ModelManifest::read(dir).ok()?;
    if manifest.source.sha256 != source_sha256 || manifest.classes.is_some() != with_head {
        return None;
    }
    let bytes = std::fs::read(manifest.onnx_path(dir)).ok()?;
    if fingerprint(&bytes) != manifest.fingerprint {
        return None;
    }
    if manifest
        .training_onnx_path(dir)
        .is_some_and(|train| !train.is_file())
    {
        return None;
    }
    Some(manifest)
}

/// `bytes` in a synced temporary file beside `path`, not yet renamed into place.
fn synced_temp(path: &Path, bytes: &[u8]) -> Result<AtomicFile> {
    let mut file = AtomicFile::create(path).map_err(fs_error)?;
    file.write_all(bytes)
        .map_err(|e| io_error("writing (is the disk full?)", file.temp_path(), e))?;
    file.sync().map_err(fs_error)?;
    Ok(file)
}

fn fs_error(e: xfer_fs::Error) -> Error {
    let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
    Error::Publish {
        op: e.op(),
        path: e.path().display().to_string(),
        reason,
    }
}

fn io_error(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::Publish {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replace_graphs_publishes_both_and_removes_the_old_manifest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::write(dir.join(MANIFEST_FILE_NAME), b"{}").expect("old manifest");
        replace_graphs(dir, b"model", b"train").expect("replace");
        assert_eq!(
            std::fs::read(dir.join(MODEL_FILE)).expect("model"),
            b"model"
        );
        assert_eq!(
            std::fs::read(dir.join(TRAIN_FILE)).expect("train"),
            b"train"
        );
        assert_eq!(names(dir), [MODEL_FILE, TRAIN_FILE]);
    }

    #[test]
    fn a_failed_replace_names_the_file_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        // A non-empty folder where train.onnx goes: its rename fails.
        let blocked = dir.join(TRAIN_FILE);
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("keep"), b"x").expect("seed");
        let err = replace_graphs(dir, b"model", b"train").expect_err("blocked rename");
        assert!(
            matches!(&err, Error::Publish { path, .. } if *path == blocked.display().to_string()),
            "{err}"
        );
        assert!(
            names(dir).iter().all(|n| !n.ends_with(".tmp")),
            "{:?}",
            names(dir)
        );
    }
}
