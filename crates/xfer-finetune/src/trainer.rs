//! The two-phase training loop on the training graphs of `xfer-autodiff`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use xfer_autodiff::{
    Adam, CpuKernelChoice, GraphSpec, HeadSpec, Loss, Optimizer, Parameter, Trainable,
    TrainingGraphBuilder, TrainingGraphs,
};
use xfer_data::{
    Augmentation, Batch, BatchLoader, CacheStats, Dataset, Example, FillMode, LoaderConfig,
    OnError, ResizedImageCache,
};
use xfer_head::argmax;
use xfer_onnx::ModelProto;
use xfer_runtime::{InputTensor, Model, ModelManifest, OutputTensor, SessionOptions};

use crate::checkpoint::{Checkpoint, PartialEpoch, TensorMap, TrainingState};
use crate::device_loop::{DeviceLoop, Residence};
use crate::export::{ExportInfo, HEAD_BIAS, HEAD_KERNEL, export_model};
use crate::{
    AugmentationConfig, EpochRecord, Error, ExportChoice, FinetuneConfig, MetricsLog, PhaseConfig,
    Result, draw_curves, epoch_permutation,
};

/// File name of the exported model inside a run folder.
pub const EXPORTED_MODEL: &str = "model.onnx";

/// File name of the exported model's test predictions inside a run folder (one JSON line per
/// image, as `xfer evaluate --predictions` writes them).
pub const TEST_PREDICTIONS: &str = xfer_head::TEST_PREDICTIONS;

/// The epoch whose parameters `model.onnx` holds (`exported` in `metrics.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportedEpoch {
    /// What `--export` asked for.
    pub choice: ExportChoice,
    /// Epoch over both phases, from 1.
    pub global_epoch: usize,
    /// Phase of that epoch (1 or 2).
    pub phase: u8,
    /// Its validation loss.
    pub val_loss: f64,
}

/// Default [`RunOptions::cache_bytes`]: 2 GiB (about 7 900 images at 150×150).
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

/// How to run (not part of the saved configuration: it does not change the results,
/// except `session.intra_threads`, which changes float summation order).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder (`runs/NAME`).
    pub run_dir: PathBuf,
    /// Continue from `run_dir/checkpoints/last.safetensors`.
    pub resume: bool,
    /// ONNX Runtime options of the training and evaluation sessions.
    pub session: SessionOptions,
    /// Decoder threads (`None`: all cores).
    pub loader_threads: Option<usize>,
    /// Memory for resized training and validation images kept across epochs, in bytes of
    /// pixel data (3 × height × width × 4 per image; split between the two sets in
    /// proportion to their sizes), so that after the first epoch only the augmentation
    /// runs; images beyond it are decoded every epoch as without a cache. 0 disables it.
    /// Results are bit-identical either way.
    pub cache_bytes: u64,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Where parameters, gradients and optimizer state live between steps (default: on the
    /// device for a GPU session). Results are the same.
    pub residence: Residence,
    /// The kernels of the training graph's depthwise convolutions (default
    /// [`CpuKernelChoice::Portable`], standard ONNX; [`CpuKernelChoice::Auto`] and
    /// [`CpuKernelChoice::Nchwc`] use ONNX Runtime's NCHWc kernels on the CPU provider when the
    /// probe finds their block: a 4 % faster step for 0.3 GB more peak memory on Xception at
    /// batch 32). The parameters, checkpoints and
    /// results are the same up to float rounding (each depthwise Conv within 2e-7 relative),
    /// so a run may resume under another choice.
    pub cpu_kernels: CpuKernelChoice,
}

impl RunOptions {
    /// Options for `run_dir` with defaults: no resume, CPU, a 2 GiB image cache, a fresh stop flag.
    pub fn new(run_dir: &Path) -> Self {
        RunOptions {
            run_dir: run_dir.to_path_buf(),
            resume: false,
            session: SessionOptions::default(),
            loader_threads: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            stop: Arc::new(AtomicBool::new(false)),
            residence: Residence::Auto,
            cpu_kernels: CpuKernelChoice::Portable,
        }
    }
}

/// Progress reported while a run goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The data is split and the model loaded.
    Started {
        /// Class names.
        classes: &'a [String],
        /// Training examples.
        train: usize,
        /// Validation examples.
        val: usize,
        /// Test examples.
        test: usize,
    },
    /// A phase begins (its graphs and sessions are built).
    PhaseStarted {
        /// 1 or 2.
        phase: u8,
        /// Epochs of the phase.
        epochs: usize,
        /// Number of trainable parameter tensors.
        trainable_tensors: usize,
        /// Number of trainable values.
        trainable_values: usize,
        /// Whether parameters, gradients and optimizer state stay on the device between
        /// steps ([`RunOptions::residence`]).
        state_on_device: bool,
    },
    /// An epoch begins.
    EpochStarted {
        /// 1 or 2.
        phase: u8,
        /// Epoch within the phase, from 1.
        epoch: usize,
        /// Batches of the epoch.
        batches: usize,
        /// Batches already done (resumed mid-epoch).
        done: usize,
    },
    /// One optimizer step is done.
    Step {
        /// Batch index within the epoch, from 1.
        batch: usize,
        /// Mean loss of the batch.
        loss: f32,
    },
    /// Validation of the epoch begins.
    Validating,
    /// An epoch is done (logged, plotted and checkpointed).
    EpochFinished(&'a EpochRecord),
    /// The exported model is written.
    Exported(&'a Path),
}

/// How a run ended.
// Returned once per run: the size of the `Finished` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// Both phases ran; the model is exported.
    Finished(Summary),
    /// The stop flag was set; a checkpoint was written and `--resume` continues.
    Interrupted {
        /// The checkpoint written.
        checkpoint: PathBuf,
        /// Phase, epoch within the phase (from 1) and batches done in it.
        phase: u8,
        /// The epoch a resume continues (within the phase, from 1): the one interrupted, or
        /// at an epoch boundary the next one, with 0 batches done.
        epoch: usize,
        /// Batches done of that epoch.
        step_in_epoch: usize,
    },
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Summary {
    /// The exported model.
    pub model: PathBuf,
    /// Test-split metrics of the exported model (`None` without a test split).
    pub test: Option<xfer_head::Metrics>,
    /// Lowest validation loss and the global epoch it came from.
    pub best: Option<(f64, usize)>,
    /// The epoch `model` holds.
    pub exported: ExportedEpoch,
    /// Validation sessions this process built: one per phase it trained.
    pub eval_sessions: usize,
    /// Every epoch of the run.
    pub epochs: Vec<EpochRecord>,
    /// The training images' cache over this process's epochs (`None`: cache disabled).
    pub train_cache: Option<CacheStats>,
    /// The validation images' cache over this process's epochs (`None`: cache disabled).
    pub val_cache: Option<CacheStats>,
    /// The images skipped as unreadable, per split.
    pub skipped: SkippedImages,
}

/// Ids of the images a run skipped as unreadable, per split (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SkippedImages {
    /// Training images (over every epoch of the run).
    pub train: Vec<String>,
    /// Validation images.
    pub val: Vec<String>,
    /// Test images.
    pub test: Vec<String>,
}

