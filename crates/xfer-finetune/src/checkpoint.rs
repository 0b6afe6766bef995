//! Checkpoints: named float32 tensors (parameters, Adam moments) in safetensors files whose
//! metadata carries the training state as JSON. A copy of the state is written beside them
//! as `*.json` for people and scripts.
//!
//! The parameters (`param.*`) and the optimizer state (`optim.*`, Adam's moments) go into two
//! files: `last.safetensors` and `last.optimizer.safetensors`. The optimizer file is written
//! first and carries the same training state; the parameter file, renamed into place second,
//! names it in its metadata, and [`Checkpoint::load`] checks that both hold the same step, so
//! a resume from `last` is bitwise the uninterrupted run's. `best.safetensors` is a hard link
//! to the parameter file only (no second write, no moments: issue 17 defect 5); loading it
//! gives the parameters, and a resume that falls back to it restarts Adam's moments.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Folder of the checkpoints inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// Metadata key of the training state inside the safetensors header.
const STATE_KEY: &str = "xfer.training_state";
/// Metadata key, in a parameter file, naming the file that holds its optimizer state.
const OPTIMIZER_KEY: &str = "xfer.optimizer_file";
/// Name prefix of the optimizer-state tensors (kept in the optimizer file).
const OPTIMIZER_PREFIX: &str = "optim.";

/// Named float32 tensors, in name order.
pub type TensorMap = BTreeMap<String, ArrayD<f32>>;

/// Running sums of an unfinished epoch (a checkpoint written by Ctrl-C mid-epoch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Sum over batches of (mean batch loss × batch size).
    pub loss_sum: f64,
    /// Correct predictions so far.
    pub correct: u64,
    /// Examples seen so far.
    pub seen: u64,
    /// Training seconds spent so far.
    pub seconds: f64,
    /// Ids of the training images skipped so far as unreadable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Where a run stands; everything besides the tensors that resuming needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Phase the position refers to: 1 (base frozen) or 2 (fine-tuning).
    pub phase: u8,
    /// Finished epochs of `phase`.
    pub epochs_done: usize,
    /// Batches done of the unfinished epoch `epochs_done + 1` (0 at an epoch boundary).
    pub step_in_epoch: usize,
    /// Optimizer steps over the whole run.
    pub global_step: u64,
    /// Adam's iteration count in the current phase (its bias correction uses it).
    pub optimizer_step: u64,
    /// Seed of the run. Every random draw (shuffle, augmentation, dropout) is a
    /// pure function of (seed, phase, epoch, step, example), so together with the
    /// position above this is the complete RNG state.
    pub seed: u64,
    /// Sums of the unfinished epoch, when `step_in_epoch > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
    /// Lowest validation loss so far and the global epoch it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<(f64, usize)>,
    /// Fingerprint of the backbone the parameters belong to.
    pub model_fingerprint: String,
    /// Names of the parameters trained in the current phase (the Adam moments cover these).
    pub trainable: Vec<String>,
    /// xfer version that wrote the checkpoint.
    pub xfer_version: String,
}

impl TrainingState {
    /// Global epochs finished, given the number of epochs of phase 1.
    pub fn global_epochs_done(&self, phase1_epochs: usize) -> usize {
        match self.phase {
            1 => self.epochs_done,
            _ => phase1_epochs + self.epochs_done,
        }
    }
}

/// A training state and its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Where the run stands.
    pub state: TrainingState,
    /// Parameters (`param.NAME`) and Adam moments (`adam_m.NAME`, `adam_v.NAME`).
    pub tensors: TensorMap,
}

impl Checkpoint {
    /// `run_dir/checkpoints/last.safetensors`.
    pub fn last_path(run_dir: &Path) -> PathBuf {
        run_dir.join(CHECKPOINT_DIR).join("last.safetensors")
    }

    /// `run_dir/checkpoints/best.safetensors`.
    pub fn best_path(run_dir: &Path) -> PathBuf {
        run_dir.join(CHECKPOINT_DIR).join("best.safetensors")
    }

    /// `last.optimizer.safetensors` beside `last.safetensors`: where the optimizer state of
    /// the checkpoint saved at `path` goes.
    pub fn optimizer_path(path: &Path) -> PathBuf {
        path.with_extension("optimizer.safetensors")
    }

    /// Encodes the checkpoint (every tensor) as safetensors bytes (state in the metadata).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(&self.state, self.tensors.iter(), None)
    }

    /// Decodes safetensors bytes written by [`Checkpoint::to_bytes`]; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        Ok(decode(bytes, origin)?.0)
    }
}

