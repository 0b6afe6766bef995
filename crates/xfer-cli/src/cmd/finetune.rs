//! `xfer finetune`: workflow A of the Keras guide — a new head on augmented
//! images with the base frozen, then the base unfrozen at a low learning rate
//! (BatchNorm in inference mode), checkpointed every epoch, exported at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use xfer_autodiff::CpuKernelChoice;
use xfer_finetune::{
    CONFIG_FILE_NAME, Event, ExportChoice, FinetuneConfig, Outcome, Residence, RunOptions, finetune,
};

use crate::args::{RuntimeArgs, parse_size};

/// Arguments of `xfer finetune`. Every hyper-parameter flag overrides the `--config`
/// file (or, with `--resume`, the run's saved `config.toml`), which overrides the defaults.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folder: config.toml, metrics.jsonl, curves.png/svg, checkpoints/, model.onnx, metrics.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Dataset folder (one subfolder per class) or CSV manifest [default: data/cats_vs_dogs].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Model folder with model.json and its training graph [default: models/xception].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// TOML file with any of the settings (keys as in a run's config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (settings from its config.toml).
    #[arg(long)]
    pub resume: bool,
    /// Epochs with the base frozen (phase 1) [default: 20].
    #[arg(long, value_name = "N")]
    pub phase1_epochs: Option<usize>,
    /// Adam learning rate of phase 1 [default: 1e-3].
    #[arg(long, value_name = "LR")]
    pub phase1_lr: Option<f32>,
    /// Epochs with the base unfrozen (phase 2; 0 skips it) [default: 10].
    #[arg(long, value_name = "N")]
    pub phase2_epochs: Option<usize>,
    /// Adam learning rate of phase 2 [default: 1e-5].
    #[arg(long, value_name = "LR")]
    pub phase2_lr: Option<f32>,
    /// Images per step [default: 32].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Dropout rate before the Dense head [default: 0.2].
    #[arg(long, value_name = "RATE")]
    pub dropout: Option<f32>,
    /// Seed of splits, shuffling, augmentation, dropout and head init [default: 1337].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Input size HxW (or one number for a square) [default: the model's].
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub image_size: Option<[u32; 2]>,
    /// Phase 2 trains only from this layer on (e.g. `block14_sepconv1`) [default: the whole base].
    #[arg(long, value_name = "LAYER")]
    pub unfreeze_from: Option<String>,
    /// Start phase 1 from a head trained by `xfer train-head` on the same model (a run folder or head.json).
    #[arg(long, value_name = "DIR")]
    pub init_head: Option<PathBuf>,
    /// Turn off the random horizontal flip.
    #[arg(long)]
    pub no_flip: bool,
    /// RandomRotation factor (fraction of a full turn; 0 disables) [default: 0.1].
    #[arg(long, value_name = "FACTOR")]
    pub rotation: Option<f32>,
    /// Rotation fill: reflect, constant or nearest [default: reflect].
    #[arg(long)]
    pub fill: Option<String>,
    /// Training split [default: train[:70%]].
    #[arg(long, value_name = "SPLIT")]
    pub train: Option<String>,
    /// Validation split [default: train[70%:85%]].
    #[arg(long, value_name = "SPLIT")]
    pub val: Option<String>,
    /// Test split of the exported model ("" for none) [default: train[85%:]].
    #[arg(long, value_name = "SPLIT")]
    pub test: Option<String>,
    /// Keep the class balance in every split.
    #[arg(long)]
    pub stratified: bool,
    /// Which epoch model.onnx holds: `best` (lowest validation loss; default) or `last`.
    #[arg(long, value_name = "best|last")]
    pub export: Option<ExportChoice>,
    /// Image decoding threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub loader_threads: Option<usize>,
    /// Memory (MiB) for resized training and validation images kept across epochs, so that
    /// after the first epoch only the augmentation runs; each image takes 3×H×W×4 bytes
    /// (270 KB at 150×150); images beyond it are decoded every epoch; 0 disables. Results
    /// are identical either way; files changed during the run are not re-read.
    #[arg(long, value_name = "MB", default_value_t = 2048)]
    pub cache_mb: u64,
    /// Where parameters, gradients and Adam's moments live between steps: `auto` (on the
    /// device for --device cuda/tensorrt, else on the host), `host`, or `device` (also on the
    /// CPU provider: the device loop, run in host memory, to check it without a GPU). Results
    /// are the same.
    #[arg(
        long,
        value_name = "auto|host|device",
        env = "XFER_TRAINING_STATE",
        default_value = "auto"
    )]
    pub training_state: Residence,
    /// Kernels of the training graph's depthwise convolutions: `portable` (standard ONNX, the
    /// default), `nchwc` (ONNX Runtime's NCHWc CPU kernels, 2-3x faster per depthwise conv:
    /// on Xception at batch 32 a 4 % faster step for about 0.3 GB more peak memory; --device
    /// cpu only) or `auto` (nchwc on --device cpu when a probe finds their block size on this
    /// CPU, portable elsewhere). Same parameters and checkpoints either way; results equal up
    /// to float rounding.
    #[arg(
        long,
        value_name = "auto|portable|nchwc",
        env = "XFER_CPU_KERNELS",
        default_value = "portable"
    )]
    pub cpu_kernels: CpuKernelChoice,
    /// How the model runs.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The effective configuration: defaults, then the file (or the run's saved config), then flags.
