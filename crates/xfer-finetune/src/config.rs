//! The fine-tuning configuration: every hyper-parameter, from a TOML file and/or flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the effective configuration inside a run folder.
pub const CONFIG_FILE_NAME: &str = "config.toml";

/// Epochs and learning rate of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// Number of epochs (0 skips the phase).
    pub epochs: usize,
    /// Adam learning rate.
    pub learning_rate: f32,
}

/// Augmentation applied freshly to every training example in every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentationConfig {
    /// Keras `RandomFlip("horizontal")`.
    pub flip: bool,
    /// Keras `RandomRotation(factor)`: angles uniform in ±factor·2π (0 disables).
    pub rotation: f32,
    /// Fill mode of the rotation: `reflect` (Keras's default), `constant` or `nearest`.
    pub fill: String,
}

impl AugmentationConfig {
    /// The augmentation as the flags that set it.
    fn as_flags(&self) -> String {
        let flip = if self.flip { "" } else { "--no-flip " };
        format!("{flip}--rotation {} --fill {}", self.rotation, self.fill)
    }
}

impl Default for AugmentationConfig {
    fn default() -> Self {
        AugmentationConfig {
            flip: true,
            rotation: 0.1,
            fill: "reflect".to_owned(),
        }
    }
}

/// The three splits, as slices of the dataset's stable order (`train[:40%]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Examples trained on.
    pub train: String,
    /// Examples validated on after every epoch (best checkpoint by their loss).
    pub val: String,
    /// Examples the exported model is tested on at the end (empty: no test).
    pub test: String,
    /// Keep the class balance in every split.
    pub stratified: bool,
}

impl SplitConfig {
    /// The splits as the flags that set them.
    fn as_flags(&self) -> String {
        let stratified = if self.stratified { " --stratified" } else { "" };
        format!(
            "--train {} --val {} --test {}{stratified}",
            self.train, self.val, self.test
        )
    }

    /// The three splits as one assignment (`test` left out when blank), sliced per class
    /// when `stratified`; selecting it refuses splits that share images.
    pub fn assignment(&self) -> Result<xfer_data::SplitAssignment> {
        let named = [
            ("train", self.train.as_str()),
            ("val", self.val.as_str()),
            ("test", self.test.as_str()),
        ];
        Ok(xfer_data::SplitAssignment::from_named(&named)?.stratified(self.stratified))
    }
}

impl Default for SplitConfig {
    fn default() -> Self {
        // The same split as `xfer extract` / `xfer train-head` (seed 1337), so
        // fine-tuned and head-only results compare on the same test images.
        SplitConfig {
            train: "train[:70%]".to_owned(),
            val: "train[70%:85%]".to_owned(),
            test: "train[85%:]".to_owned(),
            stratified: false,
        }
    }
}

/// Which epoch's parameters `model.onnx` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportChoice {
    /// The epoch with the lowest validation loss (Keras's `ModelCheckpoint(save_best_only=True)`).
    #[default]
    Best,
    /// The last epoch trained.
    Last,
}

impl std::str::FromStr for ExportChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "best" => Ok(ExportChoice::Best),
            "last" => Ok(ExportChoice::Last),
            other => Err(format!("expected `best` or `last`, got `{other}`")),
        }
    }
}

impl std::fmt::Display for ExportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExportChoice::Best => "best",
            ExportChoice::Last => "last",
        })
    }
}

/// Everything that decides a fine-tuning run; saved as `runs/NAME/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Dataset folder (one subfolder per class) or CSV manifest.
    pub data: PathBuf,
    /// Model folder (`model.json` with a `training_onnx` graph).
    pub model: PathBuf,
    /// Seed of the splits, shuffling, augmentation, dropout and head initialisation.
    pub seed: u64,
    /// Input size `[height, width]` (default: the model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
    /// Images per training step.
    pub batch_size: usize,
    /// Dropout rate before the Dense head.
    pub dropout: f32,
    /// Phase 1: base frozen, only the head trains.
    pub phase1: PhaseConfig,
    /// Phase 2: base unfrozen (all of it, or from `unfreeze_from` on).
    pub phase2: PhaseConfig,
    /// First layer (node or parameter name prefix) trained in phase 2; everything before stays frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfreeze_from: Option<String>,
    /// A run of `xfer train-head` on the same model whose head starts phase 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_head: Option<PathBuf>,
    /// Augmentation of the training images.
    pub augmentation: AugmentationConfig,
    /// Train, validation and test splits.
    pub splits: SplitConfig,
    /// Which epoch `model.onnx` holds: `best` (lowest validation loss) or `last`.
    pub export: ExportChoice,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            data: PathBuf::from("data/cats_vs_dogs"),
            model: PathBuf::from("models/xception"),
            seed: 1337,
            image_size: None,
            batch_size: 32,
            dropout: 0.2,
            phase1: PhaseConfig {
                epochs: 20,
                learning_rate: 1e-3,
            },
            phase2: PhaseConfig {
                epochs: 10,
                learning_rate: 1e-5,
            },
            unfreeze_from: None,
            init_head: None,
            augmentation: AugmentationConfig::default(),
            splits: SplitConfig::default(),
            export: ExportChoice::Best,
        }
    }
}

