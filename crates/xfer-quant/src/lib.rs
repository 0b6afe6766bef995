//! `xfer quantize`: static int8 quantization of a model folder.
//!
//! 1. plan the QDQ rewrite of the float graph ([`xfer_onnx::quant::QdqPlan`]);
//! 2. run the float model, with every tensor to quantize exposed as an output, on N
//!    calibration images decoded exactly as `xfer extract` decodes them (the same
//!    [`BatchLoader`], image size and resize), collecting each tensor's range
//!    ([`calibrate::Collector`]: min/max, or a histogram for percentile and entropy);
//! 3. insert QuantizeLinear/DequantizeLinear: uint8 activations, int8 per-channel weights
//!    (depthwise convolutions included), int32 biases;
//! 4. write a model folder: `model.onnx` and its own `model.json` (fingerprint of the new
//!    bytes; the source names the float model's fingerprint).

pub mod calibrate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::ArrayD;
use rayon::prelude::*;
use xfer_data::{BatchLoader, Dataset, Example, LoaderConfig, SplitSpec};
use xfer_onnx::ModelProto;
use xfer_onnx::quant::{QdqOptions, QdqPlan, QdqSummary, Range};
use xfer_runtime::{
    InputTensor, MANIFEST_FILE_NAME, Model, ModelManifest, ModelSource, SessionOptions, fingerprint,
};

pub use calibrate::{Collector, DEFAULT_PERCENTILE, Method};

/// File name of the quantized graph inside the output folder.
pub const MODEL_FILE: &str = "model.onnx";
/// ONNX metadata key recording how a model was quantized (JSON).
pub const METADATA_KEY: &str = "xfer.quantization";
/// Default number of calibration images.
pub const DEFAULT_IMAGES: usize = 200;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, planning or rewriting the ONNX graph failed.
    #[error(transparent)]
    Onnx(#[from] xfer_onnx::Error),
    /// ONNX Runtime or the model folder failed.
    #[error(transparent)]
    Runtime(#[from] xfer_runtime::Error),
    /// Listing or decoding the calibration images failed.
    #[error(transparent)]
    Data(#[from] xfer_data::DataError),
    /// Writing the output folder failed.
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
    /// An argument is out of range.
    #[error("{0}")]
    Argument(String),
    /// Calibration could not measure a range.
    #[error("calibration: {0}")]
    Calibration(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `xfer quantize` does.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// The float model folder (`model.onnx` + `model.json`).
    pub model_dir: PathBuf,
    /// Calibration dataset (class folders or a CSV manifest).
    pub calibration: PathBuf,
    /// The calibration images are the first `images` of this split, in seeded order.
    pub split: SplitSpec,
    /// Seed of the split order.
    pub seed: u64,
    /// Number of calibration images.
    pub images: usize,
    /// How ranges are chosen.
    pub method: Method,
    /// Nodes left in float (see [`QdqOptions::keep_float`]).
    pub keep_float: Vec<String>,
    /// Output model folder.
    pub out: PathBuf,
    /// Images per calibration run.
    pub batch_size: usize,
    /// How the float model runs during calibration.
    pub session: SessionOptions,
    /// Decoder threads (`None`: all cores).
    pub decode_threads: Option<usize>,
}

/// What a quantization did.
#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    /// The written manifest.
    pub manifest: ModelManifest,
    /// Output folder.
    pub out: PathBuf,
    /// Calibration images used.
    pub images: usize,
    /// Calibration method.
    pub method: Method,
    /// What the rewrite did.
    pub qdq: QdqSummary,
    /// Size of the float and the quantized `model.onnx`.
    pub bytes: (usize, usize),
    /// Time spent calibrating.
    pub calibration_time: Duration,
}

impl fmt::Display for QuantizeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self
            .qdq
            .quantized_ops
            .iter()
            .map(|(op, n)| format!("{n} {op}"))
            .collect();
        writeln!(
            f,
            "quantized {} (int8 weights per channel, uint8 activations)",
            ops.join(", ")
        )?;
        writeln!(
            f,
            "  {} activation tensors, {} weights, {} biases; {} Relu folded, {} node(s) kept in float",
            self.qdq.activations,
            self.qdq.weights,
            self.qdq.biases,
            self.qdq.folded_relus,
            self.qdq.kept_float
        )?;
        writeln!(
            f,
            "  calibrated on {} images ({}) in {:.1}s",
            self.images,
            self.method,
            self.calibration_time.as_secs_f64()
        )?;
        write!(
            f,
            "wrote {} ({:.1} MB, float {:.1} MB) and {}; fingerprint {}",
            self.out.join(MODEL_FILE).display(),
            self.bytes.1 as f64 / 1e6,
            self.bytes.0 as f64 / 1e6,
            MANIFEST_FILE_NAME,
            self.manifest.fingerprint
        )
    }
}

