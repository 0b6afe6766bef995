//! What a report shows of one run folder, read from its files.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use xfer_finetune::{CONFIG_FILE_NAME, EpochRecord, ExportedEpoch, FinetuneConfig, MetricsLog};
use xfer_head::{HEAD_JSON, METRICS_JSON, Metrics};

use crate::{Error, Result};

/// File name of the per-image test predictions (as `xfer evaluate --predictions` writes them).
const PREDICTIONS: &str = xfer_head::TEST_PREDICTIONS;

/// Which workflow wrote the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `xfer train-head`: a logistic head on stored embeddings (base frozen).
    HeadOnly,
    /// `xfer finetune`: a new head on augmented images, then the base fine-tuned.
    FineTuned,
}

impl RunKind {
    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            RunKind::HeadOnly => "head only (train-head)",
            RunKind::FineTuned => "fine-tuned (finetune)",
        }
    }
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    /// Image id: its path relative to the dataset folder.
    pub id: String,
    /// True class name.
    pub label: String,
    /// Predicted class name.
    pub predicted: String,
    /// Probability of every class, in the classes' order.
    pub probabilities: Vec<f64>,
}

/// Everything the report shows of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run folder.
    pub dir: PathBuf,
    /// Its name in the report (the folder's path as given).
    pub name: String,
    /// Which workflow wrote it.
    pub kind: RunKind,
    /// Test-split metrics of the run's model (`None`: the run has no test split).
    pub test: Option<Metrics>,
    /// Epochs of a fine-tuning run (empty for head-only runs).
    pub epochs: Vec<EpochRecord>,
    /// The epoch `model.onnx` holds (fine-tuning runs).
    pub exported: Option<ExportedEpoch>,
    /// Per-image test predictions (empty when the run wrote none).
    pub predictions: Vec<Prediction>,
    /// Class names, in the model's order.
    pub classes: Vec<String>,
    /// The run's configuration as written (`config.toml`, or the head's hyper-parameters).
    pub config: String,
    /// Training time in seconds (epochs' time, or the head's fits).
    pub seconds: Option<f64>,
    /// Dataset folder the prediction ids are relative to.
    pub data: Option<PathBuf>,
}

impl RunReport {
    /// Reads the run in `dir`; `data` is the dataset folder when the run does not name one, or
    /// names one that is not found from here.
    pub fn load(dir: &Path, data: Option<&Path>) -> Result<Self> {
        let metrics = read_json(&dir.join(METRICS_JSON))?;
        let test = match metrics.get("test") {
            Some(v) => Some(
                serde_json::from_value::<Metrics>(v.clone())
                    .map_err(|e| format_err(&dir.join(METRICS_JSON), e))?,
            ),
            None => None,
        };
        let predictions = read_predictions(&dir.join(PREDICTIONS))?;
        let mut run = if dir.join(CONFIG_FILE_NAME).is_file() {
            fine_tuned(dir, &metrics)?
        } else if dir.join(HEAD_JSON).is_file() {
            head_only(dir)?
        } else {
            return Err(Error::NotARun {
                path: dir.display().to_string(),
                reason: format!("neither {CONFIG_FILE_NAME} nor {HEAD_JSON}"),
            });
        };
        if run.classes.is_empty()
            && let Some(t) = &test
        {
            run.classes = t.per_class.iter().map(|c| c.class.clone()).collect();
        }
        // A fine-tuning run records its dataset as typed, relative to where it ran: from
        // elsewhere that folder is not found, and the caller's `data` is the one to use.
        run.data = run
            .data
            .filter(|d| d.is_dir())
            .or_else(|| data.map(Path::to_path_buf));
        run.test = test;
        run.predictions = predictions;
        Ok(run)
    }

