//! `xfer.Model`: a backbone folder on ONNX Runtime, run on arrays or image files.

use std::path::PathBuf;
use std::sync::Mutex;

use ndarray::{Array2, Array4, ArrayView4, Axis, s};
use numpy::{IntoPyArray, PyArray2, PyArray4, PyReadonlyArray4};
use pyo3::prelude::*;
use xfer_data::{BatchLoader, Example, LoaderConfig, OnError};
use xfer_runtime::{Backbone, Device, SessionOptions};

use crate::{XferError, compute, to_py};

/// A model folder (`model.onnx` + `model.json`) loaded into ONNX Runtime.
///
/// `Model(dir, device="cpu", threads=None, ort_lib=None)`: `threads` is ONNX Runtime's
/// intra-op threads and the image decoders' (default: all cores); `ort_lib` the library to
/// load (default: as the CLI finds it, `ORT_DYLIB_PATH` then `.ort/` up from the working
/// directory).
#[pyclass(module = "xfer._native", frozen)]
pub(crate) struct Model {
    backbone: Mutex<Backbone>,
    dir: PathBuf,
    threads: Option<usize>,
}

/// Rows `[n, D]` of one run of the backbone over files: the embeddings of the files that
/// loaded, their content hashes and positions, and the failures (position, message).
type FileRows = (Array2<f32>, Vec<String>, Vec<usize>, Vec<(usize, String)>);

/// [`FileRows`] as handed to Python (the embeddings as a numpy array).
type PyFileRows<'py> = (
    Bound<'py, PyArray2<f32>>,
    Vec<String>,
    Vec<usize>,
    Vec<(usize, String)>,
);

impl Model {
    fn backbone(&self) -> PyResult<std::sync::MutexGuard<'_, Backbone>> {
        self.backbone
            .lock()
            .map_err(|_| XferError::new_err("the model was poisoned by an earlier panic"))
    }

    fn image_size(&self) -> PyResult<[u32; 2]> {
        Ok(self.backbone()?.manifest.image_size)
    }

    /// Runs `pixels` (NCHW 0..255) through the backbone `batch_size` images at a time.
    fn embed_pixels(
        &self,
        pixels: ArrayView4<'_, f32>,
        batch_size: usize,
    ) -> PyResult<Array2<f32>> {
        let mut backbone = self.backbone()?;
        let dim = backbone.manifest.feature_dim;
        let n = pixels.shape()[0];
        let mut out = Array2::<f32>::zeros((n, dim));
        let mut start = 0;
        while start < n {
            let end = (start + batch_size).min(n);
            let features = backbone
                .embed(pixels.slice(s![start..end, .., .., ..]))
                .map_err(to_py)?;
            out.slice_mut(s![start..end, ..]).assign(&features);
            start = end;
        }
        Ok(out)
    }

    /// Decodes `examples` with xfer-data's batch loader (as `xfer extract` does) and embeds
    /// them, overlapping decoding with inference.
    fn embed_loaded(&self, examples: Vec<Example>, config: LoaderConfig) -> PyResult<FileRows> {
        let mut backbone = self.backbone()?;
        let dim = backbone.manifest.feature_dim;
        let mut rows: Vec<Array2<f32>> = Vec::new();
        let mut hashes = Vec::new();
        let mut kept = Vec::new();
        let mut failures = Vec::new();
        let position = |e: &Example| e.id.parse::<usize>().unwrap_or(usize::MAX);
        for batch in BatchLoader::start(examples, config).map_err(to_py)? {
            let batch = batch.map_err(to_py)?;
            failures.extend(
                batch
                    .failures
                    .iter()
                    .map(|(e, err)| (position(e), err.to_string())),
            );
            if batch.examples.is_empty() {
                continue;
            }
            rows.push(backbone.embed(batch.pixels.view()).map_err(to_py)?);
            hashes.extend(batch.content_hashes);
            kept.extend(batch.examples.iter().map(position));
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let features = if views.is_empty() {
            Array2::zeros((0, dim))
        } else {
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| XferError::new_err(format!("stacking embeddings: {e}")))?
        };
        Ok((features, hashes, kept, failures))
    }

    /// The examples for `paths`, their id being their position.
    fn examples(paths: &[PathBuf]) -> Vec<Example> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| Example {
                id: i.to_string(),
                path: p.clone(),
                label: 0,
            })
            .collect()
    }
}