/// The float model a quantization starts from.
struct Source {
    manifest: ModelManifest,
    model: ModelProto,
    bytes: usize,
}

/// Quantizes `config.model_dir` into `config.out`; `progress(done, total)` follows calibration.
pub fn quantize(
    config: &QuantizeConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeSummary> {
    check_config(config)?;
    let source = load_source(&config.model_dir)?;
    let plan = QdqPlan::new(
        &source.model,
        &QdqOptions {
            keep_float: config.keep_float.clone(),
        },
    )?;
    let examples = calibration_examples(config)?;
    let images = examples.len();
    let started = Instant::now();
    let ranges = calibrate(config, &source, &plan, examples, progress)?;
    let calibration_time = started.elapsed();
    let (mut model, qdq) = plan.apply(&ranges)?;
    model.set_metadata(METADATA_KEY, &provenance(config, &source, images));
    let bytes = xfer_onnx::write_model_bytes(&model);
    let manifest = quantized_manifest(&source.manifest, config, images, &bytes);
    publish(&config.out, &bytes, &manifest)?;
    Ok(QuantizeSummary {
        manifest,
        out: config.out.clone(),
        images,
        method: config.method,
        qdq,
        bytes: (source.bytes, bytes.len()),
        calibration_time,
    })
}

fn check_config(config: &QuantizeConfig) -> Result<()> {
    if config.images == 0 || config.batch_size == 0 {
        return Err(Error::Argument(
            "--images and --batch-size must be at least 1".to_owned(),
        ));
    }
    let same = match (config.out.canonicalize(), config.model_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::Argument(format!(
            "--out {} is the float model's own folder; write the quantized model to another folder",
            config.out.display()
        )));
    }
    Ok(())
}

/// Reads the manifest and the float graph, checking the graph against the fingerprint.
fn load_source(dir: &Path) -> Result<Source> {
    let (manifest, bytes) = ModelManifest::read_with_onnx(dir)?;
    let model = xfer_onnx::read_model_bytes(&bytes)?;
    Ok(Source {
        manifest,
        model,
        bytes: bytes.len(),
    })
}

/// The first `images` examples of the calibration split, in seeded order.
fn calibration_examples(config: &QuantizeConfig) -> Result<Vec<Example>> {
    let dataset = Dataset::open(&config.calibration)?;
    let mut examples = dataset.split(&config.split, config.seed)?;
    if examples.is_empty() {
        return Err(Error::Calibration(format!(
            "split `{}` of {} holds no image",
            config.split.name(),
            config.calibration.display()
        )));
    }
    examples.truncate(config.images);
    Ok(examples)
}

