//! Evaluation: a head on stored embeddings, or an exported model (backbone + head,
//! `xfer export` / `xfer finetune`) on images, into metrics and per-row predictions.

use std::path::Path;

use ndarray::{Array2, ArrayView2, ArrayView4, Axis};
use serde::Serialize;
use xfer_data::{BatchLoader, Example, LoadSummary, LoaderConfig, OnError};
use xfer_runtime::{Device, Model, SessionOptions};

use crate::head::Head;
use crate::metadata::ModelMetadata;
use crate::metrics::{Metrics, argmax};
use crate::{Error, Result};
use xfer_fs::write_atomic;

/// File name of a run's per-image test predictions ([`Evaluation::write_predictions`]):
/// `xfer train-head` and `xfer finetune` write it into their run folders.
pub const TEST_PREDICTIONS: &str = "predictions.jsonl";

/// A model written by `xfer export` or `xfer finetune`, loaded, with its metadata.
pub struct ExportedModel {
    model: Model,
    origin: String,
    /// What the model's metadata says (classes, input, image size, ...).
    pub metadata: ModelMetadata,
}

impl ExportedModel {
    /// Loads the model at `path` and reads its metadata.
    pub fn open(path: &Path, options: &SessionOptions) -> Result<Self> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            op: "reading",
            path: origin.clone(),
            source,
        })?;
        let proto = xfer_onnx::read_model_bytes(&bytes).map_err(|e| Error::Format {
            path: origin.clone(),
            reason: format!("not an ONNX model: {e}"),
        })?;
        let metadata = ModelMetadata::read_from(&proto, &origin)?;
        drop(proto);
        let model =
            Model::from_bytes(&bytes, &origin, options).map_err(|source| Error::Runtime {
                path: origin.clone(),
                source,
            })?;
        Ok(ExportedModel {
            model,
            origin,
            metadata,
        })
    }

    /// The class names, in output order.
    pub fn classes(&self) -> &[String] {
        &self.metadata.classes
    }

    /// Where the model runs (the CPU after a fallback).
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Probabilities `[n, classes]` of pixels `[n, 3, h, w]` (RGB 0..255, the model's size).
    pub fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        let n = pixels.shape()[0];
        let k = self.metadata.classes.len();
        let probs = self
            .model
            .run_single(&self.metadata.input, pixels.into_dyn())
            .map_err(|source| Error::Runtime {
                path: self.origin.clone(),
                source,
            })?;
        if probs.shape() != [n, k] {
            return Err(Error::Onnx(format!(
                "the model returned shape {:?}, expected [{n}, {k}]",
                probs.shape()
            )));
        }
        probs
            .into_shape_with_order((n, k))
            .map_err(|e| Error::Onnx(e.to_string()))
    }

    /// Classifies `examples`: decoded and resized to the model's size in parallel
    /// ([`BatchLoader`]), in their order. An unreadable image is skipped and counted in
    /// [`Classified::summary`] under [`OnError::Skip`], and is an error under [`OnError::Fail`].
    pub fn classify(
        &mut self,
        examples: Vec<Example>,
        batch_size: usize,
        threads: Option<usize>,
        on_error: OnError,
    ) -> Result<Classified> {
        let [h, w] = self.metadata.image_size;
        let mut config = LoaderConfig::for_inference(h, w, batch_size, threads);
        config.on_error = on_error;
        let mut read = Vec::with_capacity(examples.len());
        let mut rows = Vec::with_capacity(examples.len());
        let mut summary = LoadSummary::default();
        for batch in BatchLoader::start(examples, config)? {
            let batch = batch?;
            summary.record(&batch);
            if batch.examples.is_empty() {
                continue;
            }
            rows.push(self.run(batch.pixels.view())?);
            read.extend(batch.examples);
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let probabilities = if views.is_empty() {
            Array2::zeros((0, self.metadata.classes.len()))
        } else {
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Onnx(e.to_string()))?
        };
        Ok(Classified {
            examples: read,
            probabilities,
            summary,
        })
    }
}

