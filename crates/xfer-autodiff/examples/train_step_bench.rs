//! Training-step throughput against forward-only throughput, measured in the same run.
//!
//! `cargo run --release -p xfer-autodiff --example train_step_bench -- [--model models/xception]
//!  [--batch 32] [--size 150] [--iters 3] [--threads N]`
//!
//! Forward-only = the eval graph (backbone + Dense head, every parameter an initializer).
//! A training step = one run of the training graph (loss, logits, gradients; trainable
//! parameters fed as inputs) plus one Adam update of those parameters. Reported as images/s
//! and as ratios to forward-only, for `--trainable head` and `--trainable all`. Also times the
//! forward half of the all-layers training graph alone (parameters fed as inputs), which shows
//! how much of the step is the un-pre-packed forward and how much the backward.
//!
//! The all-layers graph is built with the kernels `xfer finetune` uses by default (portable,
//! standard ONNX); where the probe finds an NCHWc block on this CPU, the all-layers step with
//! ONNX Runtime's NCHWc depthwise kernels (`--cpu-kernels nchwc`) is timed in the same run and
//! printed next to it.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::{
    Adam, CpuKernelChoice, CpuKernels, HeadSpec, Optimizer, Parameter, Trainable,
    TrainingGraphBuilder, TrainingGraphs,
};
use xfer_runtime::{InputTensor, Model, ModelManifest, OutputTensor, SessionOptions};

struct Opts {
    model: PathBuf,
    batch: usize,
    size: i64,
    iters: usize,
    threads: Option<usize>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        model: PathBuf::from("models/xception"),
        batch: 32,
        size: 150,
        iters: 3,
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.model = PathBuf::from(val()?),
            "--batch" => o.batch = val()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--size" => o.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--iters" => o.iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--threads" => o.threads = Some(val()?.parse().map_err(|e| format!("--threads: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn session(
    model: &xfer_onnx::ModelProto,
    name: &str,
    opts: &SessionOptions,
) -> Result<Model, String> {
    Model::from_bytes(&xfer_onnx::write_model_bytes(model), name, opts).map_err(|e| e.to_string())
}

/// The forward part of a training graph: only the nodes `output` depends on, and only the
/// inputs they read. Run with the parameters fed as inputs, it is the forward a training step
/// pays for (no pre-packed weights, BatchNorm kept, MaxPool with its Indices output).
fn forward_part(model: &xfer_onnx::ModelProto, output: &str) -> xfer_onnx::ModelProto {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else {
        return m;
    };
    let mut needed: std::collections::HashSet<String> = [output.to_owned()].into();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.iter();
    g.node.retain(|_| *k.next().unwrap_or(&false));
    g.input.retain(|v| needed.contains(&v.name));
    g.initializer.retain(|t| needed.contains(&t.name));
    g.output.retain(|v| v.name == output);
    m
}

/// The dropout masks of a training graph for one step (seed 1), batch dimension filled in.
fn dropout_masks(tg: &TrainingGraphs, batch: usize, step: u64) -> Vec<(String, ArrayD<f32>)> {
    tg.spec.dropout_feeds(1, step, batch).expect("mask shape")
}

/// The parameters' current values as arrays to feed.
fn param_arrays(params: &[Parameter]) -> Vec<ArrayD<f32>> {
    params
        .iter()
        .map(|p| ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone()).expect("param shape"))
        .collect()
}

