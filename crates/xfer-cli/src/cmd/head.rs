//! `xfer train-head`, `evaluate`, `export`, `predict`: a logistic head on
//! stored embeddings, its metrics, one ONNX model of backbone + head, and
//! predictions with that model.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use ndarray::{Array4, Axis};
use serde::Serialize;
use xfer_head::{ClassWeight, ExportOptions, Head, Metrics, Split, TrainOptions};
use xfer_runtime::{Device, ModelManifest, SessionOptions};
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
    /// Split to report only (never used for choices).
    #[arg(long)]
    pub test: Option<String>,
    /// Run folder: gets head.json, head.onnx, metrics.json.
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

/// Arguments of `xfer evaluate`: a head on stored embeddings (`--head`), or an
/// exported model on the images of a dataset (`--model FILE --data DIR`).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["head", "model"])))]
pub struct EvaluateArgs {
    /// Embeddings store (with --head).
    #[arg(long, default_value = "store", value_name = "DIR")]
    pub store: PathBuf,
    /// Run folder with head.json (or the head.json file).
    #[arg(long, value_name = "DIR")]
    pub head: Option<PathBuf>,
    /// Exported model (`xfer export`), run on the images of --data.
    #[arg(long, value_name = "FILE", requires = "data")]
    pub model: Option<PathBuf>,
    /// Dataset folder (one subfolder per class, or a CSV manifest), with --model.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Split tags over the dataset's seeded order, as `xfer extract` assigns them (with --data).
    #[arg(long, default_value = xfer_store::extract::DEMO_SPLITS)]
    pub splits: String,
    /// Seed of the dataset order (with --data).
    #[arg(long, default_value_t = xfer_store::extract::DEFAULT_SEED)]
    pub seed: u64,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Fingerprint of the embeddings to use (default: the head's, if the store has it).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Images per inference batch (with --model).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// ONNX Runtime library (with --model; default: ORT_DYLIB_PATH, then .ort/ up from here).
    #[arg(long, value_name = "FILE", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Print the metrics as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write one JSON line per row (id, label, predicted, probabilities) to FILE.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
}

/// Arguments of `xfer export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Backbone folder (model.onnx + model.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Run folder with head.json (or the head.json file).
    #[arg(long, value_name = "DIR")]
    pub head: PathBuf,
    /// Output ONNX file (default: model.onnx in the head's run folder).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Arguments of `xfer predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
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
    /// Images per inference batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Execution provider: cpu, cuda, tensorrt.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/ up from here).
    #[arg(long, value_name = "FILE", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
}

/// Loads a split, naming the split and store in errors.
fn load(store: &StoreReader, split: &str, model: Option<&str>) -> anyhow::Result<LoadedSplit> {
    store
        .load_split(split, model)
        .with_context(|| format!("loading split `{split}` from {}", store.dir().display()))
}