impl SkippedImages {
    /// No image was skipped.
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.val.is_empty() && self.test.is_empty()
    }

    /// The training and validation images skipped in any of `epochs`.
    fn of_epochs(epochs: &[EpochRecord]) -> Self {
        let union = |ids: &mut dyn Iterator<Item = &String>| -> Vec<String> {
            let set: std::collections::BTreeSet<&String> = ids.collect();
            set.into_iter().cloned().collect()
        };
        SkippedImages {
            train: union(&mut epochs.iter().flat_map(|r| &r.skipped_train)),
            val: union(&mut epochs.iter().flat_map(|r| &r.skipped_val)),
            test: Vec::new(),
        }
    }
}

/// Everything fixed for the whole run.
struct Setup {
    /// Where the forward graph is read from, each time it is needed (`Setup::forward`): a
    /// copy held for the whole run would be one more copy of every weight.
    forward_path: PathBuf,
    manifest: ModelManifest,
    classes: Vec<String>,
    train: Vec<Example>,
    val: Vec<Example>,
    test: Vec<Example>,
    size: [u32; 2],
    head: HeadSpec,
    loss: Loss,
}

/// The resized-image caches of a run: one for the training examples (all epochs of both
/// phases), one for the validation examples; `None` when disabled.
struct Caches {
    train: Option<Arc<ResizedImageCache>>,
    val: Option<Arc<ResizedImageCache>>,
}

impl Caches {
    /// Splits `bytes` between the training and validation caches in proportion to their
    /// example counts; 0 disables both.
    fn new(setup: &Setup, bytes: u64) -> Caches {
        if bytes == 0 {
            return Caches {
                train: None,
                val: None,
            };
        }
        let (train, val) = (setup.train.len() as u128, setup.val.len() as u128);
        let train_bytes = u64::try_from(u128::from(bytes) * train / (train + val).max(1))
            .unwrap_or(bytes)
            .min(bytes);
        // Every loader of the run (`loader_config`) keeps `LoaderConfig::new`'s
        // resize method and JPEG scaling.
        let resize = LoaderConfig::new(setup.size[0], setup.size[1], 1);
        let make = |capacity| Some(Arc::new(ResizedImageCache::for_config(&resize, capacity)));
        Caches {
            train: make(train_bytes),
            val: make(bytes - train_bytes),
        }
    }

    fn stats(cache: Option<&Arc<ResizedImageCache>>) -> Option<CacheStats> {
        cache.map(|c| c.stats())
    }

    fn describe(&self) -> String {
        match (
            Self::stats(self.train.as_ref()),
            Self::stats(self.val.as_ref()),
        ) {
            (Some(t), Some(v)) => format!("train {t}; val {v}"),
            _ => "disabled".to_owned(),
        }
    }
}

/// Runs (or resumes) a fine-tuning run. See the crate documentation for the files it writes.
pub fn finetune(
    config: &FinetuneConfig,
    options: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome> {
    config.validate()?;
    // Every setting is checked against the model and the data before any work or file.
    let setup = prepare(config)?;
    let resumed = open_run(config, options)?;
    config.save(&options.run_dir)?;
    let caches = Caches::new(&setup, cache_bytes(config, options));
    on_event(Event::Started {
        classes: &setup.classes,
        train: setup.train.len(),
        val: setup.val.len(),
        test: setup.test.len(),
    });
    let mut run = Run::start(config, options, &setup, &caches, resumed)?;
    for phase in [1u8, 2] {
        if let Some(interrupted) = run.phase(phase, on_event)? {
            return Ok(interrupted);
        }
    }
    run.export_and_test(on_event)
}

/// The image cache's budget: none when the run has at most one epoch, which reads every
/// training and validation image once (the cache would only hold memory; results are the same).
fn cache_bytes(config: &FinetuneConfig, options: &RunOptions) -> u64 {
    if config.phase1.epochs + config.phase2.epochs <= 1 {
        tracing::debug!("one epoch: no image cache (every image is read once)");
        return 0;
    }
    options.cache_bytes
}

/// The checkpoint to continue from (`--resume` of a run that has one), else `None`.
/// A fresh run refuses a folder that already holds one; a resumed run refuses a
/// configuration that differs from the saved one where it matters.
fn open_run(config: &FinetuneConfig, options: &RunOptions) -> Result<Option<Checkpoint>> {
    let run_dir = &options.run_dir;
    let last_path = Checkpoint::last_path(run_dir);
    if !options.resume {
        if last_path.exists() {
            return Err(Error::Config {
                path: None,
                reason: format!(
                    "{} already holds a run (checkpoints/last.safetensors); pass --resume to continue it or choose another --out",
                    run_dir.display()
                ),
            });
        }
        return Ok(None);
    }
    let resumed = if last_path.is_file() {
        Some(resume_checkpoint(run_dir)?)
    } else {
        tracing::warn!(
            "--resume: {} has no checkpoint yet; starting from the beginning",
            run_dir.display()
        );
        None
    };
    let saved_path = run_dir.join(crate::CONFIG_FILE_NAME);
    if saved_path.is_file() {
        let phase2_started = resumed.as_ref().is_some_and(|c| c.state.phase >= 2);
        config.check_resumable_from(&FinetuneConfig::read(&saved_path)?, phase2_started)?;
    }
    Ok(resumed)
}

/// The checkpoint a resume continues from: `last.safetensors`, or, when that cannot be
/// read (a damaged file), `best.safetensors` with a warning; the epochs after it are redone.
fn resume_checkpoint(run_dir: &Path) -> Result<Checkpoint> {
    let last = Checkpoint::last_path(run_dir);
    let last_error = match Checkpoint::load(&last) {
        Ok(checkpoint) => return Ok(checkpoint),
        Err(e) => e,
    };
    let best = Checkpoint::best_path(run_dir);
    match Checkpoint::load(&best) {
        Ok(checkpoint) => {
            tracing::warn!(
                "{last_error}; resuming from {} (phase {}, epoch {}) and redoing the epochs after it; it keeps the parameters only, so Adam's moments restart and the run is not bitwise the uninterrupted one",
                best.display(),
                checkpoint.state.phase,
                checkpoint.state.epochs_done
            );
            Ok(checkpoint)
        }
        Err(best_error) => Err(Error::Checkpoint {
            path: last.display().to_string(),
            reason: format!(
                "cannot be read ({last_error}), and neither can best.safetensors ({best_error}); \
                 start a new run folder"
            ),
        }),
    }
}

/// A run across its phases: where it stands, its log and what it trained so far.
struct Run<'a> {
    config: &'a FinetuneConfig,
    options: &'a RunOptions,
    setup: &'a Setup,
    caches: &'a Caches,
    state: TrainingState,
    log: MetricsLog,
    /// Every parameter trained so far (head, then backbone), by name.
    trained: BTreeMap<String, Parameter>,
    /// Adam's moments from the checkpoint, for the phase it was written in.
    optimizer_state: Vec<Parameter>,
    /// Validation sessions built so far.
    eval_sessions: usize,
}

