//! Extraction throughput: the full pipeline (`extract`: read, hash, decode, infer, write)
//! against bare ONNX Runtime `session.run` on the same images pre-decoded into the same
//! batches, measured in the same process, one after the other.
//!
//! `cargo run --release -p xfer-store --example extract_bench -- [DATA] [MODEL] [N] [BATCH]
//! [DEVICE] [PRECISION]` (defaults: data/cats_vs_dogs models/xception 512 32 cpu, and the
//! device's default precision). `openvino fp32|bf16` runs both sides on the OpenVINO provider
//! (onnxruntime-openvino, `just setup-openvino`); one process loads one ONNX Runtime, so
//! `scripts/bench.sh` runs this once per engine and divides by the `cpu` run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array4, Axis};
use xfer_runtime::{Backbone, Device, Precision, SessionOptions};
use xfer_store::extract::{ExtractConfig, SplitAssignment, extract};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map_or("data/cats_vs_dogs", String::as_str));
    let model = PathBuf::from(args.get(1).map_or("models/xception", String::as_str));
    let n: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let session = SessionOptions {
        device: args
            .get(4)
            .map_or(Ok(Device::Cpu), |s| s.parse::<Device>())?,
        precision: args.get(5).map(|s| s.parse::<Precision>()).transpose()?,
        ..SessionOptions::default()
    };

    let t = Instant::now();
    let mut backbone = Backbone::load(&model, &session)?;
    let session_load = t.elapsed().as_secs_f64();
    let [h, w] = backbone.manifest.image_size;
    let dataset = xfer_data::Dataset::open(&data)?;
    let mut examples = dataset.examples().to_vec();
    examples.sort_by_key(|e| xfer_data::example_key(&e.id));
    examples.truncate(n);
    let n = examples.len();

    // Bare ORT: the same images decoded up front (not timed); only session.run is timed.
    let mut batches = Vec::new();
    for chunk in examples.chunks(batch) {
        let mut pixels = Array4::<f32>::zeros((chunk.len(), 3, h as usize, w as usize));
        for (i, e) in chunk.iter().enumerate() {
            pixels
                .index_axis_mut(Axis(0), i)
                .assign(&xfer_data::load_image(&e.path, h, w)?);
        }
        batches.push(pixels);
    }
    backbone.embed(batches[0].view())?; // warm-up

    let mut config = ExtractConfig::new(&data, &model, Path::new("unused"))?;
    config.splits = SplitAssignment::parse("all")?;
    config.batch_size = batch;
    config.limit = Some(n);
    config.session = session.clone();

    // Alternate the two (the machine may be shared), keep the best round of each.
    let rounds = 2;
    let (mut bare, mut pipeline, mut in_ort, mut rerun) = (f64::MAX, f64::MAX, 0.0, f64::MAX);
    for round in 0..rounds {
        let t = Instant::now();
        for b in &batches {
            std::hint::black_box(backbone.embed(b.view())?);
        }
        let b = t.elapsed().as_secs_f64();
        // Pipeline: a fresh store; reading, hashing, decoding, session creation and writing included.
        let store = tempfile::tempdir()?;
        config.store = store.path().to_path_buf();
        let t = Instant::now();
        let summary = extract(&config, &mut |_| {})?;
        let p = t.elapsed().as_secs_f64();
        assert_eq!(summary.embedded, n);
        let t = Instant::now();
        let again = extract(&config, &mut |_| {})?;
        let r = t.elapsed().as_secs_f64();
        assert_eq!(again.embedded, 0);
        println!(
            "round {round}: bare {:.1} images/s, pipeline {:.1} images/s ({:.2}x), rerun {r:.3}s",
            n as f64 / b,
            n as f64 / p,
            b / p
        );
        bare = bare.min(b);
        if p < pipeline {
            pipeline = p;
            in_ort = summary.inference.as_secs_f64();
        }
        rerun = rerun.min(r);
    }

    println!(
        "images {n}, batch {batch}, model {} (session creation {session_load:.2}s)",
        model.display()
    );
    println!(
        "engine: device {}, precision {}, ONNX Runtime {}",
        backbone.model.device(),
        backbone.model.precision(),
        xfer_runtime::loaded_library().map_or(String::new(), |p| p.display().to_string())
    );
    println!(
        "bare ORT session.run   {:8.1} images/s ({bare:.2}s)",
        n as f64 / bare
    );
    println!(
        "extract pipeline       {:8.1} images/s ({pipeline:.2}s, {in_ort:.2}s of it in ORT) = {:.2}x bare",
        n as f64 / pipeline,
        bare / pipeline
    );
    println!(
        "cached rerun           {rerun:8.3}s = {:.0}x faster than the first run",
        pipeline / rerun
    );
    Ok(())
}