/// What [`ExportedModel::classify`] read.
#[derive(Debug, Clone)]
pub struct Classified {
    /// The examples whose images loaded, in the order given.
    pub examples: Vec<Example>,
    /// Probabilities `[examples, classes]`.
    pub probabilities: Array2<f32>,
    /// Images loaded and skipped (with names and reasons).
    pub summary: LoadSummary,
}

/// Metrics of a model on one split, with what `--predictions` writes.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Row ids (image ids).
    pub ids: Vec<String>,
    /// True labels.
    pub labels: Vec<i32>,
    /// Probabilities `[rows, classes]`.
    pub probabilities: Array2<f64>,
    /// Class names.
    pub classes: Vec<String>,
    /// The metrics.
    pub metrics: Metrics,
    /// Images loaded and skipped, when the rows came from images (empty for stored embeddings).
    pub load: LoadSummary,
}

/// `head` on stored embeddings `features` (of the backbone `fingerprint`), rows `ids`/`labels`.
pub fn evaluate_embeddings(
    head: &Head,
    features: ArrayView2<'_, f32>,
    labels: &[i32],
    ids: &[String],
    fingerprint: &str,
) -> Result<Evaluation> {
    head.check_fingerprint(fingerprint)?;
    let probabilities = head.probabilities(features)?;
    let metrics = Metrics::compute(probabilities.view(), labels, &head.classes)?;
    Ok(Evaluation {
        ids: ids.to_vec(),
        labels: labels.to_vec(),
        probabilities,
        classes: head.classes.clone(),
        metrics,
        load: LoadSummary::default(),
    })
}

/// An exported model on the images of `examples` (sorted by id first, as the store keeps
/// them); unreadable images are skipped and counted, or an error, as `on_error` says.
pub fn evaluate_exported(
    model: &mut ExportedModel,
    mut examples: Vec<Example>,
    batch_size: usize,
    threads: Option<usize>,
    on_error: OnError,
) -> Result<Evaluation> {
    examples.sort_by(|a, b| a.id.cmp(&b.id));
    let classified = model.classify(examples, batch_size, threads, on_error)?;
    let ids: Vec<String> = classified.examples.iter().map(|e| e.id.clone()).collect();
    let labels = classified
        .examples
        .iter()
        .map(|e| {
            i32::try_from(e.label).map_err(|_| {
                Error::Data(format!("image {} has label {} (too large)", e.id, e.label))
            })
        })
        .collect::<Result<Vec<i32>>>()?;
    let probabilities = classified.probabilities.mapv(f64::from);
    let classes = model.classes().to_vec();
    let metrics = Metrics::compute(probabilities.view(), &labels, &classes)?;
    Ok(Evaluation {
        ids,
        labels,
        probabilities,
        classes,
        metrics,
        load: classified.summary,
    })
}

/// One line of [`Evaluation::write_predictions`].
#[derive(Serialize)]
struct PredictionLine<'a> {
    id: &'a str,
    label: &'a str,
    predicted: &'a str,
    probabilities: Vec<f64>,
}

impl Evaluation {
    /// Writes one JSON line per row (id, true label, predicted label, probabilities) to `path`.
    pub fn write_predictions(&self, path: &Path) -> Result<()> {
        let class = |i: usize| self.classes.get(i).map_or("?", String::as_str);
        let mut text = String::new();
        for ((id, &label), p) in self
            .ids
            .iter()
            .zip(&self.labels)
            .zip(self.probabilities.axis_iter(Axis(0)))
        {
            let line = PredictionLine {
                id,
                label: usize::try_from(label).map_or("?", class),
                predicted: class(argmax(p.iter().copied())),
                probabilities: p.to_vec(),
            };
            let json = serde_json::to_string(&line).map_err(|e| Error::Format {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            text.push_str(&json);
            text.push('\n');
        }
        Ok(write_atomic(path, text.as_bytes())?)
    }
}
