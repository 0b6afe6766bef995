//! `xfer train-head`: a logistic head on stored embeddings, and its metrics.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use xfer_head::{ClassWeight, Head, Metrics, Split, TrainOptions};
use xfer_store::{LoadedSplit, StoreReader};

/// Arguments of `xfer train-head`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Embeddings store (filled by `xfer extract`).
    #[arg(long, default_value = "store", value_name = "DIR")]
    pub store: PathBuf,
    /// Split to train on.
    #[arg(long, default_value = "train")]
    pub train: String,
    /// Split that chooses the L2 strength (and is reported); `none` to skip (needs --l2).
    #[arg(long, default_value = "val")]
    pub val: String,
    /// Split to report only (never used for choices); default: `test` when the store has it;
    /// `none` to skip.
    #[arg(long)]
    pub test: Option<String>,
    /// Run folder: gets head.json, head.onnx, metrics.json and the test split's predictions.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Fingerprint of the backbone whose embeddings to use, when the store holds several.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// L2 strength (scikit-learn's C = 1/l2); default: chosen on --val from --l2-grid.
    #[arg(long)]
    pub l2: Option<f64>,
    /// Candidate L2 strengths, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.01,0.1,1,10,100,1000,10000"
    )]
    pub l2_grid: Vec<f64>,
    /// Do not standardise features (by default: training mean and standard deviation).
    #[arg(long)]
    pub no_standardize: bool,
    /// Class weights: `none`, `balanced` or one number per class (`1,3`); applied by row replication.
    #[arg(long, default_value = "none")]
    pub class_weight: ClassWeight,
    /// L-BFGS iteration limit.
    #[arg(long, default_value_t = 500)]
    pub max_iter: u64,
    /// L-BFGS gradient tolerance.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
}

/// Loads a split, naming the split and store in errors.
pub(crate) fn load_split(
    store: &StoreReader,
    split: &str,
    model: Option<&str>,
) -> anyhow::Result<LoadedSplit> {
    store
        .load_split(split, model)
        .with_context(|| format!("loading split `{split}` from {}", store.dir().display()))
}

/// The split `xfer train-head` reports as test when `--test` is not given and the store has it.
const DEFAULT_TEST: &str = "test";

/// The rows of `--train`, `--val` (unless `none`) and `--test`, all of one backbone.
struct Rows {
    train: LoadedSplit,
    val: Option<LoadedSplit>,
    test: Option<LoadedSplit>,
    /// Name of the test split (when `test` is loaded).
    test_name: String,
}

impl Rows {
    /// Loads the splits; the first fixes the backbone, and all must agree on the classes.
    fn load(args: &TrainArgs) -> anyhow::Result<Self> {
        let store = StoreReader::open(&args.store)?;
        let train = load_split(&store, &args.train, args.fingerprint.as_deref())?;
        let fp = train.fingerprint.clone();
        let val = match args.val.as_str() {
            "none" => None,
            name => Some(load_split(&store, name, Some(&fp))?),
        };
        let test_name = test_split(args, &store, &fp)?;
        let test = match &test_name {
            Some(t) => Some(load_split(&store, t, Some(&fp))?),
            None => None,
        };
        for rows in val.iter().chain(&test) {
            if rows.classes != train.classes {
                bail!(
                    "the splits disagree on the classes ({:?} vs {:?}); extract them from one dataset",
                    train.classes,
                    rows.classes
                );
            }
        }
        Ok(Rows {
            train,
            val,
            test,
            test_name: test_name.unwrap_or_default(),
        })
    }

    /// `(name, rows)` of every split loaded, in the order train, val, test.
    fn named<'a>(&'a self, args: &'a TrainArgs) -> Vec<(&'a str, &'a LoadedSplit)> {
        let mut out = vec![(args.train.as_str(), &self.train)];
        out.extend(self.val.as_ref().map(|v| (args.val.as_str(), v)));
        out.extend(self.test.as_ref().map(|t| (self.test_name.as_str(), t)));
        out
    }
}