/// Runs `xfer train-head`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let store = StoreReader::open(&args.store)?;
    let train_rows = load(&store, &args.train, args.fingerprint.as_deref())?;
    let fp = train_rows.fingerprint.clone();
    let val_rows = if args.val == "none" {
        None
    } else {
        Some(load(&store, &args.val, Some(&fp))?)
    };
    let test_rows = match &args.test {
        Some(t) => Some(load(&store, t, Some(&fp))?),
        None => None,
    };
    for rows in val_rows.iter().chain(&test_rows) {
        if rows.classes != train_rows.classes {
            bail!(
                "the splits disagree on the classes ({:?} vs {:?}); extract them from one dataset",
                train_rows.classes,
                rows.classes
            );
        }
    }
    let options = TrainOptions {
        l2: args.l2,
        l2_grid: args.l2_grid.clone(),
        standardize: !args.no_standardize,
        class_weight: args.class_weight.clone(),
        max_iterations: args.max_iter,
        gradient_tolerance: args.tolerance,
    };
    let train_split = Split {
        name: &args.train,
        features: train_rows.features.view(),
        labels: &train_rows.labels,
    };
    let val_split = val_rows.as_ref().map(|v| Split {
        name: &args.val,
        features: v.features.view(),
        labels: &v.labels,
    });
    eprintln!(
        "training a {} head on {} rows of `{}` ({} features, classes {:?})",
        if train_rows.classes.len() == 2 {
            "binary"
        } else {
            "multinomial"
        },
        train_rows.labels.len(),
        args.train,
        train_rows.features.ncols(),
        train_rows.classes
    );
    let started = Instant::now();
    let head = xfer_head::train(
        &train_split,
        val_split.as_ref(),
        &train_rows.classes,
        &fp,
        &options,
    )?;
    let train_seconds = started.elapsed().as_secs_f64();

    let mut report: Vec<(String, Metrics)> = Vec::new();
    report.push((
        args.train.clone(),
        head.evaluate(train_rows.features.view(), &train_rows.labels, &fp)?,
    ));
    if let Some(v) = &val_rows {
        report.push((
            args.val.clone(),
            head.evaluate(v.features.view(), &v.labels, &fp)?,
        ));
    }
    if let (Some(t), Some(name)) = (&test_rows, &args.test) {
        report.push((
            name.clone(),
            head.evaluate(t.features.view(), &t.labels, &fp)?,
        ));
    }
    head.save(&args.out)
        .with_context(|| format!("saving the head in {}", args.out.display()))?;
    xfer_head::save_metrics(&args.out, &report)?;

    for g in &head.hyper_parameters.l2_grid {
        eprintln!(
            "  l2 {:>8}: val accuracy {:.4}, log loss {:.4} ({:.2} s)",
            g.l2, g.val_accuracy, g.val_log_loss, g.fit_seconds
        );
    }
    println!("{}", xfer_head::format_table(&report));
    println!(
        "l2 {} ({}); trained in {train_seconds:.2} s; wrote {}/{{head.json,head.onnx,metrics.json}}",
        head.hyper_parameters.l2,
        head.hyper_parameters.l2_source,
        args.out.display()
    );
    Ok(())
}

/// One row of `--predictions`.
#[derive(Serialize)]
struct PredictionLine<'a> {
    id: &'a str,
    label: &'a str,
    predicted: &'a str,
    probabilities: Vec<f64>,
}

/// Writes one JSON line per row: id, true label, predicted label, probabilities.
fn write_predictions(
    path: &Path,
    ids: &[String],
    labels: &[i32],
    probs: ndarray::ArrayView2<'_, f64>,
    classes: &[String],
) -> anyhow::Result<()> {
    let mut text = String::new();
    for ((id, &label), p) in ids.iter().zip(labels).zip(probs.axis_iter(Axis(0))) {
        let predicted = argmax(p.iter().copied());
        let line = PredictionLine {
            id,
            label: usize::try_from(label)
                .ok()
                .and_then(|l| classes.get(l))
                .map_or("?", String::as_str),
            predicted: &classes[predicted],
            probabilities: p.to_vec(),
        };
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    xfer_head::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Prints metrics as JSON or as a table.
fn report(split: &str, metrics: Metrics, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        println!(
            "{}",
            xfer_head::format_table(&[(split.to_owned(), metrics)])
        );
    }
    Ok(())
}

/// Runs `xfer evaluate`.
pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    match (&args.head, &args.model) {
        (Some(head), None) => evaluate_head(head, &args),
        (None, Some(model)) => evaluate_exported(model, &args),
        _ => {
            bail!("give either --head DIR (stored embeddings) or --model FILE --data DIR (images)")
        }
    }
}

/// `xfer evaluate --head`: the head on stored embeddings.
fn evaluate_head(head_path: &Path, args: &EvaluateArgs) -> anyhow::Result<()> {
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
    let rows = load(&store, &args.split, model.as_deref())?;
    if rows.classes != head.classes {
        bail!(
            "the store's classes {:?} differ from the head's {:?}",
            rows.classes,
            head.classes
        );
    }
    let metrics = head.evaluate(rows.features.view(), &rows.labels, &rows.fingerprint)?;
    if let Some(path) = &args.predictions {
        let probs = head.probabilities(rows.features.view())?;
        write_predictions(path, &rows.ids, &rows.labels, probs.view(), &head.classes)?;
    }
    report(&args.split, metrics, args.json)
}