impl<'a> Run<'a> {
    /// A fresh run, or the run `resumed` continues (checked to belong to the same model).
    fn start(
        config: &'a FinetuneConfig,
        options: &'a RunOptions,
        setup: &'a Setup,
        caches: &'a Caches,
        resumed: Option<Checkpoint>,
    ) -> Result<Self> {
        let state = match &resumed {
            Some(c) => {
                check_same_model(c, config, setup, &options.run_dir)?;
                c.state.clone()
            }
            None => TrainingState {
                phase: 1,
                epochs_done: 0,
                step_in_epoch: 0,
                global_step: 0,
                optimizer_step: 0,
                seed: config.seed,
                partial: None,
                best: None,
                model_fingerprint: setup.manifest.fingerprint.clone(),
                trainable: Vec::new(),
                xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        };
        let log = match &resumed {
            Some(_) => MetricsLog::resume(
                &options.run_dir,
                state.global_epochs_done(config.phase1.epochs),
            )?,
            None => MetricsLog::create(&options.run_dir)?,
        };
        let (trained, optimizer_state) = resumed.as_ref().map(restored_tensors).unwrap_or_default();
        Ok(Run {
            config,
            options,
            setup,
            caches,
            state,
            log,
            trained,
            optimizer_state,
            eval_sessions: 0,
        })
    }

    fn last_path(&self) -> PathBuf {
        Checkpoint::last_path(&self.options.run_dir)
    }

    /// Runs what is left of `phase`; `Some` when the stop flag interrupted it.
    fn phase(&mut self, phase: u8, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Option<Outcome>> {
        let phase_config = match phase {
            1 => &self.config.phase1,
            _ => &self.config.phase2,
        };
        if !self.enter_phase(phase, phase_config) {
            return Ok(None);
        }
        if self.options.stop.load(Ordering::SeqCst) {
            return Ok(Some(Outcome::Interrupted {
                checkpoint: self.last_path(),
                phase,
                epoch: self.state.epochs_done + 1,
                step_in_epoch: self.state.step_in_epoch,
            }));
        }
        let graphs = self.graphs(phase)?;
        let (session, eval) = self.sessions(phase, &graphs)?;
        // The sessions hold what they need: the graphs' own copies of the weights go now.
        let TrainingGraphs { spec, params, .. } = graphs;
        let params = self.initial_params(phase, params)?;
        let mut adam = Adam::new(phase_config.learning_rate);
        if !self.optimizer_state.is_empty() {
            adam.load_state(&params, &self.optimizer_state)?;
        }
        let device = DeviceLoop::for_phase(
            self.options.residence,
            &session,
            &self.options.session,
            &params,
            &adam,
        )?;
        on_event(Event::PhaseStarted {
            phase,
            epochs: phase_config.epochs,
            trainable_tensors: params.len(),
            trainable_values: params.iter().map(Parameter::numel).sum(),
            state_on_device: device.is_some(),
        });
        let mut run = PhaseRun {
            config: self.config,
            options: self.options,
            setup: self.setup,
            spec,
            phase,
            learning_rate: phase_config.learning_rate,
            caches: self.caches,
            session,
            eval,
            params,
            adam,
            device,
        };
        if let Some(interrupted) = self.epochs(&mut run, phase_config.epochs, on_event)? {
            return Ok(Some(interrupted));
        }
        for p in run.params {
            self.trained.insert(p.name.clone(), p);
        }
        self.optimizer_state.clear();
        Ok(None)
    }

    /// The phase's training session and its one validation session (every epoch feeds the
    /// latter the current parameters). Both use [`SessionOptions::low_memory`]: one shared
    /// CPU arena that grows by exactly what is asked and no memory pattern, since they run the
    /// same large graph many times, where a doubling arena and the pattern only hold memory
    /// (phase 2 at batch 32: 7.1 GB peak with ONNX Runtime's defaults).
    fn sessions(&mut self, phase: u8, graphs: &TrainingGraphs) -> Result<(Model, Model)> {
        let options = self.options.session.low_memory();
        let session = Model::from_bytes(
            &xfer_onnx::write_model_bytes(&graphs.training),
            &format!("training graph (phase {phase})"),
            &options,
        )?;
        let eval = Model::from_bytes(
            &xfer_onnx::write_model_bytes(&graphs.eval_fed()?),
            &format!("eval graph (phase {phase})"),
            &options,
        )?;
        self.eval_sessions += 1;
        Ok((session, eval))
    }

    /// Moves the state to `phase` (a new phase starts at epoch 0 with a fresh optimizer);
    /// `false` when the phase is already done or has no epochs.
    fn enter_phase(&mut self, phase: u8, phase_config: &PhaseConfig) -> bool {
        if self.state.phase > phase || phase_config.epochs == 0 {
            return false;
        }
        if self.state.phase < phase {
            self.state.phase = phase;
            self.state.epochs_done = 0;
            self.state.step_in_epoch = 0;
            self.state.optimizer_step = 0;
            self.state.partial = None;
            self.optimizer_state.clear();
        }
        self.state.epochs_done < phase_config.epochs
    }

    /// The training graphs of `phase`: the head only in phase 1, the backbone from
    /// `unfreeze_from` (or all of it) too in phase 2.
    fn graphs(&self, phase: u8) -> Result<TrainingGraphs> {
        let trainable = match (phase, &self.config.unfreeze_from) {
            (1, _) => Trainable::Head,
            (_, None) => Trainable::All,
            (_, Some(layer)) => Trainable::From(layer.clone()),
        };
        let setup = self.setup;
        Ok(TrainingGraphBuilder::new(setup.forward()?)
            .features(&setup.manifest.output)
            .head(setup.head.clone())
            .trainable(trainable)
            .loss(setup.loss)
            .example_shape(&[3, i64::from(setup.size[0]), i64::from(setup.size[1])])
            .seed(self.config.seed)
            .session_options(self.options.session.clone())
            .cpu_kernels(self.options.cpu_kernels.resolve(&self.options.session)?)
            .build()?)
    }

    /// The trainable parameters `params` (a phase's graphs' initial values) with the values
    /// trained so far (or, at the start of phase 1, the `--init-head` head's); they become the
    /// phase's trainables, owned by the phase until it ends (no second copy in `trained`).
    fn initial_params(&mut self, phase: u8, mut params: Vec<Parameter>) -> Result<Vec<Parameter>> {
        if self.trained.is_empty()
            && phase == 1
            && let Some(dir) = &self.config.init_head
        {
            init_head_from(dir, self.setup, &mut params)?;
        }
        for p in &mut params {
            if let Some(t) = self.trained.get(&p.name) {
                if t.data.len() != p.data.len() {
                    return Err(Error::Checkpoint {
                        path: self.last_path().display().to_string(),
                        reason: format!(
                            "parameter `{}` has {} values, the model needs {}",
                            p.name,
                            t.data.len(),
                            p.data.len()
                        ),
                    });
                }
                p.data.clone_from(&t.data);
            }
        }
        for p in &params {
            self.trained.remove(&p.name);
        }
        self.state.trainable = params.iter().map(|p| p.name.clone()).collect();
        Ok(params)
    }

    /// Runs the phase's remaining epochs; `Some` when the stop flag interrupted them.
    fn epochs(
        &mut self,
        run: &mut PhaseRun<'_>,
        epochs: usize,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Outcome>> {
        while self.state.epochs_done < epochs {
            if let EpochEnd::Interrupted = run.epoch(&mut self.state, &mut self.log, on_event)? {
                return Ok(Some(Outcome::Interrupted {
                    checkpoint: self.last_path(),
                    phase: run.phase,
                    epoch: self.state.epochs_done + 1,
                    step_in_epoch: self.state.step_in_epoch,
                }));
            }
            if self.options.stop.load(Ordering::SeqCst) && self.state.epochs_done < epochs {
                // At an epoch boundary: the next epoch, not started (the finished one is saved).
                return Ok(Some(Outcome::Interrupted {
                    checkpoint: self.last_path(),
                    phase: run.phase,
                    epoch: self.state.epochs_done + 1,
                    step_in_epoch: 0,
                }));
            }
        }
        Ok(None)
    }

    /// The epoch `--export` chooses and its parameters: the last epoch's (trained so far),
    /// or those of `checkpoints/best.safetensors` when an earlier epoch had a lower
    /// validation loss. The checkpoint holds the parameters its phase trained; the others
    /// are the model's own, as they were in that epoch.
    fn export_params(&self) -> Result<(ExportedEpoch, BTreeMap<String, Parameter>)> {
        let records = self.log.records();
        let last = records.last().ok_or_else(|| Error::Model {
            reason: "no epoch was trained: nothing to export".to_owned(),
        })?;
        let chosen = match (self.config.export, self.state.best) {
            (ExportChoice::Best, Some((_, epoch))) => records
                .iter()
                .find(|r| r.global_epoch == epoch)
                .unwrap_or(last),
            _ => last,
        };
        let exported = ExportedEpoch {
            choice: self.config.export,
            global_epoch: chosen.global_epoch,
            phase: chosen.phase,
            val_loss: chosen.val_loss,
        };
        if chosen.global_epoch == last.global_epoch {
            return Ok((exported, self.trained.clone()));
        }
        let path = Checkpoint::best_path(&self.options.run_dir);
        let best = Checkpoint::load(&path)?;
        let epoch = best.state.global_epochs_done(self.config.phase1.epochs);
        if epoch != chosen.global_epoch {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                reason: format!(
                    "holds epoch {epoch}, but the run's best epoch is {}; export with --export last",
                    chosen.global_epoch
                ),
            });
        }
        Ok((exported, checkpoint_parameters(&best)))
    }

    /// Exports the chosen epoch's model, measures it on the test split and sums the run up.
    fn export_and_test(self, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Outcome> {
        let setup = self.setup;
        let info = ExportInfo {
            input: setup.manifest.input.clone(),
            features: setup.manifest.output.clone(),
            classes: setup.classes.clone(),
            image_size: setup.size,
            value_range: setup.manifest.value_range,
            backbone_name: setup.manifest.name.clone(),
            fingerprint: setup.manifest.fingerprint.clone(),
        };
        let (epoch, params) = self.export_params()?;
        let exported = export_model(&setup.forward()?, &params, &info)?;
        let model_path = self.options.run_dir.join(EXPORTED_MODEL);
        xfer_onnx::write_model(&exported, &model_path)?;
        on_event(Event::Exported(&model_path));
        let mut skipped = SkippedImages::of_epochs(self.log.records());
        let test = if setup.test.is_empty() {
            None
        } else {
            let (metrics, skipped_test) = self.test(&exported, &model_path, &info.input)?;
            skipped.test = skipped_test;
            Some(metrics)
        };
        save_run_metrics(&self.options.run_dir, test.as_ref(), &epoch, &skipped)?;
        tracing::info!(
            "image cache at the end of the run: {}",
            self.caches.describe()
        );
        Ok(Outcome::Finished(Summary {
            model: model_path,
            test,
            best: self.state.best,
            exported: epoch,
            eval_sessions: self.eval_sessions,
            epochs: self.log.records().to_vec(),
            train_cache: Caches::stats(self.caches.train.as_ref()),
            val_cache: Caches::stats(self.caches.val.as_ref()),
            skipped,
        }))
    }

    /// Test-split metrics of the exported model and the test images skipped as unreadable;
    /// its predictions are saved to the run folder.
    fn test(
        &self,
        exported: &ModelProto,
        model_path: &Path,
        input: &str,
    ) -> Result<(xfer_head::Metrics, Vec<String>)> {
        let bytes = xfer_onnx::write_model_bytes(exported);
        let mut model = Model::from_bytes(
            &bytes,
            &model_path.display().to_string(),
            &self.options.session.low_memory(),
        )?;
        // Test images are predicted once: caching them would only take memory.
        let loader = loader_config(self.config, self.options, self.setup, None);
        let (probs, examples, skipped) = predict(
            &mut model,
            input,
            &[],
            xfer_head::PROBABILITIES_OUTPUT,
            &self.setup.test,
            loader,
        )?;
        let labels = labels_of(&examples);
        let metrics = xfer_head::Metrics::compute(probs.view(), &labels, &self.setup.classes)?;
        let evaluation = xfer_head::Evaluation {
            ids: examples.into_iter().map(|e| e.id).collect(),
            labels,
            probabilities: probs,
            classes: self.setup.classes.clone(),
            metrics,
            // the run counts the images it skips itself
            load: Default::default(),
        };
        evaluation.write_predictions(&self.options.run_dir.join(TEST_PREDICTIONS))?;
        Ok((evaluation.metrics, skipped))
    }
}

/// `metrics.json` of a fine-tuning run: the exported model's test metrics and which epoch it is.
fn save_run_metrics(
    run_dir: &Path,
    test: Option<&xfer_head::Metrics>,
    exported: &ExportedEpoch,
    skipped: &SkippedImages,
) -> Result<()> {
    #[derive(serde::Serialize)]
    struct RunMetrics<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        test: Option<&'a xfer_head::Metrics>,
        exported: &'a ExportedEpoch,
        #[serde(skip_serializing_if = "SkippedImages::is_empty")]
        skipped: &'a SkippedImages,
    }
    let path = run_dir.join(xfer_head::METRICS_JSON);
    let json = serde_json::to_string_pretty(&RunMetrics {
        test,
        exported,
        skipped,
    })
    .map_err(|e| Error::Metrics {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(xfer_fs::write_atomic(&path, json.as_bytes())?)
}

/// The labels of `examples`, as the metrics take them.
fn labels_of(examples: &[Example]) -> Vec<i32> {
    examples.iter().map(|e| e.label as i32).collect()
}

/// Refuses a checkpoint written for another backbone.
fn check_same_model(
    checkpoint: &Checkpoint,
    config: &FinetuneConfig,
    setup: &Setup,
    run_dir: &Path,
) -> Result<()> {
    if checkpoint.state.model_fingerprint == setup.manifest.fingerprint {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: Checkpoint::last_path(run_dir).display().to_string(),
        reason: format!(
            "was written for model {} but {} is model {}; resume with the same model",
            checkpoint.state.model_fingerprint,
            config.model.display(),
            setup.manifest.fingerprint
        ),
    })
}

/// The trained parameters (`param.*`) and Adam's moments (`optim.*`) of a checkpoint.
fn restored_tensors(checkpoint: &Checkpoint) -> (BTreeMap<String, Parameter>, Vec<Parameter>) {
    let mut trained = BTreeMap::new();
    let mut optimizer_state = Vec::new();
    for (name, array) in &checkpoint.tensors {
        if let Some(p) = name.strip_prefix("param.") {
            trained.insert(p.to_owned(), to_parameter(p, array));
        } else if let Some(s) = name.strip_prefix("optim.") {
            optimizer_state.push(to_parameter(s, array));
        }
    }
    (trained, optimizer_state)
}

fn prepare(config: &FinetuneConfig) -> Result<Setup> {
    let manifest = ModelManifest::read(&config.model)?;
    let forward_path = training_graph_path(config, &manifest);
    let forward = xfer_onnx::read_model(&forward_path)?;
    let dataset = Dataset::open(&config.data)?;
    let classes = dataset.classes().to_vec();
    if classes.len() < 2 {
        return Err(Error::Config {
            path: None,
            reason: format!(
                "{} has {} class(es); a classifier needs at least 2 (one subfolder per class)",
                config.data.display(),
                classes.len()
            ),
        });
    }
    if let Some(layer) = config
        .unfreeze_from
        .as_ref()
        .filter(|_| config.phase2.epochs > 0)
    {
        xfer_autodiff::check_trainable(&forward, &Trainable::From(layer.clone()))?;
    }
    let [train, val, test] = take_splits(config, &dataset)?;
    let size = config.image_size.unwrap_or(manifest.image_size);
    let (head, loss) = head_and_loss(classes.len(), config.dropout);
    Ok(Setup {
        forward_path,
        manifest,
        classes,
        train,
        val,
        test,
        size,
        head,
        loss,
    })
}

/// The model's training graph (`training_onnx`), else its inference graph.
fn training_graph_path(config: &FinetuneConfig, manifest: &ModelManifest) -> PathBuf {
    match manifest.training_onnx_path(&config.model) {
        Some(p) => p,
        None => {
            tracing::warn!(
                "{} names no training graph (training_onnx); training on the inference graph {}, whose BatchNorm is folded",
                config.model.display(),
                manifest.onnx
            );
            manifest.onnx_path(&config.model)
        }
    }
}

impl Setup {
    /// The forward graph, read from its file.
    fn forward(&self) -> Result<ModelProto> {
        Ok(xfer_onnx::read_model(&self.forward_path)?)
    }
}

/// The train, val and test examples; train and val must not be empty.
fn take_splits(config: &FinetuneConfig, dataset: &Dataset) -> Result<[Vec<Example>; 3]> {
    // One assignment: splits that share images are refused (test images never train).
    let mut selected = config
        .splits
        .assignment()?
        .select(dataset.examples(), config.seed)?;
    let mut take = |name: &str| -> Vec<Example> {
        selected
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, examples)| std::mem::take(examples))
            .unwrap_or_default()
    };
    let (train, val, test) = (take("train"), take("val"), take("test"));
    let splits = &config.splits;
    for (name, text, part) in [("train", &splits.train, &train), ("val", &splits.val, &val)] {
        if part.is_empty() {
            return Err(Error::Config {
                path: None,
                reason: format!(
                    "the {name} split `{text}` of {} is empty ({} examples in the dataset)",
                    config.data.display(),
                    dataset.len()
                ),
            });
        }
    }
    Ok([train, val, test])
}

