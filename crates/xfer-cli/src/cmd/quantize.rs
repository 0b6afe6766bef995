//! `xfer quantize`: a static int8 (QDQ) copy of a model folder, calibrated on images.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use xfer_data::{DEFAULT_SEED, SplitSpec};
use xfer_quant::{DEFAULT_IMAGES, Method, QuantizeConfig, quantize};

use crate::args::RuntimeArgs;

/// Arguments of `xfer quantize`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  xfer quantize --model models/xception --calibration data/cats_vs_dogs --out models/xception-int8\n\
The output folder is a model folder like any other: `xfer extract --model models/xception-int8 ...`.\n\
Its fingerprint differs from the float model's, so its rows never mix with float rows in a store."
)]
pub struct Args {
    /// Float model folder (model.onnx + model.json).
    #[arg(long, default_value = "models/xception", value_name = "DIR")]
    pub model: PathBuf,
    /// Calibration images: a dataset folder (one subfolder per class) or a CSV manifest.
    #[arg(long, value_name = "DATA")]
    pub calibration: PathBuf,
    /// Calibrate on this split of the dataset's seeded order (keep test images out of it).
    #[arg(long, default_value = "train[:70%]", value_name = "SPEC")]
    pub split: SplitSpec,
    /// Seed of the split order (the same as extract's, so the split is the same images).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Number of calibration images (the first N of the split).
    #[arg(long, default_value_t = DEFAULT_IMAGES, value_name = "N")]
    pub images: usize,
    /// How each tensor's range is chosen: minmax, percentile (of |x|, see --percentile) or
    /// entropy (least KL divergence).
    #[arg(
        long,
        default_value = "percentile",
        value_name = "minmax|percentile|entropy"
    )]
    pub method: Method,
    /// The percentile of --method percentile.
    #[arg(long, value_name = "P")]
    pub percentile: Option<f64>,
    /// Leave nodes in float: node or output names, `first` (the first Conv/MatMul/Gemm) or
    /// `last` (the last one); repeat or separate with commas.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub keep_float: Vec<String>,
    /// Output model folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Images per calibration run (every intermediate tensor of a batch is held at once).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Image decoding threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub decode_threads: Option<usize>,
    /// How the float model runs during calibration.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `xfer quantize`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let method = match (args.method, args.percentile) {
        (Method::Percentile(_), Some(p)) if p > 0.0 && p <= 100.0 => Method::Percentile(p),
        (_, Some(p)) if !(p > 0.0 && p <= 100.0) => {
            anyhow::bail!("--percentile {p}: give a percentile in (0, 100], e.g. 99.999")
        }
        (_, Some(_)) => anyhow::bail!("--percentile goes with --method percentile"),
        (m, None) => m,
    };
    let config = QuantizeConfig {
        model_dir: args.model.clone(),
        calibration: args.calibration.clone(),
        split: args.split,
        seed: args.seed,
        images: args.images,
        method,
        keep_float: args.keep_float,
        out: args.out.clone(),
        batch_size: args.batch_size,
        session: args.runtime.session_options(),
        decode_threads: args.decode_threads,
    };
    let bar = progress_bar(args.quiet);
    let result = quantize(&config, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let summary = result.with_context(|| {
        format!(
            "quantizing {} into {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    println!("{summary}");
    Ok(())
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} calibrating [{elapsed_precise}] {bar:30} {pos}/{len} images ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