/// `xfer evaluate --model --data`: an exported model on the images of one split of a dataset.
fn evaluate_exported(model_path: &Path, args: &EvaluateArgs) -> anyhow::Result<()> {
    let data = args.data.as_deref().context("--model needs --data DIR")?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut model = ExportedModel::open(
        model_path,
        &session_options(args.ort_lib.clone(), Device::Cpu),
    )?;
    let dataset = xfer_data::Dataset::open(data)?;
    if dataset.classes() != model.classes.as_slice() {
        bail!(
            "the dataset's classes {:?} differ from the model's {:?}",
            dataset.classes(),
            model.classes
        );
    }
    let assignment = xfer_store::extract::SplitAssignment::parse(&args.splits)?;
    let mut chosen: Vec<xfer_data::Example> = assignment
        .assign(dataset.examples(), args.seed)?
        .into_iter()
        .filter(|(_, s)| *s == args.split)
        .map(|(e, _)| e)
        .collect();
    if chosen.is_empty() {
        bail!(
            "split `{}` is not among {:?} of --splits",
            args.split,
            assignment.names()
        );
    }
    chosen.sort_by(|a, b| a.id.cmp(&b.id));
    let paths: Vec<PathBuf> = chosen.iter().map(|e| e.path.clone()).collect();
    let labels: Vec<i32> = chosen.iter().map(|e| e.label as i32).collect();
    let ids: Vec<String> = chosen.iter().map(|e| e.id.clone()).collect();
    let mut probs = ndarray::Array2::<f64>::zeros((paths.len(), model.classes.len()));
    for (i, chunk) in paths.chunks(args.batch_size).enumerate() {
        let p = model.probabilities(chunk)?;
        let start = i * args.batch_size;
        probs
            .slice_mut(ndarray::s![start..start + chunk.len(), ..])
            .assign(&p.mapv(f64::from));
    }
    let metrics = Metrics::compute(probs.view(), &labels, &model.classes)?;
    if let Some(path) = &args.predictions {
        write_predictions(path, &ids, &labels, probs.view(), &model.classes)?;
    }
    report(&args.split, metrics, args.json)
}

/// Session options for an exported model.
fn session_options(ort_lib: Option<PathBuf>, device: Device) -> SessionOptions {
    SessionOptions {
        ort_lib,
        device,
        ..SessionOptions::default()
    }
}

/// A model written by `xfer export`, with what its metadata says.
struct ExportedModel {
    model: xfer_runtime::Model,
    classes: Vec<String>,
    input: String,
    height: u32,
    width: u32,
}