    /// The test predictions whose predicted class is wrong, worst first (lowest probability
    /// of the true class).
    pub fn misclassified(&self) -> Vec<&Prediction> {
        let mut wrong: Vec<&Prediction> = self
            .predictions
            .iter()
            .filter(|p| p.predicted != p.label)
            .collect();
        wrong.sort_by(|a, b| {
            self.true_probability(a)
                .total_cmp(&self.true_probability(b))
        });
        wrong
    }

    /// The probability the model gave the true class of `p` (0 when the class is unknown).
    pub fn true_probability(&self, p: &Prediction) -> f64 {
        self.probability_of(p, &p.label)
    }

    /// The probability the model gave class `class` for `p` (0 when the class is unknown).
    pub fn probability_of(&self, p: &Prediction, class: &str) -> f64 {
        self.classes
            .iter()
            .position(|c| c == class)
            .and_then(|i| p.probabilities.get(i).copied())
            .unwrap_or(0.0)
    }

    /// Test rows predicted wrongly, from the confusion matrix.
    pub fn test_errors(&self) -> Option<usize> {
        self.test.as_ref().map(|m| {
            let right: usize = (0..m.confusion.len())
                .filter_map(|i| m.confusion[i].get(i))
                .sum();
            m.rows.saturating_sub(right)
        })
    }

    /// Where the image of `id` is, when the dataset folder is known.
    pub fn image_path(&self, id: &str) -> Option<PathBuf> {
        self.data.as_ref().map(|d| d.join(id))
    }
}

/// A fine-tuning run: its config, epochs and exported epoch.
fn fine_tuned(dir: &Path, metrics: &serde_json::Value) -> Result<RunReport> {
    let config_path = dir.join(CONFIG_FILE_NAME);
    let config = std::fs::read_to_string(&config_path).map_err(io_err("reading", &config_path))?;
    let parsed = FinetuneConfig::from_toml_str(&config, Some(&config_path))?;
    let log = dir.join(xfer_finetune::METRICS_LOG_FILE_NAME);
    let epochs = if log.is_file() {
        MetricsLog::read(&log)?
    } else {
        Vec::new()
    };
    let exported = match metrics.get("exported") {
        Some(v) => Some(
            serde_json::from_value::<ExportedEpoch>(v.clone())
                .map_err(|e| format_err(&dir.join(METRICS_JSON), e))?,
        ),
        None => None,
    };
    let seconds = (!epochs.is_empty()).then(|| epochs.iter().map(|r| r.seconds).sum());
    Ok(RunReport {
        dir: dir.to_path_buf(),
        name: dir.display().to_string(),
        kind: RunKind::FineTuned,
        test: None,
        epochs,
        exported,
        predictions: Vec::new(),
        classes: Vec::new(),
        config,
        seconds,
        data: Some(parsed.data),
    })
}

/// A head-only run: its hyper-parameters (the L2 search) and classes.
fn head_only(dir: &Path) -> Result<RunReport> {
    let head = read_json(&dir.join(HEAD_JSON))?;
    let hyper = head
        .get("hyper_parameters")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let seconds = hyper.get("l2_grid").and_then(|g| g.as_array()).map(|grid| {
        grid.iter()
            .filter_map(|p| p.get("fit_seconds").and_then(serde_json::Value::as_f64))
            .sum()
    });
    let classes = head
        .get("classes")
        .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
        .unwrap_or_default();
    let config = serde_json::to_string_pretty(&hyper).unwrap_or_default();
    Ok(RunReport {
        dir: dir.to_path_buf(),
        name: dir.display().to_string(),
        kind: RunKind::HeadOnly,
        test: None,
        epochs: Vec::new(),
        exported: None,
        predictions: Vec::new(),
        classes,
        config,
        seconds,
        data: None,
    })
}

/// `predictions.jsonl`, or nothing when the run wrote none.
fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Format {
                path: path.display().to_string(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
    serde_json::from_str(&text).map_err(|e| format_err(path, e))
}

fn format_err(path: &Path, e: serde_json::Error) -> Error {
    Error::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { op, path, source }
}
