//! `xfer train-graph`: builds an ONNX training graph (forward + head + loss + gradients) and
//! its eval graph from a model folder, plus the initial parameters and a `graph.json` that
//! says what to feed, so training can be driven from any ONNX Runtime binding.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use xfer_autodiff::{CpuKernelChoice, HeadSpec, Loss, Trainable, TrainingGraphBuilder};
use xfer_runtime::ModelManifest;

use crate::args::{RuntimeArgs, parse_size};

/// Arguments of `xfer train-graph`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder (model.json; its training graph, else model.onnx).
    #[arg(long, default_value = "models/xception", value_name = "DIR")]
    pub model: PathBuf,
    /// Head: `dense:UNITS[:DROPOUT]` (Keras Dense on the features, dropout before it) or `none`
    /// (the feature output already is the logits).
    #[arg(long, default_value = "dense:1")]
    pub head: HeadSpec,
    /// What trains: `all`, `head`, `from:LAYER` (that Keras layer and everything after it),
    /// or `names:P1,P2` (parameter names).
    #[arg(long, default_value = "all")]
    pub trainable: Trainable,
    /// Loss: `bce` (binary cross-entropy on one logit, float labels) or `softmax`
    /// (softmax cross-entropy, int64 labels).
    #[arg(long, default_value = "bce")]
    pub loss: Loss,
    /// Input size `HxW` the graphs are built for (default: the manifest's image_size).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<[u32; 2]>,
    /// Seed of the head's Glorot-uniform initialization.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use this ONNX file instead of the manifest's graph.
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Kernels of the training graph's depthwise convolutions: `portable` (standard ONNX, every
    /// execution provider), `nchwc` (ONNX Runtime's CPU-only com.microsoft.nchwc kernels at the
    /// block size a probe finds on this CPU with this library; 2-3x faster per depthwise conv)
    /// or `auto` (nchwc for --device cpu when the probe finds a block).
    #[arg(long, value_name = "auto|portable|nchwc", default_value = "portable")]
    pub cpu_kernels: CpuKernelChoice,
    /// How the shape probe runs.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Output folder: training.onnx, eval.onnx, params.safetensors, graph.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `xfer train-graph`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let manifest = ModelManifest::read(&args.model)?;
    let source = match (&args.onnx, manifest.training_onnx_path(&args.model)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => {
            tracing::warn!(
                "{} lists no training graph; using {} (BatchNorm may be folded into the convolutions there)",
                args.model.display(),
                manifest.onnx
            );
            manifest.onnx_path(&args.model)
        }
    };
    let [h, w] = args.size.unwrap_or(manifest.image_size);
    let forward =
        xfer_onnx::read_model(&source).with_context(|| format!("reading {}", source.display()))?;
    let session = args.runtime.session_options();
    let kernels = args.cpu_kernels.resolve(&session)?;
    let graphs = TrainingGraphBuilder::new(forward)
        .features(&manifest.output)
        .head(args.head.clone())
        .trainable(args.trainable.clone())
        .loss(args.loss)
        .example_shape(&[3, i64::from(h), i64::from(w)])
        .seed(args.seed)
        .session_options(session)
        .cpu_kernels(kernels)
        .build()
        .with_context(|| format!("building the training graph of {}", source.display()))?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    xfer_onnx::write_model(&graphs.training, &args.out.join("training.onnx"))?;
    xfer_onnx::write_model(&graphs.eval, &args.out.join("eval.onnx"))?;
    let mut meta = HashMap::new();
    meta.insert("model".to_owned(), manifest.name.clone());
    meta.insert("source".to_owned(), source.display().to_string());
    xfer_autodiff::save_params(
        &args.out.join("params.safetensors"),
        &graphs.params,
        Some(meta),
    )?;
    xfer_fs::write_json(&args.out.join("graph.json"), &graphs.spec)?;

    let values: usize = graphs.params.iter().map(|p| p.numel()).sum();
    let nodes = |m: &xfer_onnx::ModelProto| m.graph.as_ref().map_or(0, |g| g.node.len());
    println!(
        "training graph for {} at {h}x{w} ({kernels:?} kernels): {} trainable tensors ({values} values), {} frozen; {} nodes (eval {})",
        manifest.name,
        graphs.params.len(),
        graphs.spec.frozen_parameters,
        nodes(&graphs.training),
        nodes(&graphs.eval),
    );
    println!(
        "wrote {}/{{training.onnx, eval.onnx, params.safetensors, graph.json}}",
        args.out.display()
    );
    Ok(())
}