/// The split to report as test: `--test NAME`, nothing for `--test none`, and by default
/// `test` when the store has rows of that split for the backbone `fp`.
fn test_split(args: &TrainArgs, store: &StoreReader, fp: &str) -> anyhow::Result<Option<String>> {
    Ok(match args.test.as_deref() {
        Some("none") => None,
        Some(name) => Some(name.to_owned()),
        None => {
            let info = store.info()?;
            let has_test = info
                .models
                .iter()
                .any(|m| m.fingerprint == fp && m.per_split.contains_key(DEFAULT_TEST));
            has_test.then(|| DEFAULT_TEST.to_owned())
        }
    })
}

/// The training options the flags ask for.
fn train_options(args: &TrainArgs) -> TrainOptions {
    TrainOptions {
        l2: args.l2,
        l2_grid: args.l2_grid.clone(),
        standardize: !args.no_standardize,
        class_weight: args.class_weight.clone(),
        max_iterations: args.max_iter,
        gradient_tolerance: args.tolerance,
    }
}

/// Trains the head on `--train`, choosing the L2 strength on `--val`.
fn train_head(args: &TrainArgs, rows: &Rows) -> anyhow::Result<Head> {
    let train = &rows.train;
    let train_split = Split {
        name: &args.train,
        features: train.features.view(),
        labels: &train.labels,
    };
    let val_split = rows.val.as_ref().map(|v| Split {
        name: &args.val,
        features: v.features.view(),
        labels: &v.labels,
    });
    eprintln!(
        "training a {} head on {} rows of `{}` ({} features, classes {:?})",
        if train.classes.len() == 2 {
            "binary"
        } else {
            "multinomial"
        },
        train.labels.len(),
        args.train,
        train.features.ncols(),
        train.classes
    );
    Ok(xfer_head::train(
        &train_split,
        val_split.as_ref(),
        &train.classes,
        &train.fingerprint,
        &train_options(args),
    )?)
}

/// Runs `xfer train-head`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let rows = Rows::load(&args)?;
    let started = Instant::now();
    let mut head = train_head(&args, &rows)?;
    head.identity = Some(serde_json::from_str(&rows.train.identity.to_json())?);
    let train_seconds = started.elapsed().as_secs_f64();
    let report = rows
        .named(&args)
        .into_iter()
        .map(|(name, r)| {
            let metrics = head.evaluate(r.features.view(), &r.labels, &r.fingerprint)?;
            Ok((name.to_owned(), metrics))
        })
        .collect::<anyhow::Result<Vec<(String, Metrics)>>>()?;
    head.save(&args.out)
        .with_context(|| format!("saving the head in {}", args.out.display()))?;
    xfer_head::save_metrics(&args.out, &report)?;
    if let Some(test) = &rows.test {
        let evaluation = xfer_head::evaluate_embeddings(
            &head,
            test.features.view(),
            &test.labels,
            &test.ids,
            &test.fingerprint,
        )?;
        evaluation.write_predictions(&args.out.join(xfer_head::TEST_PREDICTIONS))?;
    }
    print_summary(&args, &head, &report, train_seconds);
    Ok(())
}

/// Prints the L2 search, the metrics table and what was written.
fn print_summary(args: &TrainArgs, head: &Head, report: &[(String, Metrics)], seconds: f64) {
    for g in &head.hyper_parameters.l2_grid {
        eprintln!(
            "  l2 {:>8}: val accuracy {:.4}, log loss {:.4} ({:.2} s)",
            g.l2, g.val_accuracy, g.val_log_loss, g.fit_seconds
        );
    }
    println!("{}", xfer_head::format_table(report));
    println!(
        "l2 {} ({}); trained in {seconds:.2} s; wrote {}/{{head.json,head.onnx,metrics.json,predictions.jsonl}}",
        head.hyper_parameters.l2,
        head.hyper_parameters.l2_source,
        args.out.display()
    );
}