fn effective_config(args: &Args) -> anyhow::Result<FinetuneConfig> {
    let saved = args.out.join(CONFIG_FILE_NAME);
    let mut c = match (&args.config, args.resume && saved.is_file()) {
        (Some(path), _) => FinetuneConfig::read(path)?,
        (None, true) => FinetuneConfig::read(&saved)?,
        (None, false) => FinetuneConfig::default(),
    };
    if let Some(v) = &args.data {
        c.data.clone_from(v);
    }
    if let Some(v) = &args.model {
        c.model.clone_from(v);
    }
    if let Some(v) = args.phase1_epochs {
        c.phase1.epochs = v;
    }
    if let Some(v) = args.phase1_lr {
        c.phase1.learning_rate = v;
    }
    if let Some(v) = args.phase2_epochs {
        c.phase2.epochs = v;
    }
    if let Some(v) = args.phase2_lr {
        c.phase2.learning_rate = v;
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
    }
    if let Some(v) = args.dropout {
        c.dropout = v;
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = args.image_size {
        c.image_size = Some(v);
    }
    if let Some(v) = &args.unfreeze_from {
        c.unfreeze_from = Some(v.clone());
    }
    if let Some(v) = &args.init_head {
        c.init_head = Some(v.clone());
    }
    if args.no_flip {
        c.augmentation.flip = false;
    }
    if let Some(v) = args.rotation {
        c.augmentation.rotation = v;
    }
    if let Some(v) = &args.fill {
        c.augmentation.fill.clone_from(v);
    }
    if let Some(v) = &args.train {
        c.splits.train.clone_from(v);
    }
    if let Some(v) = &args.val {
        c.splits.val.clone_from(v);
    }
    if let Some(v) = &args.test {
        c.splits.test.clone_from(v);
    }
    if args.stratified {
        c.splits.stratified = true;
    }
    if let Some(v) = args.export {
        c.export = v;
    }
    c.validate()?;
    Ok(c)
}

/// Runs `xfer finetune`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = effective_config(&args)?;
    let mut options = RunOptions::new(&args.out);
    options.resume = args.resume;
    options.loader_threads = args.loader_threads;
    options.cache_bytes = args.cache_mb.saturating_mul(1024 * 1024);
    options.session = args.runtime.session_options();
    options.residence = args.training_state;
    options.cpu_kernels = args.cpu_kernels;
    stop_on_ctrl_c(options.stop.clone())?;
    let mut progress = Progress::new(&args.out);
    let outcome = finetune(&config, &options, &mut |event| progress.on_event(event));
    progress.abandon();
    let outcome = outcome.with_context(|| format!("fine-tuning into {}", args.out.display()))?;
    report_outcome(outcome, &args.out);
    Ok(())
}

/// First Ctrl-C: finish the current step, checkpoint, exit. Second: exit at once.
fn stop_on_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: writing a checkpoint after this step (Ctrl-C again to quit at once)"
            );
            stop.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")
}

/// Shows the run's events: a progress bar per epoch, one line per finished epoch.
struct Progress<'a> {
    out: &'a Path,
    bar: Option<ProgressBar>,
    style: ProgressStyle,
}

