//! Workflow A of the Keras transfer-learning guide: a new head trained on
//! augmented images with the base frozen (phase 1), then the base unfrozen at
//! a low learning rate with BatchNorm kept in inference mode (phase 2).
//!
//! The run folder (`runs/NAME/`) holds everything a run produces:
//!
//! | file | what |
//! |---|---|
//! | `config.toml` | the effective [`FinetuneConfig`] |
//! | `metrics.jsonl` | one [`EpochRecord`] per finished epoch |
//! | `curves.png`, `curves.svg` | loss and accuracy per epoch, phase boundary marked, with titles, axis labels and a legend (the PNG's text in the bundled DejaVu Sans) |
//! | `checkpoints/last.safetensors`, `best.safetensors` | parameters + Adam state; the training state (phase, epoch, step, RNG) in the safetensors metadata and beside it as `*.json`; while the last epoch is the best, `best` is a hard link to `last` (written once) |
//! | `model.onnx` | the fine-tuned backbone (BatchNorm folded) + head of the epoch [`FinetuneConfig::export`] chooses (default: lowest validation loss): pixels → probabilities |
//! | `metrics.json` | test-split metrics of the exported model (`test`) and which epoch it holds (`exported`) |
//! | `predictions.csv` | the exported model's prediction of every test image |

mod checkpoint;
mod config;
mod curves;
mod device_loop;
mod export;
mod metrics;
mod rng;
mod trainer;

pub use checkpoint::{CHECKPOINT_DIR, Checkpoint, PartialEpoch, TensorMap, TrainingState};
pub use config::{
    AugmentationConfig, CONFIG_FILE_NAME, ExportChoice, FinetuneConfig, PhaseConfig, SplitConfig,
};
pub use curves::{CURVES_PNG, CURVES_SVG, draw_curves, loss_axis_top};
pub use device_loop::{DeviceLoop, Residence};
pub use export::{ExportInfo, HEAD_BIAS, HEAD_KERNEL, export_model, trained_forward};
pub use metrics::{EpochRecord, METRICS_LOG_FILE_NAME, MetricsLog};
pub use rng::{StreamRng, epoch_permutation, mix_seed};
pub use trainer::{
    DEFAULT_CACHE_BYTES, EXPORTED_MODEL, Event, ExportedEpoch, Outcome, RunOptions, SkippedImages,
    Summary, TEST_PREDICTIONS, checkpoint_parameters, finetune,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`, `renaming`).
        op: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing or reading a file failed (the operation and the file are in the error).
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
    /// The configuration (file or flags) is invalid.
    #[error("invalid fine-tuning configuration{}: {reason}", .path.as_ref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Config {
        /// The config file, when the problem is in one.
        path: Option<String>,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A checkpoint is missing, unreadable or does not fit this run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The metrics log is unreadable.
    #[error("metrics log {path}: {reason}")]
    Metrics {
        /// The log file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Drawing the curves failed.
    #[error("drawing {path}: {reason}")]
    Plot {
        /// The image file.
        path: String,
        /// What the plotting library said.
        reason: String,
    },
    /// An ONNX graph could not be read, built or written.
    #[error(transparent)]
    Onnx(#[from] xfer_onnx::Error),
    /// ONNX Runtime failed.
    #[error(transparent)]
    Runtime(#[from] xfer_runtime::Error),
    /// The dataset, a split or an image could not be used.
    #[error(transparent)]
    Data(#[from] xfer_data::DataError),
    /// The training graphs could not be built, or an optimizer step failed.
    #[error("training graph: {0}")]
    Autodiff(#[from] xfer_autodiff::Error),
    /// A head (`--init-head`) or the test metrics failed.
    #[error(transparent)]
    Head(#[from] xfer_head::Error),
    /// The model or the graphs built from it are not what training needs.
    #[error("model: {reason}")]
    Model {
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite; the run stopped without writing a checkpoint.
    #[error(
        "{value} at phase {phase}, epoch {epoch}, batch {step} (optimizer step {global_step}); the run stopped \
         and the last good checkpoint {checkpoint} is kept: lower the learning rate and --resume, or start again"
    )]
    NonFinite {
        /// Phase (1 or 2).
        phase: u8,
        /// Epoch within the phase, from 1.
        epoch: usize,
        /// Batch within the epoch, from 1.
        step: usize,
        /// Optimizer step over the run.
        global_step: u64,
        /// Which value (`training loss NaN`).
        value: String,
        /// The checkpoint kept.
        checkpoint: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