impl ExportedModel {
    /// Loads the model and reads classes, input name and image size from its metadata.
    fn open(path: &Path, options: &SessionOptions) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let proto = xfer_onnx::read_model_bytes(&bytes)
            .with_context(|| format!("{} is not an ONNX model", path.display()))?;
        let meta = |key: &str| -> anyhow::Result<String> {
            proto.metadata(key).map(str::to_owned).with_context(|| {
                format!(
                    "{} has no `{key}` metadata; this takes models written by `xfer export`",
                    path.display()
                )
            })
        };
        let classes: Vec<String> = serde_json::from_str(&meta(xfer_head::METADATA_CLASSES)?)
            .with_context(|| {
                format!(
                    "the `classes` metadata of {} is not a JSON list",
                    path.display()
                )
            })?;
        let [height, width]: [u32; 2] =
            serde_json::from_str(&meta(xfer_head::METADATA_IMAGE_SIZE)?).with_context(|| {
                format!(
                    "the `image_size` metadata of {} is not [h,w]",
                    path.display()
                )
            })?;
        let input = meta(xfer_head::METADATA_INPUT)?;
        drop(proto);
        let model = xfer_runtime::Model::from_bytes(&bytes, &path.display().to_string(), options)?;
        Ok(ExportedModel {
            model,
            classes,
            input,
            height,
            width,
        })
    }

    /// Decodes and resizes `images` to the model's size and returns their probabilities `[n, classes]`.
    fn probabilities(&mut self, images: &[PathBuf]) -> anyhow::Result<ndarray::Array2<f32>> {
        let (h, w) = (self.height as usize, self.width as usize);
        let mut batch = Array4::<f32>::zeros((images.len(), 3, h, w));
        for (i, path) in images.iter().enumerate() {
            let image = xfer_data::load_image(path, self.height, self.width)?;
            batch.index_axis_mut(Axis(0), i).assign(&image);
        }
        let probs = self
            .model
            .run_single(&self.input, batch.view().into_dyn())?;
        let k = self.classes.len();
        if probs.shape() != [images.len(), k] {
            bail!(
                "the model returned shape {:?}, expected [{}, {k}]",
                probs.shape(),
                images.len()
            );
        }
        Ok(probs.into_shape_with_order((images.len(), k))?)
    }
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0usize, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Runs `xfer export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let head = Head::load(&args.head)?;
    let manifest = ModelManifest::read(&args.model)?;
    let onnx_path = manifest.onnx_path(&args.model);
    let bytes = std::fs::read(&onnx_path).with_context(|| {
        format!(
            "reading the backbone {} (run `just setup`)",
            onnx_path.display()
        )
    })?;
    let actual = xfer_runtime::fingerprint(&bytes);
    if actual != manifest.fingerprint {
        bail!(
            "{} has sha256 {actual} but its manifest says {}; convert the model again",
            onnx_path.display(),
            manifest.fingerprint
        );
    }
    head.check_fingerprint(&actual).with_context(|| {
        format!(
            "the head in {} does not fit the backbone {}",
            args.head.display(),
            args.model.display()
        )
    })?;
    let backbone = xfer_onnx::read_model_bytes(&bytes)?;
    let options = ExportOptions {
        input: manifest.input.clone(),
        features_output: manifest.output.clone(),
        image_size: manifest.image_size,
        value_range: manifest.value_range,
        backbone_name: manifest.name.clone(),
    };
    let merged = xfer_head::merge(&backbone, &head, &options)?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => run_dir(&args.head).join("model.onnx"),
    };
    xfer_onnx::write_model(&merged, &out)?;
    println!(
        "wrote {}: {} [N,3,{},{}] (RGB 0..255) -> probabilities over {:?}",
        out.display(),
        manifest.input,
        manifest.image_size[0],
        manifest.image_size[1],
        head.classes
    );
    Ok(())
}

/// The run folder of a `--head` argument (the folder itself, or the folder of head.json).
fn run_dir(head: &Path) -> PathBuf {
    if head.is_dir() {
        head.to_path_buf()
    } else {
        head.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
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
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    if args.top_k == 0 || args.batch_size == 0 {
        bail!("--top-k and --batch-size must be at least 1");
    }
    let mut model = ExportedModel::open(
        &args.model,
        &session_options(args.ort_lib.clone(), args.device),
    )?;
    let classes = model.classes.clone();
    let k = args.top_k.min(classes.len());
    let mut predictions = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.batch_size) {
        let probs = model.probabilities(chunk)?;
        for (path, p) in chunk.iter().zip(probs.axis_iter(Axis(0))) {
            let mut order: Vec<usize> = (0..classes.len()).collect();
            // stable sort: ties keep class order, like argmax
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let top_k: Vec<Ranked> = order[..k]
                .iter()
                .map(|&c| Ranked {
                    label: classes[c].clone(),
                    probability: p[c],
                })
                .collect();
            predictions.push(Prediction {
                image: path.display().to_string(),
                label: top_k[0].label.clone(),
                probability: top_k[0].probability,
                top_k,
            });
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&predictions)?)?;
    } else {
        for p in &predictions {
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
    }
    Ok(())
}
