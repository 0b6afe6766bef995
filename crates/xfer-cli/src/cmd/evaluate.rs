//! `xfer evaluate`: a trained head on stored embeddings (`--head`), or an exported
//! model on the images of one split of a dataset (`--model FILE --data DIR`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use xfer_data::{DEFAULT_SEED, DEMO_SPLITS, SplitAssignment};
use xfer_head::{Evaluation, ExportedModel, Head};
use xfer_store::StoreReader;

use super::head::load_split;
use crate::args::{BatchArgs, OnErrorArgs, RuntimeArgs, report_skipped};

/// Arguments of `xfer evaluate`: a head on stored embeddings (`--head`), or an
/// exported model on the images of a dataset (`--model FILE --data DIR`).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["head", "model"])))]
pub struct Args {
    /// Embeddings store (with --head).
    #[arg(long, default_value = "store", value_name = "DIR")]
    pub store: PathBuf,
    /// Run folder with head.json (or the head.json file).
    #[arg(long, value_name = "DIR")]
    pub head: Option<PathBuf>,
    /// Exported model (`xfer export`), run on the images of --data.
    #[arg(long, value_name = "FILE", requires = "data")]
    pub model: Option<PathBuf>,
    /// Dataset folder (one subfolder per class, or a CSV manifest), with --model
    /// (--head reads the stored embeddings instead).
    #[arg(long, value_name = "DIR", conflicts_with = "head")]
    pub data: Option<PathBuf>,
    /// Split tags over the dataset's seeded order, as `xfer extract --split` takes them
    /// (with --data); splits that share images are refused.
    #[arg(long, default_value = DEMO_SPLITS, value_name = "SPEC")]
    pub splits: SplitAssignment,
    /// Seed of the dataset order (with --data).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Slice each class separately, so every split keeps the class balance (with --data).
    #[arg(long)]
    pub stratified: bool,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Fingerprint of the embeddings to use (default: the head's, if the store has it).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// How images are batched and decoded (with --model).
    #[command(flatten)]
    pub batches: BatchArgs,
    /// How the model runs (with --model).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Unreadable images (with --model).
    #[command(flatten)]
    pub errors: OnErrorArgs,
    /// Print the metrics as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write one JSON line per row (id, label, predicted, probabilities) to FILE.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
}

/// Runs `xfer evaluate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let evaluation = match (&args.head, &args.model) {
        (Some(head), None) => evaluate_head(head, &args)?,
        (None, Some(model)) => evaluate_exported(model, &args)?,
        _ => {
            bail!("give either --head DIR (stored embeddings) or --model FILE --data DIR (images)")
        }
    };
    if let Some(path) = &args.predictions {
        evaluation.write_predictions(path)?;
    }
    report(&args.split, evaluation, args.json)
}

/// `xfer evaluate --head`: the head on stored embeddings.
fn evaluate_head(head_path: &Path, args: &Args) -> anyhow::Result<Evaluation> {
    let head = Head::load(head_path)?;
    let store = StoreReader::open(&args.store)?;
    // Prefer the head's own embeddings; otherwise load what is there and let the head refuse it.
    let model = args.fingerprint.clone().or_else(|| {
        store
            .models()
            .iter()
            .any(|(fp, _)| *fp == head.fingerprint)
            .then(|| head.fingerprint.clone())
    });
    let rows = load_split(&store, &args.split, model.as_deref())?;
    if rows.classes != head.classes {
        bail!(
            "the store's classes {:?} differ from the head's {:?}",
            rows.classes,
            head.classes
        );
    }
    Ok(xfer_head::evaluate_embeddings(
        &head,
        rows.features.view(),
        &rows.labels,
        &rows.ids,
        &rows.fingerprint,
    )?)
}

/// `xfer evaluate --model --data`: an exported model on the images of one split of a dataset.
fn evaluate_exported(model_path: &Path, args: &Args) -> anyhow::Result<Evaluation> {
    let data = args.data.as_deref().context("--model needs --data DIR")?;
    if args.batches.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut model = ExportedModel::open(model_path, &args.runtime.session_options())?;
    let dataset = xfer_data::Dataset::open(data)?;
    if dataset.classes() != model.classes() {
        bail!(
            "the dataset's classes {:?} differ from the model's {:?}",
            dataset.classes(),
            model.classes()
        );
    }
    let chosen = examples_of_split(&dataset, args)?;
    let evaluation = xfer_head::evaluate_exported(
        &mut model,
        chosen,
        args.batches.batch_size,
        args.batches.decode_threads,
        args.errors.on_error,
    )?;
    report_skipped(&evaluation.load);
    Ok(evaluation)
}

/// The examples `--splits`/`--seed` tag with `--split`.
fn examples_of_split(
    dataset: &xfer_data::Dataset,
    args: &Args,
) -> anyhow::Result<Vec<xfer_data::Example>> {
    let assignment = args.splits.clone().stratified(args.stratified);
    assignment
        .select(dataset.examples(), args.seed)
        .with_context(|| format!("--splits with --seed {}", args.seed))?
        .into_iter()
        .find(|(name, _)| *name == args.split)
        .map(|(_, examples)| examples)
        .with_context(|| {
            format!(
                "split `{}` is not among {:?} of --splits",
                args.split,
                assignment.names()
            )
        })
}

/// Prints the metrics as JSON or as a table.
fn report(split: &str, evaluation: Evaluation, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&evaluation.metrics)?);
    } else {
        println!(
            "{}",
            xfer_head::format_table(&[(split.to_owned(), evaluation.metrics)])
        );
    }
    Ok(())
}