/// Encodes `tensors` with `state` (and the name of the optimizer file, for a parameter file
/// whose optimizer state is kept apart) in the metadata.
fn encode<'a>(
    state: &TrainingState,
    tensors: impl Iterator<Item = (&'a String, &'a ArrayD<f32>)>,
    optimizer_file: Option<&str>,
) -> Result<Vec<u8>> {
    let state = serde_json::to_string(state).map_err(|e| Error::Checkpoint {
        path: String::new(),
        reason: format!("cannot serialise the training state: {e}"),
    })?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, array) in tensors {
        let mut bytes = Vec::with_capacity(array.len() * 4);
        for v in array.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        buffers.push((name.clone(), array.shape().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view =
            TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| Error::Checkpoint {
                path: String::new(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        views.push((name.as_str(), view));
    }
    let mut metadata = HashMap::from([(STATE_KEY.to_owned(), state)]);
    if let Some(file) = optimizer_file {
        metadata.insert(OPTIMIZER_KEY.to_owned(), file.to_owned());
    }
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Checkpoint {
        path: String::new(),
        reason: e.to_string(),
    })
}

/// Decodes safetensors bytes written by [`encode`]: the checkpoint and the optimizer file its
/// metadata names, if any; `origin` names the bytes in errors.
fn decode(bytes: &[u8], origin: &str) -> Result<(Checkpoint, Option<String>)> {
    let bad = |reason: String| Error::Checkpoint {
        path: origin.to_owned(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let state_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            bad(
                "no xfer training state in its metadata; it was not written by `xfer finetune`"
                    .to_owned(),
            )
        })?;
    let state: TrainingState = serde_json::from_str(state_json)
        .map_err(|e| bad(format!("unreadable training state: {e}")))?;
    let optimizer_file = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(OPTIMIZER_KEY))
        .cloned();
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = TensorMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, array);
    }
    Ok((Checkpoint { state, tensors }, optimizer_file))
}

impl Checkpoint {
    /// Writes the checkpoint to `path`: the optimizer state (`optim.*`) first to
    /// [`Checkpoint::optimizer_path`], then the parameters to `path` naming it, then the state
    /// to `path` with extension `json`; each atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (optimizer, params): (Vec<_>, Vec<_>) = self
            .tensors
            .iter()
            .partition(|(name, _)| name.starts_with(OPTIMIZER_PREFIX));
        let optimizer_path = Self::optimizer_path(path);
        let optimizer_file = if optimizer.is_empty() {
            remove_if_present(&optimizer_path)?;
            None
        } else {
            let bytes = encode(&self.state, optimizer.into_iter(), None)
                .map_err(|e| with_path(e, &optimizer_path))?;
            xfer_fs::write_atomic(&optimizer_path, &bytes)?;
            optimizer_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        };
        let bytes = encode(&self.state, params.into_iter(), optimizer_file.as_deref())
            .map_err(|e| with_path(e, path))?;
        xfer_fs::write_atomic(path, &bytes)?;
        let json = serde_json::to_string_pretty(&self.state).map_err(|e| Error::Checkpoint {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(xfer_fs::write_atomic(
            &path.with_extension("json"),
            json.as_bytes(),
        )?)
    }

    /// Publishes the parameters saved at `from` also as `to` (and its `*.json` state), without
    /// writing them again: a hard link (a copy where the file system has none), swapped in
    /// atomically. The optimizer state stays `from`'s alone: `to` holds no moments. A later
    /// [`Checkpoint::save`] to `from` replaces `from` by a new file, so `to` keeps these bytes.
    pub fn link(from: &Path, to: &Path) -> Result<()> {
        link_atomic(from, to)?;
        link_atomic(&from.with_extension("json"), &to.with_extension("json"))
    }

    /// Reads a checkpoint written by [`Checkpoint::save`]: its parameters and, when the
    /// optimizer file it names is its own (not for `best`, a link to `last`'s parameters),
    /// that file's optimizer state, which must be of the same step.
    pub fn load(path: &Path) -> Result<Self> {
        let (mut checkpoint, optimizer_file) = read_file(path)?;
        let own = Self::optimizer_path(path);
        let owned = optimizer_file.is_some_and(|f| own.file_name() == Some(OsStr::new(&f)));
        if owned {
            let optimizer = load_optimizer(&own, path, &checkpoint.state)?;
            checkpoint.tensors.extend(optimizer.tensors);
        }
        Ok(checkpoint)
    }

    /// The tensor `name`, or an error naming the checkpoint.
    pub fn tensor(&self, name: &str) -> Result<&ArrayD<f32>> {
        self.tensors.get(name).ok_or_else(|| Error::Checkpoint {
            path: String::new(),
            reason: format!("has no tensor `{name}`"),
        })
    }
}

/// Reads one safetensors file of a checkpoint (no optimizer file).
fn read_file(path: &Path) -> Result<(Checkpoint, Option<String>)> {
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            reason: "no such file; a run folder gets its first checkpoint after its first epoch (or at Ctrl-C)"
                .to_owned(),
        });
    }
    let bytes = xfer_fs::read(path)?;
    decode(&bytes, &path.display().to_string())
}

