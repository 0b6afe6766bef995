//! `report.html`: one self-contained page (no network; images embedded as data URIs)
//! about one or more training runs of `xfer train-head` or `xfer finetune`.
//!
//! Per run: the learning curves (loss and accuracy per epoch, both phases, the phase
//! boundary and the exported epoch marked; inline SVG), the test split's confusion
//! matrix as a coloured grid, per-class precision/recall/F1, the misclassified test
//! images as thumbnails (true label, predicted label and probability, worst first) and
//! the run's configuration. With several runs, a side-by-side table first.
//!
//! A run folder is read, never written: `metrics.json` (test metrics), `predictions.jsonl`
//! (one line per test image), `metrics.jsonl` and `config.toml` (fine-tuning runs) or
//! `head.json` (head-only runs).

mod html;
mod run;
mod svg;

use std::path::{Path, PathBuf};

pub use html::render;
pub use run::{Prediction, RunKind, RunReport};
pub use svg::curves_svg;

/// File name of the report.
pub const REPORT_HTML: &str = "report.html";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// A run file is not what `xfer` writes.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A folder is not a run of `xfer train-head` or `xfer finetune`.
    #[error("{path} is not a run folder of `xfer train-head` or `xfer finetune`: {reason}")]
    NotARun {
        /// The folder.
        path: String,
        /// What is missing.
        reason: String,
    },
    /// The fine-tuning run's files could not be read.
    #[error(transparent)]
    Finetune(#[from] xfer_finetune::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the runs in `dirs` and writes their report to `out` (atomically); `data` is the
/// dataset folder of runs that do not name one (head-only runs), for the thumbnails.
pub fn write_report(dirs: &[PathBuf], data: Option<&Path>, out: &Path) -> Result<Vec<RunReport>> {
    let runs = dirs
        .iter()
        .map(|d| RunReport::load(d, data))
        .collect::<Result<Vec<_>>>()?;
    let page = render(&runs);
    xfer_fs::write_atomic(out, page.as_bytes()).map_err(|e| Error::Format {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(runs)
}