impl FinetuneConfig {
    /// Parses a TOML configuration; keys not given keep their defaults, unknown keys are refused.
    pub fn from_toml_str(text: &str, origin: Option<&Path>) -> Result<Self> {
        let config: FinetuneConfig = toml::from_str(text).map_err(|e| Error::Config {
            path: origin.map(|p| p.display().to_string()),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// Reads a TOML configuration file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "reading",
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, Some(path))
    }

    /// The configuration as TOML text.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config {
            path: None,
            reason: format!("cannot serialise the configuration: {e}"),
        })
    }

    /// Writes `run_dir/config.toml` atomically.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let text = format!(
            "# Effective configuration of this xfer finetune run (flags applied over any --config file).\n{}",
            self.to_toml_string()?
        );
        Ok(xfer_fs::write_atomic(
            &run_dir.join(CONFIG_FILE_NAME),
            text.as_bytes(),
        )?)
    }

    /// Checks every value; the error says which key is wrong and what it must be.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { path: None, reason });
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".to_owned());
        }
        if self.phase1.epochs == 0 && self.phase2.epochs == 0 {
            return bad("phase1.epochs and phase2.epochs are both 0: nothing to train".to_owned());
        }
        for (name, phase) in [("phase1", &self.phase1), ("phase2", &self.phase2)] {
            let lr = phase.learning_rate;
            if !(lr.is_finite() && lr > 0.0) {
                return bad(format!(
                    "{name}.learning_rate must be a positive number, got {lr}"
                ));
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        let r = self.augmentation.rotation;
        if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
            return bad(format!(
                "augmentation.rotation is a fraction of a full turn in [0, 1], got {r}"
            ));
        }
        if !["reflect", "constant", "nearest"].contains(&self.augmentation.fill.as_str()) {
            return bad(format!(
                "augmentation.fill must be reflect, constant or nearest, got `{}`",
                self.augmentation.fill
            ));
        }
        if let Some([h, w]) = self.image_size
            && (h == 0 || w == 0)
        {
            return bad(format!("image_size must be positive, got {h}x{w}"));
        }
        if self.splits.train.trim().is_empty() || self.splits.val.trim().is_empty() {
            return bad(
                "splits.train and splits.val must name a split (e.g. `train[:40%]`)".to_owned(),
            );
        }
        Ok(())
    }

    /// The settings that must not change when a run is resumed, as `(key, value)` pairs.
    pub(crate) fn resume_keys(&self) -> Vec<(&'static str, String)> {
        vec![
            ("data", canonical(&self.data)),
            ("model", canonical(&self.model)),
            ("seed", self.seed.to_string()),
            (
                "image_size",
                self.image_size
                    .map_or("the model's".to_owned(), |[h, w]| format!("{h}x{w}")),
            ),
            ("batch_size", self.batch_size.to_string()),
            ("dropout", self.dropout.to_string()),
            (
                "unfreeze_from",
                self.unfreeze_from
                    .as_deref()
                    .map_or("none (every layer)".to_owned(), |l| format!("`{l}`")),
            ),
            ("augmentation", self.augmentation.as_flags()),
            ("splits", self.splits.as_flags()),
        ]
    }

    /// Refuses to resume `saved` under `self` when a setting that shapes the run changed.
    /// `unfreeze_from` may change until phase 2 has started (`phase2_started` false).
    pub fn check_resumable_from(&self, saved: &FinetuneConfig, phase2_started: bool) -> Result<()> {
        for ((key, now), (_, before)) in self.resume_keys().into_iter().zip(saved.resume_keys()) {
            if key == "unfreeze_from" && !phase2_started {
                continue;
            }
            if now != before {
                return Err(Error::Config {
                    path: None,
                    reason: format!(
                        "--resume with a different `{key}` ({before} in the run's config.toml, {now} now); \
                         resume with the saved settings or start a new run folder"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `path` in canonical form when it exists (so `./ds/c40` and `ds/c40` are one folder),
/// else as given.
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