/// A dense head with one logit for two classes (binary cross-entropy), else one per class.
fn head_and_loss(classes: usize, dropout: f32) -> (HeadSpec, Loss) {
    if classes == 2 {
        let head = HeadSpec::Dense { units: 1, dropout };
        (head, Loss::BinaryCrossEntropyWithLogits)
    } else {
        let head = HeadSpec::Dense {
            units: classes,
            dropout,
        };
        (head, Loss::SoftmaxCrossEntropy)
    }
}

/// Sets `head.kernel` / `head.bias` from a head trained by `xfer train-head`
/// (standardisation folded into the weights).
fn init_head_from(dir: &Path, setup: &Setup, params: &mut [Parameter]) -> Result<()> {
    let head = xfer_head::Head::load(dir)?;
    head.check_fingerprint(&setup.manifest.fingerprint)?;
    if head.classes != setup.classes {
        return Err(Error::Config {
            path: None,
            reason: format!(
                "--init-head {}: its classes {:?} differ from the dataset's {:?}",
                dir.display(),
                head.classes,
                setup.classes
            ),
        });
    }
    let d = head.feature_dim;
    let (mean, scale) = match &head.standardizer {
        Some(s) => (s.mean.clone(), s.scale.clone()),
        None => (vec![0.0; d], vec![1.0; d]),
    };
    // Rows of the dense layer: binary heads keep row 0 at zero, so the logit is row 1.
    let rows: Vec<usize> = if setup.classes.len() == 2 {
        vec![1]
    } else {
        (0..setup.classes.len()).collect()
    };
    let units = rows.len();
    let mut kernel = vec![0f32; d * units];
    let mut bias = vec![0f32; units];
    for (u, &r) in rows.iter().enumerate() {
        let mut b = f64::from(head.bias[r]);
        for i in 0..d {
            let w = f64::from(head.weights[r][i]) / f64::from(scale[i]);
            kernel[i * units + u] = w as f32;
            b -= w * f64::from(mean[i]);
        }
        if setup.classes.len() == 2 {
            b -= f64::from(head.bias[0]);
        }
        bias[u] = b as f32;
    }
    for p in params.iter_mut() {
        let values = match p.name.as_str() {
            HEAD_KERNEL => &kernel,
            HEAD_BIAS => &bias,
            _ => continue,
        };
        if values.len() != p.data.len() {
            return Err(Error::Config {
                path: None,
                reason: format!(
                    "--init-head {}: `{}` has {} values, the model's head needs {}",
                    dir.display(),
                    p.name,
                    values.len(),
                    p.data.len()
                ),
            });
        }
        p.data.clone_from(values);
    }
    Ok(())
}

