//! Throughput of `xfer embed` next to bare ONNX Runtime on a pre-built batch, in one run.
//!
//! `cargo run --release -p xfer-cli --example embed_bench -- [IMAGES] [ROUNDS]`
//! (needs `target/release/xfer`, `models/xception` and the kitchenware photos from `just setup`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ndarray::{Array4, Axis};
use xfer_runtime::{Backbone, SessionOptions};

const PHOTOS: &str = "models/.source/kitchenware/datasets/kitchenware-data/images";
const BATCH: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let model_dir = PathBuf::from("models/xception");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(PHOTOS)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    photos.sort();
    if photos.is_empty() {
        return Err(format!("no photos in {PHOTOS}; run `just setup`").into());
    }

    // Bare ORT: one pre-decoded batch of 32 at 150x150, run `rounds` times after a warm-up.
    let mut backbone = Backbone::load(&model_dir, &SessionOptions::default())?;
    let mut batch = Array4::<f32>::zeros((BATCH, 3, 150, 150));
    for (i, mut slot) in batch.axis_iter_mut(Axis(0)).enumerate() {
        slot.assign(&xfer_data::load_image(&photos[i % photos.len()], 150, 150)?);
    }
    backbone.embed(batch.view())?;
    let t = Instant::now();
    for _ in 0..rounds {
        backbone.embed(batch.view())?;
    }
    let bare = t.elapsed().as_secs_f64();
    let bare_rate = (rounds * BATCH) as f64 / bare;
    println!(
        "bare ORT: {rounds} x batch {BATCH} at 150x150 in {bare:.2}s = {bare_rate:.1} images/s"
    );
    drop(backbone);

    // `xfer embed` on `count` JPEG paths (decode + resize + batch 32 + run), timed by itself and from outside.
    let paths: Vec<String> = (0..count)
        .map(|i| photos[i % photos.len()].to_string_lossy().into_owned())
        .collect();
    let t = Instant::now();
    let out = Command::new("target/release/xfer")
        .args([
            "embed",
            "--batch-size",
            "32",
            "--out",
            "/tmp/xfer_embed_bench.npy",
        ])
        .args(&paths)
        .output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "xfer embed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    print!("xfer embed: {}", String::from_utf8_lossy(&out.stderr));
    println!(
        "xfer embed process wall time (incl. start-up and model load): {wall:.2}s = {:.1} images/s",
        count as f64 / wall
    );
    Ok(())
}
