//! Heads trained on stored embeddings: logistic regression (binary and
//! multinomial, fitted with an in-crate L-BFGS), classification metrics, persistence
//! (`head.json`, `head.onnx`, `metrics.json`) and export of backbone + head as
//! one ONNX model.
//!
//! Every head computes `probabilities = softmax(W · standardise(x) + b)` with
//! one row of `W` per class. A binary head keeps row 0 at zero, so its
//! softmax is exactly the logistic sigmoid of row 1.

mod evaluate;
mod export;
mod head;
mod lbfgs;
mod metadata;
mod metrics;
mod objective;
mod standardize;
mod train;

pub use evaluate::{
    Classified, Evaluation, ExportedModel, TEST_PREDICTIONS, evaluate_embeddings, evaluate_exported,
};
pub use export::{
    ExportOptions, METADATA_CLASSES, METADATA_IMAGE_SIZE, METADATA_INPUT, PROBABILITIES_OUTPUT,
    merge,
};
pub use head::{FEATURES_INPUT, HEAD_JSON, HEAD_ONNX, Head, HeadKind, HyperParameters};
pub use metadata::{METADATA_FINETUNED, ModelMetadata};
pub use metrics::{ClassMetrics, METRICS_JSON, Metrics, argmax, format_table, save_metrics};
pub use standardize::Standardizer;
pub use train::{ClassWeight, GridPoint, Split, TrainOptions, train};

/// Errors of the head layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Training or evaluation data is unusable (shape, labels, values).
    #[error("invalid data: {0}")]
    Data(String),
    /// Options are inconsistent or out of range.
    #[error("invalid option: {0}")]
    Options(String),
    /// The solver failed.
    #[error("training the logistic head (L2 strength {alpha}) failed: {reason}")]
    Training {
        /// The L2 strength being fitted.
        alpha: f64,
        /// What went wrong.
        reason: String,
    },
    /// Embeddings come from a different backbone than the one the head was trained for.
    #[error(
        "the head was trained on embeddings of model {head} but these embeddings come from model {data}; \
         extract embeddings with the same model (or train a new head on these embeddings)"
    )]
    FingerprintMismatch {
        /// Fingerprint recorded in the head.
        head: String,
        /// Fingerprint of the embeddings given.
        data: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`).
        op: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing or reading a file failed (the operation and the file are in the error).
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
    /// A `head.json` (or other JSON file) could not be parsed or is inconsistent.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An ONNX model could not be built, merged or written.
    #[error("ONNX: {0}")]
    Onnx(String),
    /// ONNX Runtime could not load or run a model.
    #[error("running {path}: {source}")]
    Runtime {
        /// The model.
        path: String,
        /// What ONNX Runtime said.
        source: xfer_runtime::Error,
    },
    /// Images could not be read or decoded.
    #[error(transparent)]
    Images(#[from] xfer_data::DataError),
}

impl From<xfer_onnx::Error> for Error {
    fn from(e: xfer_onnx::Error) -> Self {
        Error::Onnx(e.to_string())
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
