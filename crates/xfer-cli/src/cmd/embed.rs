//! `xfer embed`: runs a backbone over images given on the command line and prints
//! a summary per image, or saves the feature vectors as `.npy` or `.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ndarray::{Array2, Array4, Axis, s};
use xfer_runtime::{Backbone, Device, SessionOptions};

use super::convert::parse_size;

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
    #[arg(long, value_name = "HxW")]
    pub size: Option<String>,
    /// Images per inference call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Execution provider: cpu, cuda, tensorrt.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Fall back to the CPU if the device is unavailable.
    #[arg(long)]
    pub allow_cpu_fallback: bool,
    /// ONNX Runtime library (else ORT_DYLIB_PATH, else .ort/).
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// Threads inside one operator (default: ONNX Runtime's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Save the features: `.npy` (float32 [N, D], rows in argument order) or `.json`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// A decoded batch: the first image index and NCHW pixels.
type DecodedBatch = (usize, Array4<f32>);

fn decode_batch(paths: &[PathBuf], h: u32, w: u32) -> anyhow::Result<Array4<f32>> {
    let mut batch = Array4::<f32>::zeros((paths.len(), 3, h as usize, w as usize));
    for (i, path) in paths.iter().enumerate() {
        let img = xfer_data::load_image(path, h, w)
            .with_context(|| format!("loading {}", path.display()))?;
        batch.index_axis_mut(Axis(0), i).assign(&img);
    }
    Ok(batch)
}

/// Runs `xfer embed`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let format = match &args.out {
        None => None,
        Some(p) => match p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("npy") => Some(OutFormat::Npy),
            Some("json") => Some(OutFormat::Json),
            _ => bail!("--out {}: use a .npy or .json file name", p.display()),
        },
    };
    let options = SessionOptions {
        ort_lib: args.ort_lib.clone(),
        device: args.device,
        allow_cpu_fallback: args.allow_cpu_fallback,
        intra_threads: args.threads,
        disable_optimizations: false,
    };
    let load_start = Instant::now();
    let mut backbone = Backbone::load(&args.model, &options)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let load_time = load_start.elapsed();
    let [h, w] = match &args.size {
        Some(s) => parse_size(s)?,
        None => backbone.manifest.image_size,
    };
    let channels = 3;
    let dim = backbone.manifest.feature_dim;
    let n = args.images.len();
    let mut features = Array2::<f32>::zeros((n, dim));

    // Decode on a second thread while the model runs on the previous batch.
    let start = Instant::now();
    let mut model_time = Duration::ZERO;
    let paths = &args.images;
    let batch_size = args.batch_size;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<DecodedBatch>>(1);
        scope.spawn(move || {
            for (k, chunk) in paths.chunks(batch_size).enumerate() {
                let item = decode_batch(chunk, h, w).map(|b| (k * batch_size, b));
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        });
        for item in rx {
            let (first, pixels) = item?;
            debug_assert_eq!(pixels.shape()[1], channels);
            let t = Instant::now();
            let out = backbone.embed(pixels.view()).context("running the model")?;
            model_time += t.elapsed();
            features
                .slice_mut(s![first..first + out.nrows(), ..])
                .assign(&out);
        }
        Ok(())
    })?;
    let total = start.elapsed();

    match (&args.out, format) {
        (Some(path), Some(OutFormat::Npy)) => write_atomic(path, &npy_bytes(&features))?,
        (Some(path), Some(OutFormat::Json)) => {
            let rows: Vec<serde_json::Value> = args
                .images
                .iter()
                .zip(features.rows())
                .map(|(p, row)| serde_json::json!({"path": p.display().to_string(), "embedding": row.to_vec()}))
                .collect();
            let doc = serde_json::json!({
                "model": backbone.manifest.name,
                "fingerprint": backbone.manifest.fingerprint,
                "image_size": [h, w],
                "feature_dim": dim,
                "images": rows,
            });
            write_atomic(path, &serde_json::to_vec(&doc)?)?;
        }
        _ => {
            for (path, row) in args.images.iter().zip(features.rows()) {
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
    }
    if let Some(path) = &args.out {
        println!(
            "wrote {} x {} features to {} (rows in argument order)",
            n,
            dim,
            path.display()
        );
    }
    eprintln!(
        "embedded {n} images at {h}x{w} on {} in {:.2}s: {:.1} images/s (model {:.2}s = {:.1} images/s; model load {:.2}s)",
        backbone.model.device(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64().max(1e-9),
        model_time.as_secs_f64(),
        n as f64 / model_time.as_secs_f64().max(1e-9),
        load_time.as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum OutFormat {
    Npy,
    Json,
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

/// Writes `bytes` to a temporary file next to `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
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