enum EpochEnd {
    Done,
    Interrupted,
}

/// Where the batches of an epoch stopped: at the end, or at a batch (the stop flag).
enum BatchesEnd {
    Done(usize),
    Stopped(usize),
}

/// One phase: its graphs, the training session, the parameters it trains and their optimizer.
struct PhaseRun<'a> {
    config: &'a FinetuneConfig,
    options: &'a RunOptions,
    setup: &'a Setup,
    /// What the phase's graphs take and give.
    spec: GraphSpec,
    phase: u8,
    learning_rate: f32,
    caches: &'a Caches,
    session: Model,
    /// The phase's validation session ([`TrainingGraphs::eval_fed`]).
    eval: Model,
    params: Vec<Parameter>,
    adam: Adam,
    /// The device-resident loop ([`RunOptions::residence`]); `params` and `adam` are then
    /// the host copies, brought up to date when an epoch ends or stops.
    device: Option<DeviceLoop>,
}

impl PhaseRun<'_> {
    fn global_epoch(&self, epoch_in_phase: usize) -> usize {
        match self.phase {
            1 => epoch_in_phase,
            _ => self.config.phase1.epochs + epoch_in_phase,
        }
    }

    /// The loader of training examples: the epoch's augmentation, the training cache.
    fn loader(&self, examples: Vec<Example>, epoch: u64) -> Result<BatchLoader> {
        let mut lc = loader_config(
            self.config,
            self.options,
            self.setup,
            self.caches.train.as_ref(),
        );
        lc.seed = self.config.seed;
        lc.epoch = epoch;
        lc.augmentation = augmentation(&self.config.augmentation);
        Ok(BatchLoader::start(examples, lc)?)
    }

    /// Trains the epoch after `state.epochs_done` (from where a checkpoint left it),
    /// validates, logs and checkpoints it.
    fn epoch(
        &mut self,
        state: &mut TrainingState,
        log: &mut MetricsLog,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<EpochEnd> {
        let epoch = state.epochs_done + 1;
        let batches = self.setup.train.len().div_ceil(self.config.batch_size);
        let skip = state.step_in_epoch.min(batches);
        let mut partial = state.partial.take().unwrap_or_default();
        on_event(Event::EpochStarted {
            phase: self.phase,
            epoch,
            batches,
            done: skip,
        });
        let started = Instant::now();
        let seconds_before = partial.seconds;
        let loader = self.epoch_loader(epoch, skip)?;
        let end = self.batches(loader, skip, batches, state, &mut partial, on_event)?;
        self.sync_host()?;
        let step_in_epoch = match end {
            BatchesEnd::Done(step) => step,
            BatchesEnd::Stopped(step) => {
                partial.seconds = seconds_before + started.elapsed().as_secs_f64();
                state.step_in_epoch = step;
                state.partial = Some(partial);
                self.save_checkpoint(state, &Checkpoint::last_path(&self.options.run_dir))?;
                return Ok(EpochEnd::Interrupted);
            }
        };
        let train_seconds = seconds_before + started.elapsed().as_secs_f64();
        on_event(Event::Validating);
        let (val_loss, val_accuracy, skipped_val) = self.validate()?;
        if !val_loss.is_finite() {
            let value = format!("validation loss {val_loss}");
            return Err(self.non_finite(epoch, step_in_epoch, state.global_step, value));
        }
        let seen = partial.seen.max(1) as f64;
        let mut record = EpochRecord {
            phase: self.phase,
            epoch,
            global_epoch: self.global_epoch(epoch),
            step: state.global_step,
            learning_rate: self.learning_rate,
            train_loss: partial.loss_sum / seen,
            train_accuracy: partial.correct as f64 / seen,
            val_loss,
            val_accuracy,
            images_per_second: partial.seen as f64 / train_seconds.max(1e-9),
            train_seconds,
            seconds: 0.0,
            skipped_train: sorted(std::mem::take(&mut partial.skipped)),
            skipped_val,
        };
        let improved = finish_epoch(state, &record);
        record.seconds = seconds_before + started.elapsed().as_secs_f64();
        self.save_epoch(&record, improved, state, log)?;
        on_event(Event::EpochFinished(&record));
        Ok(EpochEnd::Done)
    }

    /// The loader of the epoch's training examples in the epoch's order, from batch `skip`.
    fn epoch_loader(&self, epoch: usize, skip: usize) -> Result<BatchLoader> {
        let global_epoch = self.global_epoch(epoch);
        let n = self.setup.train.len();
        let order = epoch_permutation(self.config.seed, global_epoch as u64, n);
        let examples: Vec<Example> = order[skip * self.config.batch_size..]
            .iter()
            .map(|&i| self.setup.train[i].clone())
            .collect();
        self.loader(examples, global_epoch as u64)
    }

    /// One optimizer step per batch of `loader`, summed into `partial`; stops early
    /// (before the last batch) when the stop flag is set.
    fn batches(
        &mut self,
        loader: BatchLoader,
        skip: usize,
        batches: usize,
        state: &mut TrainingState,
        partial: &mut PartialEpoch,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<BatchesEnd> {
        let epoch = state.epochs_done + 1;
        let mut step_in_epoch = skip;
        for batch in loader {
            let batch = batch?;
            step_in_epoch += 1;
            for (example, error) in &batch.failures {
                tracing::warn!("skipping training image {}: {error}", example.id);
                partial.skipped.push(example.id.clone());
            }
            if !batch.examples.is_empty() {
                let (loss, correct) = self.step(&batch, state.global_step)?;
                if !loss.is_finite() {
                    let value = format!("training loss {loss}");
                    let step = state.global_step + 1;
                    return Err(self.non_finite(epoch, step_in_epoch, step, value));
                }
                partial.loss_sum += f64::from(loss) * batch.examples.len() as f64;
                partial.correct += correct as u64;
                partial.seen += batch.examples.len() as u64;
                state.global_step += 1;
                state.optimizer_step = self.adam.iterations();
                on_event(Event::Step {
                    batch: step_in_epoch,
                    loss,
                });
            }
            if self.options.stop.load(Ordering::SeqCst) && step_in_epoch < batches {
                return Ok(BatchesEnd::Stopped(step_in_epoch));
            }
        }
        Ok(BatchesEnd::Done(step_in_epoch))
    }

    /// The error of a NaN or infinite loss (`value` says which), naming the checkpoint kept.
    fn non_finite(&self, epoch: usize, step: usize, global_step: u64, value: String) -> Error {
        Error::NonFinite {
            phase: self.phase,
            epoch,
            step,
            global_step,
            value,
            checkpoint: Checkpoint::last_path(&self.options.run_dir)
                .display()
                .to_string(),
        }
    }

    /// Logs the finished epoch, draws the curves and checkpoints it (`best` too when
    /// the validation loss `improved`).
    fn save_epoch(
        &self,
        record: &EpochRecord,
        improved: bool,
        state: &TrainingState,
        log: &mut MetricsLog,
    ) -> Result<()> {
        // Log first, checkpoint second: a run killed in between redoes this epoch on
        // resume, and the resumed log drops the line of the epoch it redoes.
        log.append(record.clone())?;
        if let Err(e) = draw_curves(&self.options.run_dir, log.records()) {
            tracing::warn!("could not draw the curves: {e}");
        }
        let last = Checkpoint::last_path(&self.options.run_dir);
        self.save_checkpoint(state, &last)?;
        if improved {
            // The same bytes: a hard link, not a second write of the whole checkpoint.
            Checkpoint::link(&last, &Checkpoint::best_path(&self.options.run_dir))?;
        }
        tracing::debug!(
            "image cache after phase {} epoch {}: {}",
            self.phase,
            record.epoch,
            self.caches.describe()
        );
        Ok(())
    }

    /// Brings `params` and `adam` up to date with the device loop's (no-op without one).
    fn sync_host(&mut self) -> Result<()> {
        match &mut self.device {
            Some(device) => device.copy_to_host(&mut self.params, &mut self.adam),
            None => Ok(()),
        }
    }

    /// One optimizer step; returns the batch's mean loss and its number of correct predictions.
    fn step(&mut self, batch: &Batch, global_step: u64) -> Result<(f32, usize)> {
        let spec = &self.spec;
        let n = batch.examples.len();
        let labels = Labels::of(self.setup.loss, &batch.examples)?;
        let masks = spec.dropout_feeds(self.config.seed, global_step, n)?;
        let pixels = batch.pixels.view().into_dyn();
        let mut feeds: Vec<(&str, InputTensor<'_>)> =
            vec![(spec.data_input.name.as_str(), InputTensor::F32(pixels))];
        feeds.push((spec.labels.name.as_str(), labels.tensor()));
        for (name, mask) in &masks {
            feeds.push((name.as_str(), InputTensor::F32(mask.view())));
        }
        if let Some(device) = &mut self.device {
            let (loss, logits) = device.step(&mut self.session, &feeds, &mut self.adam)?;
            return Ok((loss, count_correct(&logits, &batch.examples)));
        }
        for p in &self.params {
            let view = ArrayViewD::from_shape(IxDyn(&p.shape), &p.data).map_err(shape_err)?;
            feeds.push((p.name.as_str(), InputTensor::F32(view)));
        }
        let outputs = FloatOutputs::new(self.session.run(&feeds)?);
        drop(feeds);
        let loss = outputs
            .get("loss")?
            .iter()
            .next()
            .copied()
            .unwrap_or(f32::NAN);
        let correct = count_correct(outputs.get("logits")?, &batch.examples);
        if loss.is_finite() {
            let grads = outputs.gradients(&self.params)?;
            self.adam.step(&mut self.params, &grads)?;
        }
        Ok((loss, correct))
    }

    /// Validation loss and accuracy with the eval graph (no dropout, no augmentation), the
    /// current parameters fed to the phase's session.
    /// Also returns the ids of the validation images skipped as unreadable.
    fn validate(&mut self) -> Result<(f64, f64, Vec<String>)> {
        let mut feeds = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let view = ArrayViewD::from_shape(IxDyn(&p.shape), &p.data).map_err(shape_err)?;
            feeds.push((p.name.as_str(), InputTensor::F32(view)));
        }
        let input = self.spec.data_input.name.as_str();
        let loader = loader_config(
            self.config,
            self.options,
            self.setup,
            self.caches.val.as_ref(),
        );
        let (logits, examples, skipped) = predict(
            &mut self.eval,
            input,
            &feeds,
            "logits",
            &self.setup.val,
            loader,
        )?;
        let (loss, accuracy) = loss_and_accuracy(&logits, &labels_of(&examples), self.setup.loss);
        Ok((loss, accuracy, skipped))
    }

    fn save_checkpoint(&self, state: &TrainingState, path: &Path) -> Result<()> {
        let mut tensors = TensorMap::new();
        for p in &self.params {
            tensors.insert(format!("param.{}", p.name), to_array(p)?);
        }
        for s in self.adam.state() {
            tensors.insert(format!("optim.{}", s.name), to_array(&s)?);
        }
        let checkpoint = Checkpoint {
            state: state.clone(),
            tensors,
        };
        checkpoint.save(path)
    }
}

/// Moves `state` past the finished epoch of `record`; `true` when its validation loss
/// is the best so far.
fn finish_epoch(state: &mut TrainingState, record: &EpochRecord) -> bool {
    state.epochs_done = record.epoch;
    state.step_in_epoch = 0;
    state.partial = None;
    let improved = state.best.is_none_or(|(best, _)| record.val_loss < best);
    if improved {
        state.best = Some((record.val_loss, record.global_epoch));
    }
    improved
}

/// The labels fed to the training graph: float 0/1 for the binary loss, class indices
/// for the softmax loss.
enum Labels {
    Binary(ArrayD<f32>),
    Classes(ArrayD<i64>),
}

impl Labels {
    fn of(loss: Loss, examples: &[Example]) -> Result<Self> {
        let shape = IxDyn(&[examples.len()]);
        Ok(match loss {
            Loss::BinaryCrossEntropyWithLogits => Labels::Binary(
                ArrayD::from_shape_vec(shape, examples.iter().map(|e| e.label as f32).collect())
                    .map_err(shape_err)?,
            ),
            Loss::SoftmaxCrossEntropy => Labels::Classes(
                ArrayD::from_shape_vec(
                    shape,
                    examples.iter().map(|e| i64::from(e.label)).collect(),
                )
                .map_err(shape_err)?,
            ),
        })
    }

    fn tensor(&self) -> InputTensor<'_> {
        match self {
            Labels::Binary(a) => InputTensor::F32(a.view()),
            Labels::Classes(a) => InputTensor::I64(a.view()),
        }
    }
}

