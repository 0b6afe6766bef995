//! `xfer embed`: runs a backbone over images given on the command line and prints
//! a summary per image, or saves the feature vectors as `.npy` or `.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ndarray::{Array2, s};
use xfer_data::{BatchLoader, Example, LoaderConfig};
use xfer_runtime::Backbone;

use crate::args::{RuntimeArgs, parse_size};

/// Arguments of `xfer embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images to embed (JPEG, PNG, …).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Model folder (model.onnx + model.json).
    #[arg(long, default_value = "models/xception", value_name = "DIR")]
    pub model: PathBuf,
    /// Input size `HxW` (default: the manifest's image_size).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<[u32; 2]>,
    /// Images per inference call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// How the model runs.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Save the features: `.npy` (float32 [N, D], rows in argument order) or `.json`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `xfer embed`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let format = args.out.as_deref().map(OutFormat::of).transpose()?;
    let load_start = Instant::now();
    let mut backbone = Backbone::load(&args.model, &args.runtime.session_options())
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let load_time = load_start.elapsed();
    let size = args.size.unwrap_or(backbone.manifest.image_size);
    if size != backbone.manifest.image_size {
        check_input_size(&mut backbone, size)?;
    }
    let started = Instant::now();
    let (features, model_time) = embed_all(&mut backbone, &args.images, size, args.batch_size)?;
    let timing = Timing {
        load: load_time,
        total: started.elapsed(),
        model: model_time,
    };
    match (&args.out, format) {
        (Some(path), Some(format)) => {
            save(path, format, &backbone, &args.images, size, &features)?;
            println!(
                "wrote {} x {} features to {} (rows in argument order)",
                features.nrows(),
                features.ncols(),
                path.display()
            );
        }
        _ => print_summaries(&args.images, &features),
    }
    timing.report(args.images.len(), size, &backbone);
    Ok(())
}

/// Whether the model runs at `size` (one blank image); when it does not, the error states the
/// smallest square size it accepts, measured by bisection between 1 and its own size (a
/// model's strided, unpadded convolutions set a minimum: 7x7 for Xception's first two).
fn check_input_size(backbone: &mut Backbone, [h, w]: [u32; 2]) -> anyhow::Result<()> {
    let own = backbone.manifest.image_size;
    let name = backbone.manifest.name.clone();
    let mut runs = |side_h: u32, side_w: u32| {
        let blank = ndarray::Array4::<f32>::zeros((1, 3, side_h as usize, side_w as usize));
        backbone.embed(blank.view()).is_ok()
    };
    if runs(h, w) {
        return Ok(());
    }
    let (mut lo, mut hi) = (1u32, own[0].max(own[1]).max(1));
    if !runs(hi, hi) {
        bail!(
            "the model {name} does not run at --size {h}x{w}, nor at {hi}x{hi}; use its own size {}x{} (drop --size)",
            own[0],
            own[1]
        );
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if runs(mid, mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    bail!(
        "--size {h}x{w} is too small for the model {name}: its smallest input is {lo}x{lo} (its own size is {}x{}); pass --size of at least {lo}x{lo}",
        own[0],
        own[1]
    )
}

/// Features `[n, D]` of `paths` in argument order, decoded in parallel ahead of the
/// model, and the time spent in the model.
fn embed_all(
    backbone: &mut Backbone,
    paths: &[PathBuf],
    [h, w]: [u32; 2],
    batch_size: usize,
) -> anyhow::Result<(Array2<f32>, Duration)> {
    let mut features = Array2::<f32>::zeros((paths.len(), backbone.manifest.feature_dim));
    let examples: Vec<Example> = paths.iter().map(|p| Example::from_path(p)).collect();
    let config = LoaderConfig::for_inference(h, w, batch_size, None);
    let mut model_time = Duration::ZERO;
    let mut done = 0;
    for batch in BatchLoader::start(examples, config)? {
        let batch = batch?;
        let t = Instant::now();
        let out = backbone
            .embed(batch.pixels.view())
            .context("running the model")?;
        model_time += t.elapsed();
        features
            .slice_mut(s![done..done + out.nrows(), ..])
            .assign(&out);
        done += out.nrows();
    }
    Ok((features, model_time))
}

/// Wall-clock and model time of a run.
struct Timing {
    load: Duration,
    total: Duration,
    model: Duration,
}

impl Timing {
    /// Prints throughput on stderr.
    fn report(&self, n: usize, [h, w]: [u32; 2], backbone: &Backbone) {
        eprintln!(
            "embedded {n} images at {h}x{w} on {} in {:.2}s: {:.1} images/s (model {:.2}s = {:.1} images/s; model load {:.2}s)",
            backbone.model.device(),
            self.total.as_secs_f64(),
            n as f64 / self.total.as_secs_f64().max(1e-9),
            self.model.as_secs_f64(),
            n as f64 / self.model.as_secs_f64().max(1e-9),
            self.load.as_secs_f64()
        );
    }
}

/// Saves the features as `.npy` or as `.json` (with the paths and the model).
fn save(
    path: &Path,
    format: OutFormat,
    backbone: &Backbone,
    images: &[PathBuf],
    [h, w]: [u32; 2],
    features: &Array2<f32>,
) -> anyhow::Result<()> {
    match format {
        OutFormat::Npy => Ok(xfer_fs::write_atomic(path, &npy_bytes(features))?),
        OutFormat::Json => {
            let rows: Vec<serde_json::Value> = images
                .iter()
                .zip(features.rows())
                .map(|(p, row)| serde_json::json!({"path": p.display().to_string(), "embedding": row.to_vec()}))
                .collect();
            let doc = serde_json::json!({
                "model": backbone.manifest.name,
                "fingerprint": backbone.manifest.fingerprint,
                "image_size": [h, w],
                "feature_dim": features.ncols(),
                "images": rows,
            });
            Ok(xfer_fs::write_atomic(path, &serde_json::to_vec(&doc)?)?)
        }
    }
}

/// Prints one line per image: dimension, L2 norm and the first values.
fn print_summaries(images: &[PathBuf], features: &Array2<f32>) {
    for (path, row) in images.iter().zip(features.rows()) {
        let norm = row
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt();
        let first: Vec<String> = row.iter().take(5).map(|v| format!("{v:.4}")).collect();
        println!(
            "{}: dim {}, L2 norm {norm:.4}, first [{}, …]",
            path.display(),
            row.len(),
            first.join(", ")
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum OutFormat {
    Npy,
    Json,
}

impl OutFormat {
    /// The format of `--out`, by its extension.
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("npy") => Ok(OutFormat::Npy),
            Some("json") => Ok(OutFormat::Json),
            _ => bail!("--out {}: use a .npy or .json file name", path.display()),
        }
    }
}

/// A float32 C-order `.npy` (format version 1.0) of a 2-d array.
fn npy_bytes(a: &Array2<f32>) -> Vec<u8> {
    let (rows, cols) = a.dim();
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by '\n' to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + rows * cols * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let a = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
        let bytes = npy_bytes(&a);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii");
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(
            f32::from_le_bytes([data[20], data[21], data[22], data[23]]),
            5.0
        );
    }
}
