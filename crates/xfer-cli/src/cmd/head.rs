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
    #[arg(long, value_name = "FINGERPRINT")]
    pub model: Option<String>,
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

/// Arguments of `xfer evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Embeddings store.
    #[arg(long, default_value = "store", value_name = "DIR")]
    pub store: PathBuf,
    /// Run folder with head.json (or the head.json file).
    #[arg(long, value_name = "DIR")]
    pub head: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Fingerprint of the embeddings to use (default: the head's, if the store has it).
    #[arg(long, value_name = "FINGERPRINT")]
    pub model: Option<String>,
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
    let train_rows = load(&store, &args.train, args.model.as_deref())?;
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

/// Runs `xfer evaluate`.
pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let head = Head::load(&args.head)?;
    let store = StoreReader::open(&args.store)?;
    // Prefer the head's own embeddings; otherwise load what is there and let the head refuse it.
    let model = args.model.clone().or_else(|| {
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
        let mut text = String::new();
        for ((id, &label), p) in rows
            .ids
            .iter()
            .zip(&rows.labels)
            .zip(probs.axis_iter(Axis(0)))
        {
            let predicted = argmax(p.iter().copied());
            let line = PredictionLine {
                id,
                label: &head.classes[label as usize],
                predicted: &head.classes[predicted],
                probabilities: p.to_vec(),
            };
            text.push_str(&serde_json::to_string(&line)?);
            text.push('\n');
        }
        xfer_head::write_atomic(path, text.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        println!(
            "{}",
            xfer_head::format_table(&[(args.split.clone(), metrics)])
        );
    }
    Ok(())
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
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let proto = xfer_onnx::read_model_bytes(&bytes)
        .with_context(|| format!("{} is not an ONNX model", args.model.display()))?;
    let meta = |key: &str| -> anyhow::Result<String> {
        proto.metadata(key).map(str::to_owned).with_context(|| {
            format!(
                "{} has no `{key}` metadata; predict takes models written by `xfer export`",
                args.model.display()
            )
        })
    };
    let classes: Vec<String> = serde_json::from_str(&meta(xfer_head::METADATA_CLASSES)?)
        .with_context(|| {
            format!(
                "the `classes` metadata of {} is not a JSON list",
                args.model.display()
            )
        })?;
    let [height, width]: [u32; 2] = serde_json::from_str(&meta(xfer_head::METADATA_IMAGE_SIZE)?)
        .with_context(|| {
            format!(
                "the `image_size` metadata of {} is not [h,w]",
                args.model.display()
            )
        })?;
    let input = meta(xfer_head::METADATA_INPUT)?;
    drop(proto);

    let options = SessionOptions {
        ort_lib: args.ort_lib.clone(),
        device: args.device,
        ..SessionOptions::default()
    };
    let mut model =
        xfer_runtime::Model::from_bytes(&bytes, &args.model.display().to_string(), &options)?;
    drop(bytes);
    let k = args.top_k.min(classes.len());
    let mut predictions = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.batch_size) {
        let mut batch = Array4::<f32>::zeros((chunk.len(), 3, height as usize, width as usize));
        for (i, path) in chunk.iter().enumerate() {
            let image = xfer_data::load_image(path, height, width)?;
            batch.index_axis_mut(Axis(0), i).assign(&image);
        }
        let probs = model.run_single(&input, batch.view().into_dyn())?;
        if probs.ndim() != 2 || probs.shape() != [chunk.len(), classes.len()] {
            bail!(
                "the model returned shape {:?}, expected [{}, {}]",
                probs.shape(),
                chunk.len(),
                classes.len()
            );
        }
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
