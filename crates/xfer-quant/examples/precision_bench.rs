//! Bare ONNX Runtime throughput of one model folder on pre-decoded demo images, for the
//! precision rows of `just bench` (one process per model, so each peak RSS is its own).
//!
//! `cargo run --release -p xfer-quant --example precision_bench -- MODEL_DIR [ROUNDS] [DEVICE] [PRECISION]`
//!
//! Prints `bare <model> on <device>: <R> images/s (median of N batches of 32 at HxW), peak RSS <G> GB`.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{Array4, Axis};
use xfer_runtime::{Backbone, Device, Precision, SessionOptions};

const DATA: &str = "data/cats_vs_dogs";
const BATCH: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_dir = PathBuf::from(
        args.next()
            .ok_or("usage: precision_bench MODEL_DIR [ROUNDS] [DEVICE] [PRECISION]")?,
    );
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    let device: Device = args.next().as_deref().unwrap_or("cpu").parse()?;
    let precision: Option<Precision> = args.next().map(|p| p.parse()).transpose()?;
    let options = SessionOptions {
        device,
        precision,
        ..SessionOptions::default()
    };
    let mut backbone = Backbone::load(&model_dir, &options)?;
    let [h, w] = backbone.manifest.image_size;
    let dataset = xfer_data::Dataset::open(std::path::Path::new(DATA))?;
    let mut batch = Array4::<f32>::zeros((BATCH, 3, h as usize, w as usize));
    for (slot, example) in batch.axis_iter_mut(Axis(0)).zip(dataset.examples()) {
        let mut slot = slot;
        slot.assign(&xfer_data::load_image(&example.path, h, w)?);
    }
    backbone.embed(batch.view())?;
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        backbone.embed(batch.view())?;
        rates.push(BATCH as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "bare {} on {}: {median:.1} images/s (median of {} batches of {BATCH} at {h}x{w}), peak RSS {:.2} GB",
        backbone.manifest.name,
        backbone.model.device(),
        rates.len(),
        peak_rss_gb()
    );
    Ok(())
}

/// VmHWM of this process, in GB (0 where /proc is absent).
fn peak_rss_gb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e6)
}