/// The optimizer state of the parameter file `params` (whose state is `state`) from `path`;
/// an error saying what is wrong with it, and that the parameters themselves are intact.
fn load_optimizer(path: &Path, params: &Path, state: &TrainingState) -> Result<Checkpoint> {
    let broken = |why: String| Error::Checkpoint {
        path: path.display().to_string(),
        reason: format!(
            "{why}; {} holds intact parameters, but a bitwise resume needs Adam's moments of the same step (best.safetensors keeps none, so a resume from it restarts them)",
            params.display()
        ),
    };
    let (optimizer, _) = read_file(path).map_err(|e| broken(format!("cannot be read ({e})")))?;
    if optimizer.state != *state {
        return Err(broken(format!(
            "holds the optimizer state of global step {}, not {}",
            optimizer.state.global_step, state.global_step
        )));
    }
    Ok(optimizer)
}

/// Removes `path` unless it does not exist.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            op: "removing",
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes `to` a hard link to `from` (a copy when linking fails), replacing `to` atomically.
fn link_atomic(from: &Path, to: &Path) -> Result<()> {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = to.with_file_name(format!(
        ".{}.link-{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let io = |op: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { op, path, source }
    };
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).map_err(io("copying", from))?;
    }
    std::fs::rename(&tmp, to).map_err(io("renaming", &tmp))
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Checkpoint { reason, .. } => Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut tensors = TensorMap::new();
        tensors.insert(
            "param.head.kernel".to_owned(),
            ArrayD::from_shape_vec(IxDyn(&[3, 1]), vec![0.5, -1.25, f32::MIN_POSITIVE])
                .expect("shape"),
        );
        tensors.insert(
            "adam_m.head.bias".to_owned(),
            ArrayD::from_elem(IxDyn(&[1]), 1e-9),
        );
        Checkpoint {
            state: TrainingState {
                phase: 2,
                epochs_done: 1,
                step_in_epoch: 3,
                global_step: 17,
                optimizer_step: 5,
                seed: 42,
                partial: Some(PartialEpoch {
                    loss_sum: 1.5,
                    correct: 4,
                    seen: 6,
                    seconds: 0.25,
                    skipped: vec!["cat/broken.png".to_owned()],
                }),
                best: Some((0.3, 2)),
                model_fingerprint: "abc".to_owned(),
                trainable: vec!["head.kernel".to_owned()],
                xfer_version: "0".to_owned(),
            },
            tensors,
        }
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Checkpoint::last_path(dir.path());
        let ckpt = sample();
        ckpt.save(&path).expect("save");
        let back = Checkpoint::load(&path).expect("load");
        assert_eq!(back, ckpt);
        assert!(path.with_extension("json").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn foreign_or_broken_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"garbage").expect("write");
        let err = Checkpoint::load(&path).expect_err("garbage");
        assert!(err.to_string().contains("not a safetensors file"), "{err}");
        let plain = safetensors::tensor::serialize(
            [(
                "a",
                TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).expect("view"),
            )],
            None,
        )
        .expect("serialize");
        std::fs::write(&path, plain).expect("write");
        let err = Checkpoint::load(&path).expect_err("no state");
        assert!(err.to_string().contains("xfer finetune"), "{err}");
        let err = Checkpoint::load(&dir.path().join("missing.safetensors")).expect_err("missing");
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    /// 1000 values from `seed`.
    fn values(seed: f32) -> ArrayD<f32> {
        ArrayD::from_shape_vec(
            IxDyn(&[1000]),
            (0..1000).map(|i| seed * (i as f32).sin() * 1e-3).collect(),
        )
        .expect("shape")
    }

    /// [`sample`] with a 1000-value backbone parameter and its two Adam moments.
    fn sample_with_moments() -> Checkpoint {
        let mut ckpt = sample();
        ckpt.tensors
            .insert("param.backbone.w".to_owned(), values(1.0));
        ckpt.tensors
            .insert("optim.m.backbone.w".to_owned(), values(2.0));
        ckpt.tensors
            .insert("optim.v.backbone.w".to_owned(), values(3.0));
        ckpt
    }

    /// Each tensor's name and the bits of its values.
    fn bits(c: &Checkpoint) -> Vec<(String, Vec<u32>)> {
        c.tensors
            .iter()
            .map(|(n, a)| (n.clone(), a.iter().map(|v| v.to_bits()).collect()))
            .collect()
    }

    /// Issue 17 defect 5: `best` is a link to `last`'s parameters only (no Adam moments, about
    /// a third of the bytes), while `last` still resumes bit for bit.
    #[test]
    fn best_links_the_parameters_only_and_last_keeps_the_moments_bit_for_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = Checkpoint::last_path(dir.path());
        let best = Checkpoint::best_path(dir.path());
        std::fs::create_dir_all(last.parent().expect("dir")).expect("mkdir");
        let ckpt = sample_with_moments();
        ckpt.save(&last).expect("save");
        Checkpoint::link(&last, &best).expect("link");

        let back = Checkpoint::load(&last).expect("load last");
        assert_eq!(bits(&back), bits(&ckpt), "last resumes bit for bit");
        assert_eq!(back.state, ckpt.state);

        let linked = Checkpoint::load(&best).expect("load best");
        assert!(
            linked.tensors.keys().all(|n| !n.starts_with("optim.")),
            "best holds no moments: {:?}",
            linked.tensors.keys().collect::<Vec<_>>()
        );
        let params_only = Checkpoint {
            state: ckpt.state.clone(),
            tensors: ckpt
                .tensors
                .iter()
                .filter(|(n, _)| !n.starts_with("optim."))
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect(),
        };
        assert_eq!(linked.tensors, params_only.tensors);
        let best_len = std::fs::metadata(&best).expect("stat").len();
        let params_len = params_only.to_bytes().expect("bytes").len() as u64;
        let full_len = ckpt.to_bytes().expect("bytes").len() as u64;
        assert!(
            best_len <= params_len + 128 && best_len * 2 < full_len,
            "best {best_len} bytes, parameters alone {params_len}, with moments {full_len}"
        );

        // A later epoch replaces last; best keeps its epoch's parameters.
        let mut later = ckpt.clone();
        later.state.global_step += 2;
        later
            .tensors
            .insert("param.backbone.w".to_owned(), values(5.0));
        later.save(&last).expect("save later");
        let linked_again = Checkpoint::load(&best).expect("best after a later save");
        assert_eq!(linked_again.tensors, params_only.tensors);
        assert_eq!(bits(&Checkpoint::load(&last).expect("last")), bits(&later));
    }

    /// A damaged or mismatched `last.optimizer.safetensors` makes `last` a clear error.
    #[test]
    fn a_truncated_or_foreign_optimizer_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = Checkpoint::last_path(dir.path());
        std::fs::create_dir_all(last.parent().expect("dir")).expect("mkdir");
        let ckpt = sample_with_moments();
        ckpt.save(&last).expect("save");

        // A truncated optimizer file: last is refused, saying why and what best holds.
        let optimizer = Checkpoint::optimizer_path(&last);
        let bytes = std::fs::read(&optimizer).expect("read");
        std::fs::write(&optimizer, &bytes[..bytes.len() / 2]).expect("truncate");
        let err = Checkpoint::load(&last)
            .expect_err("moments damaged")
            .to_string();
        assert!(
            err.contains("last.optimizer.safetensors")
                && err.contains("intact parameters")
                && err.contains("best.safetensors keeps none"),
            "{err}"
        );
        // An optimizer file of another step (a crash between the two renames) is refused too.
        ckpt.save(&last).expect("save");
        let mut other_step = ckpt.clone();
        other_step.state.global_step += 1;
        other_step
            .save(&dir.path().join("other.safetensors"))
            .expect("save other");
        std::fs::copy(dir.path().join("other.optimizer.safetensors"), &optimizer).expect("copy");
        let err = Checkpoint::load(&last)
            .expect_err("another step")
            .to_string();
        assert!(err.contains("global step 18, not 17"), "{err}");
    }
}
