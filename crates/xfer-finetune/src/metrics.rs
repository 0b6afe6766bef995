//! `metrics.jsonl`: one line per finished epoch, appended and synced.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the per-epoch log inside a run folder.
pub const METRICS_LOG_FILE_NAME: &str = "metrics.jsonl";

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1 (base frozen) or 2 (fine-tuning).
    pub phase: u8,
    /// Epoch number within the phase, from 1.
    pub epoch: usize,
    /// Epoch number over the whole run, from 1.
    pub global_epoch: usize,
    /// Optimizer steps taken so far in the run.
    pub step: u64,
    /// Learning rate of the phase.
    pub learning_rate: f32,
    /// Mean training loss over the epoch's batches (dropout on, augmented images).
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Validation loss (eval graph, no augmentation).
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Training images per second (decode, augment, forward, backward, update).
    pub images_per_second: f64,
    /// Wall time of the training part of the epoch.
    pub train_seconds: f64,
    /// Wall time of the whole epoch, validation and checkpoint included.
    pub seconds: f64,
    /// Ids of the training images skipped as unreadable (not written when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_train: Vec<String>,
    /// Ids of the validation images skipped as unreadable (not written when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_val: Vec<String>,
}

/// The per-epoch log of a run.
#[derive(Debug, Clone)]
pub struct MetricsLog {
    path: PathBuf,
    records: Vec<EpochRecord>,
}

impl MetricsLog {
    /// Starts an empty log at `run_dir/metrics.jsonl`, replacing any old one.
    pub fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(METRICS_LOG_FILE_NAME);
        xfer_fs::write_atomic(&path, b"")?;
        Ok(MetricsLog {
            path,
            records: Vec::new(),
        })
    }

    /// Opens an existing log for a resumed run, keeping only epochs up to
    /// `through_global_epoch` (a run killed after logging an epoch but before its
    /// checkpoint redoes that epoch, so its line is dropped).
    pub fn resume(run_dir: &Path, through_global_epoch: usize) -> Result<Self> {
        let path = run_dir.join(METRICS_LOG_FILE_NAME);
        let records = if path.exists() {
            Self::read_dropping_torn_line(&path)?
        } else {
            Vec::new()
        };
        let kept: Vec<EpochRecord> = records
            .into_iter()
            .filter(|r| r.global_epoch <= through_global_epoch)
            .collect();
        let mut text = String::new();
        for r in &kept {
            text.push_str(&to_line(r, &path)?);
        }
        xfer_fs::write_atomic(&path, text.as_bytes())?;
        Ok(MetricsLog {
            path,
            records: kept,
        })
    }

    /// Reads every record of a log file.
    pub fn read(path: &Path) -> Result<Vec<EpochRecord>> {
        Self::parse(&read_text(path)?, path)
    }

    /// Reads a log file whose last line may be half-written (a run killed while appending
    /// it: the line has no final line break); that line is dropped with a warning.
    fn read_dropping_torn_line(path: &Path) -> Result<Vec<EpochRecord>> {
        let text = read_text(path)?;
        let complete = match text.rfind('\n') {
            Some(end) if end + 1 < text.len() => &text[..=end],
            Some(_) => text.as_str(),
            None => "",
        };
        if complete.len() < text.len() && !text[complete.len()..].trim().is_empty() {
            tracing::warn!(
                "{}: dropping its half-written last line (the run was stopped while writing it)",
                path.display()
            );
        }
        Self::parse(complete, path)
    }

    /// The records of the lines of `text`, read from `path`.
    fn parse(text: &str, path: &Path) -> Result<Vec<EpochRecord>> {
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(line).map_err(|e| Error::Metrics {
                path: path.display().to_string(),
                reason: format!("line {}: {e}", i + 1),
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Appends one record as a line and syncs the file.
    pub fn append(&mut self, record: EpochRecord) -> Result<()> {
        let line = to_line(&record, &self.path)?;
        let io = |source| Error::Io {
            op: "appending to",
            path: self.path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
        self.records.push(record);
        Ok(())
    }

    /// Every record so far, in order.
    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn to_line(record: &EpochRecord, path: &Path) -> Result<String> {
    let mut line = serde_json::to_string(record).map_err(|e| Error::Metrics {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    line.push('\n');
    Ok(line)
}

/// The text of the file at `path`.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "reading",
        path: path.display().to_string(),
        source,
    })
}
