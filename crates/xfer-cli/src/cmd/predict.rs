//! `xfer predict`: classify images with an exported model.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use ndarray::{ArrayView1, Axis};
use serde::Serialize;
use xfer_data::Example;
use xfer_head::ExportedModel;

use crate::args::{BatchArgs, RuntimeArgs};

/// Arguments of `xfer predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exported model (`xfer export`): pixels → probabilities, classes in its metadata.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Images to classify.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// How many of the most probable classes to show per image.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Print JSON (one array, one object per image) instead of text.
    #[arg(long)]
    pub json: bool,
    /// How images are batched and decoded.
    #[command(flatten)]
    pub batches: BatchArgs,
    /// How the model runs.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// One class and its probability.
#[derive(Serialize)]
struct Ranked {
    label: String,
    probability: f32,
}

/// The prediction for one image.
#[derive(Serialize)]
struct Prediction {
    image: String,
    label: String,
    probability: f32,
    top_k: Vec<Ranked>,
}

/// Runs `xfer predict`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.top_k == 0 || args.batches.batch_size == 0 {
        bail!("--top-k and --batch-size must be at least 1");
    }
    let mut model = ExportedModel::open(&args.model, &args.runtime.session_options())?;
    let probs = model.probabilities(
        args.images.iter().map(|p| Example::from_path(p)).collect(),
        args.batches.batch_size,
        args.batches.decode_threads,
    )?;
    let predictions: Vec<Prediction> = args
        .images
        .iter()
        .zip(probs.axis_iter(Axis(0)))
        .map(|(path, p)| rank(path, p, model.classes(), args.top_k))
        .collect();
    print_predictions(&predictions, args.json)
}

/// The `top_k` most probable classes of one image.
fn rank(
    path: &std::path::Path,
    p: ArrayView1<'_, f32>,
    classes: &[String],
    top_k: usize,
) -> Prediction {
    let mut order: Vec<usize> = (0..classes.len()).collect();
    // stable sort: ties keep class order, like argmax
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let top_k: Vec<Ranked> = order
        .iter()
        .take(top_k)
        .map(|&c| Ranked {
            label: classes[c].clone(),
            probability: p[c],
        })
        .collect();
    let (label, probability) = top_k.first().map_or((String::new(), f32::NAN), |r| {
        (r.label.clone(), r.probability)
    });
    Prediction {
        image: path.display().to_string(),
        label,
        probability,
        top_k,
    }
}

/// Prints the predictions as one JSON array or as one text line per image.
fn print_predictions(predictions: &[Prediction], json: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(predictions)?)?;
        return Ok(());
    }
    for p in predictions {
        let rest: Vec<String> = p
            .top_k
            .iter()
            .skip(1)
            .map(|r| format!("{} {:.4}", r.label, r.probability))
            .collect();
        if rest.is_empty() {
            writeln!(out, "{}\t{}\t{:.4}", p.image, p.label, p.probability)?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{:.4}\t({})",
                p.image,
                p.label,
                p.probability,
                rest.join(", ")
            )?;
        }
    }
    Ok(())
}