/// NHWC uint8 → NCHW float32 in 0..255 (the loader's output layout and range).
fn nhwc_to_nchw(x: ndarray::ArrayView4<'_, u8>) -> Array4<f32> {
    x.permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .mapv(f32::from)
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (dir, device="cpu", threads=None, ort_lib=None))]
    fn new(
        py: Python<'_>,
        dir: PathBuf,
        device: &str,
        threads: Option<usize>,
        ort_lib: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device: Device = device.parse().map_err(XferError::new_err)?;
        let options = SessionOptions {
            ort_lib,
            device,
            intra_threads: threads,
            ..Default::default()
        };
        let backbone = compute(py, || Backbone::load(&dir, &options).map_err(to_py))?;
        Ok(Model {
            backbone: Mutex::new(backbone),
            dir,
            threads,
        })
    }

    /// Embeddings `[N, feature_dim]` float32 of `x`: a uint8 NHWC array of the model's input
    /// size, or a list of image paths decoded and resized as `xfer extract` does (the first
    /// unreadable file raises `XferError` naming it).
    #[pyo3(signature = (x, batch_size=32))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let batch_size = batch_size.max(1);
        if let Ok(array) = x.extract::<PyReadonlyArray4<'py, u8>>() {
            let [h, w] = self.image_size()?;
            let view = array.as_array();
            let shape = view.shape().to_vec();
            if shape[1] != h as usize || shape[2] != w as usize || shape[3] != 3 {
                return Err(XferError::new_err(format!(
                    "embed: the array has shape {shape:?}; expected (N, {h}, {w}, 3) uint8 RGB (the model's input size), or pass image paths to have them resized"
                )));
            }
            let pixels = nhwc_to_nchw(view);
            let features = compute(py, || self.embed_pixels(pixels.view(), batch_size))?;
            return Ok(features.into_pyarray(py));
        }
        let paths: Vec<PathBuf> = x.extract().map_err(|_| {
            XferError::new_err("embed: expected a uint8 NHWC numpy array or a list of image paths")
        })?;
        let [h, w] = self.image_size()?;
        let config = LoaderConfig::for_inference(h, w, batch_size, self.threads);
        let (features, ..) = compute(py, || self.embed_loaded(Self::examples(&paths), config))?;
        Ok(features.into_pyarray(py))
    }

    /// Embeds image files as `xfer extract` does, skipping unreadable ones: a tuple
    /// `(embeddings [n, D], content_hashes, positions, failures)` where `positions` are the
    /// indices into `paths` of the embedded files and `failures` lists `(index, message)`.
    #[pyo3(signature = (paths, batch_size=32))]
    fn embed_files<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        batch_size: usize,
    ) -> PyResult<PyFileRows<'py>> {
        let [h, w] = self.image_size()?;
        let mut config = LoaderConfig::new(h, w, batch_size.max(1));
        config.on_error = OnError::Skip;
        config.threads = self.threads;
        let (features, hashes, kept, failures) =
            compute(py, || self.embed_loaded(Self::examples(&paths), config))?;
        Ok((features.into_pyarray(py), hashes, kept, failures))
    }

    /// The model's input float32 NCHW (values 0..255) for image files, decoded and resized
    /// as `xfer extract` does.
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
    ) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let [h, w] = self.image_size()?;
        let config = LoaderConfig::for_inference(h, w, paths.len().max(1), self.threads);
        let examples = Self::examples(&paths);
        let batch = compute(py, || {
            xfer_data::load_batch(&examples, &config).map_err(to_py)
        })?;
        Ok(batch.pixels.into_pyarray(py))
    }

    /// sha256 of the ONNX bytes (the store's `model` column).
    #[getter]
    fn fingerprint(&self) -> PyResult<String> {
        Ok(self.backbone()?.manifest.fingerprint.clone())
    }

    /// Length of an embedding.
    #[getter]
    fn feature_dim(&self) -> PyResult<usize> {
        Ok(self.backbone()?.manifest.feature_dim)
    }

    /// Input size `(height, width)`.
    #[getter(image_size)]
    fn image_size_py(&self) -> PyResult<(u32, u32)> {
        let [h, w] = self.image_size()?;
        Ok((h, w))
    }

    /// The model's name (`xception`).
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.backbone()?.manifest.name.clone())
    }

    /// The model folder.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The ONNX Runtime library this process loaded.
    #[getter]
    fn ort_library(&self) -> Option<PathBuf> {
        xfer_runtime::loaded_library().map(PathBuf::from)
    }

    fn __repr__(&self) -> PyResult<String> {
        let b = self.backbone()?;
        Ok(format!(
            "xfer.Model({:?}, {} {}x{} -> {}, fingerprint {}…)",
            self.dir.display().to_string(),
            b.manifest.name,
            b.manifest.image_size[0],
            b.manifest.image_size[1],
            b.manifest.feature_dim,
            &b.manifest.fingerprint.get(..12).unwrap_or("")
        ))
    }
}

impl Model {
    /// The metadata of store rows this model makes over `classes` (as `xfer extract` writes).
    pub(crate) fn store_metadata(
        &self,
        classes: Vec<String>,
    ) -> PyResult<xfer_store::StoreMetadata> {
        let b = self.backbone()?;
        Ok(xfer_store::StoreMetadata::from_manifest(
            &b.manifest,
            classes,
        ))
    }
}