/// Runs the float model with the planned tensors exposed and returns each one's range.
fn calibrate(
    config: &QuantizeConfig,
    source: &Source,
    plan: &QdqPlan,
    examples: Vec<Example>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HashMap<String, Range>> {
    let names = plan.activations();
    let exposed = xfer_onnx::write_model_bytes(&plan.calibration_model(&source.model));
    let mut session = Model::from_bytes(&exposed, "the calibration graph", &config.session)?;
    let [h, w] = source.manifest.image_size;
    let loader_config = LoaderConfig::for_inference(h, w, config.batch_size, config.decode_threads);
    let mut collectors: HashMap<String, Collector> = names
        .iter()
        .map(|n| (n.clone(), Collector::new(config.method)))
        .collect();
    let total = examples.len();
    let mut done = 0;
    progress(done, total);
    for batch in BatchLoader::start(examples, loader_config)? {
        let batch = batch?;
        let input = InputTensor::F32(batch.pixels.view().into_dyn());
        let outputs = session.run(&[(source.manifest.input.as_str(), input)])?;
        update_collectors(&mut collectors, outputs)?;
        done += batch.examples.len();
        progress(done, total);
    }
    names
        .into_iter()
        .map(|n| {
            let range = collectors.get(&n).and_then(|c| c.range(config.method));
            range.map(|r| (n.clone(), r)).ok_or_else(|| {
                Error::Calibration(format!(
                    "tensor `{n}` held no finite value on the calibration images"
                ))
            })
        })
        .collect()
}

/// Adds one batch's outputs to the collectors (one tensor per task).
fn update_collectors(
    collectors: &mut HashMap<String, Collector>,
    outputs: Vec<(String, xfer_runtime::OutputTensor)>,
) -> Result<()> {
    let mut values: HashMap<String, ArrayD<f32>> = outputs
        .into_iter()
        .filter(|(n, _)| collectors.contains_key(n))
        .filter_map(|(n, t)| Some((n, t.into_f32()?)))
        .collect();
    if let Some(missing) = collectors.keys().find(|n| !values.contains_key(*n)) {
        return Err(Error::Calibration(format!(
            "ONNX Runtime returned no float tensor `{missing}`"
        )));
    }
    let mut pairs: Vec<(&mut Collector, ArrayD<f32>)> = collectors
        .iter_mut()
        .filter_map(|(n, c)| Some((c, values.remove(n)?)))
        .collect();
    pairs.par_iter_mut().for_each(|(c, a)| match a.as_slice() {
        Some(s) => c.update(s),
        None => c.update(&a.iter().copied().collect::<Vec<f32>>()),
    });
    Ok(())
}

/// JSON recorded in the model's metadata: method, images, source, nodes kept in float.
fn provenance(config: &QuantizeConfig, source: &Source, images: usize) -> String {
    serde_json::json!({
        "method": config.method.to_string(),
        "images": images,
        "calibration": config.calibration.display().to_string(),
        "split": config.split.name(),
        "seed": config.seed,
        "keep_float": config.keep_float,
        "source_fingerprint": source.manifest.fingerprint,
        "activations": "uint8 asymmetric per tensor",
        "weights": "int8 symmetric per channel",
    })
    .to_string()
}

/// The float manifest with the quantized graph's name, file and fingerprint; no training
/// graph; the source is the float model (its fingerprint as sha256).
fn quantized_manifest(
    float: &ModelManifest,
    config: &QuantizeConfig,
    images: usize,
    bytes: &[u8],
) -> ModelManifest {
    ModelManifest {
        name: format!("{}-int8", float.name),
        onnx: MODEL_FILE.to_owned(),
        training_onnx: None,
        source: ModelSource {
            package: format!(
                "xfer quantize of {} ({} calibration on {images} images of {})",
                float.name,
                config.method,
                config.calibration.display()
            ),
            file: config.model_dir.join(&float.onnx).display().to_string(),
            sha256: float.fingerprint.clone(),
        },
        fingerprint: fingerprint(bytes),
        xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..float.clone()
    }
}

/// Writes `model.onnx` then `model.json` into `dir`, removing an old manifest first so
/// that a manifest never describes another graph.
fn publish(dir: &Path, bytes: &[u8], manifest: &ModelManifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| xfer_fs::Error::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let manifest_path = dir.join(MANIFEST_FILE_NAME);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|source| xfer_fs::Error::Io {
            op: "removing the old manifest",
            path: manifest_path.clone(),
            source,
        })?;
    }
    xfer_fs::write_atomic(&dir.join(MODEL_FILE), bytes)?;
    manifest.write(dir)?;
    Ok(())
}
