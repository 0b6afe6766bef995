//! `xfer predict`: classify images with an exported model.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use ndarray::{ArrayView1, Axis};
use serde::Serialize;
use xfer_data::Example;
use xfer_head::ExportedModel;

use crate::args::{BatchArgs, OnErrorArgs, RuntimeArgs, report_skipped};

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
    /// Unreadable images.
    #[command(flatten)]
    pub errors: OnErrorArgs,
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

/// What became of one image: its prediction, or why it could not be read.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Predicted(Prediction),
    Unreadable { image: String, error: String },
}

/// Runs `xfer predict`: every image it could read is printed, in the order given; an
/// unreadable one gets an error line (`--on-error skip`) or stops the run (`fail`).
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.top_k == 0 || args.batches.batch_size == 0 {
        bail!("--top-k and --batch-size must be at least 1");
    }
    let mut model = ExportedModel::open(&args.model, &args.runtime.session_options())?;
    // Ids are positions, so that an image named twice is predicted twice.
    let examples: Vec<Example> = args
        .images
        .iter()
        .enumerate()
        .map(|(i, path)| Example {
            id: i.to_string(),
            path: path.clone(),
            label: 0,
        })
        .collect();
    let classified = model.classify(
        examples,
        args.batches.batch_size,
        args.batches.decode_threads,
        args.errors.on_error,
    )?;
    let mut outcomes: Vec<Option<Outcome>> = args.images.iter().map(|_| None).collect();
    for (example, p) in classified
        .examples
        .iter()
        .zip(classified.probabilities.axis_iter(Axis(0)))
    {
        let prediction = rank(&example.path, p, model.classes(), args.top_k);
        place(&mut outcomes, &example.id, Outcome::Predicted(prediction));
    }
    for skipped in &classified.summary.skipped {
        let image = skipped.path.display().to_string();
        let error = skipped.reason.clone();
        place(
            &mut outcomes,
            &skipped.id,
            Outcome::Unreadable { image, error },
        );
    }
    print_predictions(
        &outcomes.into_iter().flatten().collect::<Vec<_>>(),
        args.json,
    )?;
    report_skipped(&classified.summary);
    Ok(())
}

/// Puts `outcome` at the position its id names.
fn place(outcomes: &mut [Option<Outcome>], id: &str, outcome: Outcome) {
    if let Some(slot) = id.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i)) {
        *slot = Some(outcome);
    }
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

/// Prints the outcomes as one JSON array or as one text line per readable image (an
/// unreadable one is reported on stderr by [`report_skipped`]).
fn print_predictions(outcomes: &[Outcome], json: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(outcomes)?)?;
        return Ok(());
    }
    for outcome in outcomes {
        let Outcome::Predicted(p) = outcome else {
            continue;
        };
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