impl<'a> Progress<'a> {
    fn new(out: &'a Path) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Progress {
            out,
            bar: None,
            style,
        }
    }

    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Started {
                classes,
                train,
                val,
                test,
            } => eprintln!(
                "classes {classes:?}; {train} training, {val} validation, {test} test images; run folder {}",
                self.out.display()
            ),
            Event::PhaseStarted {
                phase: p,
                epochs,
                trainable_tensors,
                trainable_values,
                state_on_device,
            } => {
                let what = if p == 1 { "base frozen" } else { "fine-tuning" };
                let state = if state_on_device {
                    "; parameters, gradients and moments stay on the device"
                } else {
                    ""
                };
                eprintln!(
                    "phase {p} ({what}): {epochs} epochs, {trainable_tensors} trainable tensors ({trainable_values} values){state}"
                );
            }
            Event::EpochStarted {
                phase: p,
                epoch,
                batches,
                done,
            } => {
                let b = ProgressBar::new(batches as u64).with_style(self.style.clone());
                b.set_prefix(format!("phase {p} epoch {epoch}"));
                b.set_position(done as u64);
                self.bar = Some(b);
            }
            Event::Step { batch, loss } => {
                if let Some(b) = &self.bar {
                    b.set_position(batch as u64);
                    b.set_message(format!("loss {loss:.4}"));
                }
            }
            Event::Validating => {
                if let Some(b) = &self.bar {
                    b.set_message("validating".to_owned());
                }
            }
            Event::EpochFinished(r) => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                println!(
                    "phase {} epoch {:>3}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.1} img/s, {:.1} s",
                    r.phase,
                    r.epoch,
                    r.train_loss,
                    r.train_accuracy,
                    r.val_loss,
                    r.val_accuracy,
                    r.images_per_second,
                    r.seconds
                );
            }
            Event::Exported(path) => eprintln!("exported {}", path.display()),
        }
    }

    /// Leaves a bar that is still open (an error or an interrupt) as it is.
    fn abandon(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

/// Prints the unreadable images the run skipped: a count per split, then their ids.
fn report_skipped_images(skipped: &xfer_finetune::SkippedImages) {
    if skipped.is_empty() {
        return;
    }
    let splits = [
        ("train", &skipped.train),
        ("val", &skipped.val),
        ("test", &skipped.test),
    ];
    let counts: Vec<String> = splits
        .iter()
        .map(|(name, ids)| format!("{name} {}", ids.len()))
        .collect();
    println!(
        "skipped unreadable images: {} (also in metrics.json)",
        counts.join(", ")
    );
    for (name, ids) in splits {
        for id in ids {
            println!("  {name}: {id}");
        }
    }
}

/// Prints how the run ended; an interrupted run exits with status 130.
fn report_outcome(outcome: Outcome, out: &Path) {
    match outcome {
        Outcome::Finished(summary) => {
            if let Some((loss, epoch)) = summary.best {
                println!(
                    "best validation loss {loss:.4} at epoch {epoch} (checkpoints/best.safetensors)"
                );
            }
            let e = &summary.exported;
            println!(
                "model.onnx holds epoch {} (phase {}, validation loss {:.4}; --export {})",
                e.global_epoch, e.phase, e.val_loss, e.choice
            );
            if let Some(test) = &summary.test {
                println!(
                    "{}",
                    xfer_head::format_table(&[("test".to_owned(), test.clone())])
                );
            }
            if let (Some(train), Some(val)) = (&summary.train_cache, &summary.val_cache) {
                eprintln!("image cache: train {train}; val {val}");
            }
            report_skipped_images(&summary.skipped);
            println!("model: {}", summary.model.display());
        }
        Outcome::Interrupted {
            checkpoint,
            phase,
            epoch,
            step_in_epoch,
        } => {
            let position = if step_in_epoch == 0 {
                format!(
                    "before epoch {epoch} of phase {phase} (epoch {} is done)",
                    epoch - 1
                )
            } else {
                format!("in phase {phase}, epoch {epoch} after {step_in_epoch} batches")
            };
            eprintln!(
                "stopped {position}; checkpoint {}\n\
                 continue with: xfer finetune --out {} --resume",
                checkpoint.display(),
                out.display()
            );
            std::process::exit(130);
        }
    }
}