/// The float outputs of a training step, by name.
struct FloatOutputs(BTreeMap<String, ArrayD<f32>>);

impl FloatOutputs {
    fn new(outputs: Vec<(String, OutputTensor)>) -> Self {
        FloatOutputs(
            outputs
                .into_iter()
                .filter_map(|(name, t)| t.into_f32().map(|a| (name, a)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Result<&ArrayD<f32>> {
        self.0.get(name).ok_or_else(|| Error::Model {
            reason: format!("the training graph did not output `{name}`"),
        })
    }

    /// The gradient `<name>_grad` of every parameter, in order.
    fn gradients(&self, params: &[Parameter]) -> Result<Vec<&[f32]>> {
        params
            .iter()
            .map(|p| {
                self.get(&format!("{}_grad", p.name))?
                    .as_slice()
                    .ok_or_else(|| Error::Model {
                        reason: format!("gradient of `{}` is not contiguous", p.name),
                    })
            })
            .collect()
    }
}

/// How training, validation and test images load: resized to the run's size,
/// unreadable images skipped, no content hashing; `cache` keeps their resized images
/// for the next pass over the same examples.
fn loader_config(
    config: &FinetuneConfig,
    options: &RunOptions,
    setup: &Setup,
    cache: Option<&Arc<ResizedImageCache>>,
) -> LoaderConfig {
    let mut lc = LoaderConfig::new(setup.size[0], setup.size[1], config.batch_size);
    lc.threads = options.loader_threads;
    lc.hash_contents = false;
    lc.on_error = OnError::Skip;
    lc.cache = cache.cloned();
    lc
}

/// The training augmentation (`None` when it neither flips nor rotates).
fn augmentation(a: &AugmentationConfig) -> Option<Augmentation> {
    if !(a.flip || a.rotation > 0.0) {
        return None;
    }
    let fill = match a.fill.as_str() {
        "constant" => FillMode::Constant(0.0),
        "nearest" => FillMode::Nearest,
        _ => FillMode::Reflect,
    };
    Some(Augmentation {
        flip_horizontal: a.flip,
        rotation_factor: a.rotation,
        fill,
    })
}

/// Runs `model` over `examples` (loaded as `loader` says), with the fixed inputs `feeds`
/// beside the pixels, and returns output `output` as `[n, k]` f64 rows, the examples
/// that loaded and the ids of those that could not be read (sorted).
fn predict(
    model: &mut Model,
    input: &str,
    feeds: &[(&str, InputTensor<'_>)],
    output: &str,
    examples: &[Example],
    loader: LoaderConfig,
) -> Result<(ndarray::Array2<f64>, Vec<Example>, Vec<String>)> {
    let mut loader = BatchLoader::start(examples.to_vec(), loader)?.peekable();
    let mut rows: Vec<f64> = Vec::new();
    let mut loaded = Vec::new();
    let mut width = 0;
    let mut skipped = Vec::new();
    while let Some(batch) = loader.next() {
        let batch = batch?;
        for (example, error) in &batch.failures {
            tracing::warn!("skipping image {}: {error}", example.id);
            skipped.push(example.id.clone());
        }
        if batch.examples.is_empty() {
            continue;
        }
        let mut inputs = vec![(input, InputTensor::F32(batch.pixels.view().into_dyn()))];
        inputs.extend(feeds.iter().map(|(name, t)| (*name, reborrow(t))));
        // The pass's last run hands the arena's free memory back (the training step's
        // buffers), before the checkpoint, export and test that follow a validation pass.
        let outputs = if loader.peek().is_none() {
            model.run_releasing_memory(&inputs)?
        } else {
            model.run(&inputs)?
        };
        drop(inputs);
        let values = outputs
            .into_iter()
            .find(|(n, _)| n == output)
            .and_then(|(_, t)| t.into_f32())
            .ok_or_else(|| Error::Model {
                reason: format!("the model did not output `{output}`"),
            })?;
        width = values.len() / batch.examples.len();
        rows.extend(values.iter().map(|&v| f64::from(v)));
        loaded.extend(batch.examples);
    }
    let n = loaded.len();
    let array = ndarray::Array2::from_shape_vec((n, width), rows).map_err(shape_err)?;
    Ok((array, loaded, sorted(skipped)))
}

/// `ids` sorted.
fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort_unstable();
    ids
}

/// A view of `t` for as long as `t` is borrowed.
fn reborrow<'s>(t: &'s InputTensor<'_>) -> InputTensor<'s> {
    match t {
        InputTensor::F32(a) => InputTensor::F32(a.view()),
        InputTensor::I64(a) => InputTensor::I64(a.view()),
    }
}

/// Mean loss and accuracy of logits `[n, units]` (f64).
pub(crate) fn loss_and_accuracy(
    logits: &ndarray::Array2<f64>,
    labels: &[i32],
    loss: Loss,
) -> (f64, f64) {
    let n = labels.len().max(1) as f64;
    let mut total = 0.0;
    let mut correct = 0usize;
    for (row, &y) in logits.rows().into_iter().zip(labels) {
        match loss {
            Loss::BinaryCrossEntropyWithLogits => {
                let z = row[0];
                let y = f64::from(y);
                total += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
                if (z > 0.0) == (y > 0.5) {
                    correct += 1;
                }
            }
            Loss::SoftmaxCrossEntropy => {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                total += lse - row[y as usize];
                if argmax(row.iter().copied()) == y as usize {
                    correct += 1;
                }
            }
        }
    }
    (total / n, correct as f64 / n)
}

fn count_correct(logits: &ArrayD<f32>, examples: &[Example]) -> usize {
    let n = examples.len();
    if n == 0 {
        return 0;
    }
    let units = logits.len() / n;
    let flat: Vec<f32> = logits.iter().copied().collect();
    examples
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            let row = &flat[i * units..(i + 1) * units];
            if units == 1 {
                (row[0] > 0.0) == (e.label == 1)
            } else {
                argmax(row.iter().map(|&v| f64::from(v))) == e.label as usize
            }
        })
        .count()
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Model {
        reason: format!("tensor shape: {e}"),
    }
}

fn to_array(p: &Parameter) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone()).map_err(shape_err)
}

fn to_parameter(name: &str, array: &ArrayD<f32>) -> Parameter {
    Parameter {
        name: name.to_owned(),
        shape: array.shape().to_vec(),
        data: array.iter().copied().collect(),
    }
}

/// The trained parameters stored in a checkpoint (`param.*`), by name.
pub fn checkpoint_parameters(checkpoint: &Checkpoint) -> BTreeMap<String, Parameter> {
    checkpoint
        .tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("param.")
                .map(|n| (n.to_owned(), to_parameter(n, v)))
        })
        .collect()
}