/// Feeds of a training graph: pixels, labels (left out for its forward half), dropout masks
/// and every trainable parameter.
fn training_feeds<'a>(
    tg: &'a TrainingGraphs,
    x: &'a ArrayD<f32>,
    labels: Option<&'a ArrayD<f32>>,
    masks: &'a [(String, ArrayD<f32>)],
    params: &'a [Parameter],
    arrays: &'a [ArrayD<f32>],
) -> Vec<(&'a str, InputTensor<'a>)> {
    let mut feeds = vec![(tg.spec.data_input.name.as_str(), InputTensor::F32(x.view()))];
    if let Some(labels) = labels {
        feeds.push(("labels", InputTensor::F32(labels.view())));
    }
    feeds.extend(
        masks
            .iter()
            .map(|(n, a)| (n.as_str(), InputTensor::F32(a.view()))),
    );
    feeds.extend(
        params
            .iter()
            .zip(arrays)
            .map(|(p, a)| (p.name.as_str(), InputTensor::F32(a.view()))),
    );
    feeds
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of one training step (graph run + Adam update).
fn time_training(
    tg: &TrainingGraphs,
    x: &ArrayD<f32>,
    labels: &ArrayD<f32>,
    o: &Opts,
    so: &SessionOptions,
) -> Result<(f64, f32), String> {
    // As `xfer finetune` runs it: no CPU arena, no memory pattern.
    let mut s = session(&tg.training, "training", &so.low_memory())?;
    let mut params: Vec<Parameter> = tg.params.clone();
    let mut adam = Adam::new(1e-5);
    let mut times = Vec::new();
    let mut loss = f32::NAN;
    for it in 0..=o.iters {
        let masks = dropout_masks(tg, o.batch, it as u64);
        let t0 = Instant::now();
        let arrays = param_arrays(&params);
        let feeds = training_feeds(tg, x, Some(labels), &masks, &params, &arrays);
        let out = s.run(&feeds).map_err(|e| e.to_string())?;
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(params.len());
        for p in &params {
            let name = format!("{}_grad", p.name);
            let g = out
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, t)| match t {
                    OutputTensor::F32(a) => Some(a.iter().copied().collect()),
                    OutputTensor::I64(_) => None,
                })
                .ok_or_else(|| format!("missing {name}"))?;
            grads.push(g);
        }
        if let Some((_, OutputTensor::F32(l))) = out.iter().find(|(n, _)| n == "loss") {
            loss = l.iter().copied().next().unwrap_or(f32::NAN);
        }
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        adam.step(&mut params, &refs).map_err(|e| e.to_string())?;
        if it > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((median(times), loss))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let o = parse()?;
    let manifest = ModelManifest::read(&o.model).map_err(|e| e.to_string())?;
    let path = manifest
        .training_onnx_path(&o.model)
        .unwrap_or_else(|| manifest.onnx_path(&o.model));
    let forward = xfer_onnx::read_model(&path).map_err(|e| e.to_string())?;
    let so = SessionOptions {
        intra_threads: o.threads,
        ..Default::default()
    };
    let kernels = CpuKernelChoice::default()
        .resolve(&so)
        .map_err(|e| e.to_string())?;
    let nchwc = CpuKernelChoice::Auto
        .resolve(&so)
        .map_err(|e| e.to_string())?;
    let build = |t: Trainable, kernels: CpuKernels| {
        TrainingGraphBuilder::new(forward.clone())
            .features(&manifest.output)
            .head(HeadSpec::Dense {
                units: 1,
                dropout: 0.2,
            })
            .trainable(t)
            .example_shape(&[3, o.size, o.size])
            .cpu_kernels(kernels)
            .build()
            .map_err(|e| e.to_string())
    };
    let t0 = Instant::now();
    let head = build(Trainable::Head, kernels)?;
    let all = build(Trainable::All, kernels)?;
    let all_nchwc = match nchwc {
        CpuKernels::Nchwc { .. } if nchwc != kernels => Some(build(Trainable::All, nchwc)?),
        _ => None,
    };
    eprintln!("built graphs in {:.1} s", t0.elapsed().as_secs_f64());
    if let Ok(dump) = std::env::var("XFER_BENCH_DUMP") {
        // For profiling with other tools: the all-layers training graph.
        xfer_onnx::write_model(&all.training, std::path::Path::new(&dump))
            .map_err(|e| e.to_string())?;
        eprintln!("wrote {dump}");
        return Ok(());
    }

    let n = o.batch;
    let x = ArrayD::from_shape_fn(IxDyn(&[n, 3, o.size as usize, o.size as usize]), |i| {
        ((i[0] * 7 + i[1] * 13 + i[2] * 3 + i[3]) % 256) as f32
    });
    let labels = ArrayD::from_shape_fn(IxDyn(&[n]), |i| (i[0] % 2) as f32);

    // Forward only: the eval graph. Timed before and after the training steps (2x the
    // iterations each time, it is cheap) and the median taken over both, so that a machine
    // whose speed drifts during the run biases the ratios less.
    let mut fwd = session(&head.eval, "eval", &so)?;
    let mut fwd_times = Vec::new();
    let mut time_forward = |fwd_times: &mut Vec<f64>| -> Result<(), String> {
        for it in 0..=2 * o.iters {
            let t = Instant::now();
            fwd.run(&[(
                head.spec.data_input.name.as_str(),
                InputTensor::F32(x.view()),
            )])
            .map_err(|e| e.to_string())?;
            if it > 0 {
                fwd_times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    };
    time_forward(&mut fwd_times)?;

    // The forward half of the all-layers training step, parameters fed as inputs.
    let mut train_fwd = session(
        &forward_part(&all.training, "logits"),
        "training forward",
        &so,
    )?;
    let arrays = param_arrays(&all.params);
    let masks = dropout_masks(&all, o.batch, 0);
    let feeds = training_feeds(&all, &x, None, &masks, &all.params, &arrays);
    let mut times = Vec::new();
    for it in 0..=o.iters {
        let t = Instant::now();
        train_fwd.run(&feeds).map_err(|e| e.to_string())?;
        if it > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let train_fwd_s = median(times);
    drop(train_fwd);

    let (head_s, head_loss) = time_training(&head, &x, &labels, &o, &so)?;
    let (all_s, all_loss) = time_training(&all, &x, &labels, &o, &so)?;
    let other = match &all_nchwc {
        Some(tg) => Some(time_training(tg, &x, &labels, &o, &so)?),
        None => None,
    };
    time_forward(&mut fwd_times)?;
    let fwd_s = median(fwd_times);
    let ips = |s: f64| n as f64 / s;
    println!(
        "model {} {}x{} batch {n}, {} timed iterations (median), threads {:?}",
        manifest.name, o.size, o.size, o.iters, o.threads
    );
    println!(
        "forward-only      {:8.2} images/s  ({:.3} s/batch)",
        ips(fwd_s),
        fwd_s
    );
    println!(
        "train head-only   {:8.2} images/s  ({:.3} s/step)  ratio {:.2}x  (loss {head_loss:.4})",
        ips(head_s),
        head_s,
        fwd_s / head_s
    );
    println!(
        "train all layers  {:8.2} images/s  ({:.3} s/step)  ratio {:.2}x  (loss {all_loss:.4}; {kernels:?} kernels, finetune's default)",
        ips(all_s),
        all_s,
        fwd_s / all_s
    );
    let (nchwc_s, _) = other.unwrap_or((all_s, all_loss));
    if let Some((_, loss)) = other {
        println!(
            "  {nchwc:?} kernels (--cpu-kernels nchwc) {:8.2} images/s  ({:.3} s/step)  ratio {:.2}x  (loss {loss:.4}); {:.2}x the default's speed",
            ips(nchwc_s),
            nchwc_s,
            fwd_s / nchwc_s,
            all_s / nchwc_s
        );
    }
    println!(
        "  its forward half, parameters as graph inputs: {:8.2} images/s  ({:.3} s/batch, {:.2}x the \
         forward-only time); the step costs {:.2}x that forward",
        ips(train_fwd_s),
        train_fwd_s,
        train_fwd_s / fwd_s,
        all_s / train_fwd_s
    );
    println!(
        "{{\"forward_ips\":{:.3},\"head_ips\":{:.3},\"all_ips\":{:.3},\"head_ratio\":{:.3},\"all_ratio\":{:.3},\"all_forward_half_ips\":{:.3},\"all_nchwc_ips\":{:.3}}}",
        ips(fwd_s),
        ips(head_s),
        ips(all_s),
        fwd_s / head_s,
        fwd_s / all_s,
        ips(train_fwd_s),
        ips(nchwc_s)
    );
    Ok(())
}
