//! `xfer export`: backbone + head as one ONNX model (pixels → probabilities).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use xfer_head::{ExportOptions, Head};
use xfer_runtime::ModelManifest;
use xfer_store::ModelIdentity;

/// Arguments of `xfer export`.
#[derive(Debug, clap::Args)]
pub struct Args {
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

/// Runs `xfer export`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let head = Head::load(&args.head)?;
    let manifest = ModelManifest::read(&args.model)?;
    let bytes = read_checked_backbone(&args.model, &manifest)?;
    head.check_fingerprint(&manifest.fingerprint)
        .with_context(|| {
            format!(
                "the head in {} does not fit the backbone {}",
                args.head.display(),
                args.model.display()
            )
        })?;
    check_identity(&head, &manifest).with_context(|| {
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

/// Refuses a backbone folder that makes other embeddings than the rows the head was trained
/// on (same ONNX bytes at another input size, another preprocessing, ...), naming the field.
/// Heads written before the identity was recorded are checked by fingerprint only.
fn check_identity(head: &Head, manifest: &ModelManifest) -> anyhow::Result<()> {
    let Some(recorded) = &head.identity else {
        return Ok(());
    };
    let trained = ModelIdentity::from_json(&recorded.to_string(), "head.json")?;
    let mut backbone = ModelIdentity::of(manifest, xfer_data::ResizeMethod::Bilinear);
    // The exported model takes pixels already resized, and runs wherever its user runs it:
    // the resize method, provider and precision are the caller's.
    backbone.resize.clone_from(&trained.resize);
    backbone.provider.clone_from(&trained.provider);
    backbone.precision.clone_from(&trained.precision);
    if let Some((field, was, now)) = trained.difference(&backbone) {
        bail!(
            "the head was trained on embeddings made with {field} `{was}`, but this backbone folder makes them with {field} `{now}`; export with the model folder the store was extracted with, or extract with this one and train the head again"
        );
    }
    Ok(())
}

/// The backbone's ONNX bytes, refused unless their sha256 is the manifest's fingerprint.
fn read_checked_backbone(model_dir: &Path, manifest: &ModelManifest) -> anyhow::Result<Vec<u8>> {
    let onnx_path = manifest.onnx_path(model_dir);
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
    Ok(bytes)
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
