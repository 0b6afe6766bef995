//! Runs a `xfer train-graph` output folder once on a deterministic batch and writes what came
//! out as JSON, so another ONNX Runtime binding can be compared with the Rust side
//! (`tests/python/test_training_graph.py`).
//!
//! `cargo run -p xfer-autodiff --example dump_training_outputs -- DIR [--batch 2]`
//! writes `DIR/rust_outputs.json`: loss, logits, and for every gradient its sum, sum of
//! absolute values and first 8 values. Batch: pixel = (x*3 + y*5 + 40c + 97n) mod 256,
//! labels n mod 2, dropout masks `dropout_mask(seed 1, step 0, stream, ...)`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::{GraphSpec, load_params};
use xfer_runtime::{InputTensor, Model, OutputTensor, SessionOptions};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: dump_training_outputs DIR [--batch N]")?,
    );
    let mut batch = 2usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--batch" => {
                batch = args
                    .next()
                    .ok_or("--batch needs a value")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let spec: GraphSpec = serde_json::from_str(
        &std::fs::read_to_string(dir.join("graph.json")).map_err(|e| format!("graph.json: {e}"))?,
    )
    .map_err(|e| format!("graph.json: {e}"))?;
    let params = load_params(&dir.join("params.safetensors")).map_err(|e| e.to_string())?;
    let mut model = Model::load(&dir.join("training.onnx"), &SessionOptions::default())
        .map_err(|e| e.to_string())?;
    let dims: Vec<usize> = spec
        .data_input
        .shape
        .iter()
        .map(|&d| if d < 0 { batch } else { d as usize })
        .collect();
    let x = ArrayD::from_shape_fn(IxDyn(&dims), |i| {
        ((i[3] * 3 + i[2] * 5 + 40 * i[1] + 97 * i[0]) % 256) as f32
    });
    let labels_f = ArrayD::from_shape_fn(IxDyn(&[batch]), |i| (i[0] % 2) as f32);
    let labels_i = ArrayD::from_shape_fn(IxDyn(&[batch]), |i| (i[0] % 2) as i64);
    let masks = spec.dropout_feeds(1, 0, batch).map_err(|e| e.to_string())?;
    let arrays: Vec<ArrayD<f32>> = params
        .iter()
        .map(|p| ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone()).expect("param"))
        .collect();
    let mut feeds: Vec<(&str, InputTensor<'_>)> =
        vec![(spec.data_input.name.as_str(), InputTensor::F32(x.view()))];
    feeds.push((
        "labels",
        if spec.labels.dtype == "int64" {
            InputTensor::I64(labels_i.view())
        } else {
            InputTensor::F32(labels_f.view())
        },
    ));
    feeds.extend(
        masks
            .iter()
            .map(|(n, a)| (n.as_str(), InputTensor::F32(a.view()))),
    );
    feeds.extend(
        params
            .iter()
            .zip(&arrays)
            .map(|(p, a)| (p.name.as_str(), InputTensor::F32(a.view()))),
    );
    let out = model.run(&feeds).map_err(|e| e.to_string())?;
    let mut json = serde_json::Map::new();
    let mut grads = BTreeMap::new();
    for (name, t) in out {
        let OutputTensor::F32(a) = t else { continue };
        let v: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
        if name == "loss" {
            json.insert("loss".to_owned(), serde_json::json!(v[0]));
        } else if name == "logits" {
            json.insert("logits".to_owned(), serde_json::json!(v));
        } else if let Some(p) = name.strip_suffix("_grad") {
            grads.insert(
                p.to_owned(),
                serde_json::json!({
                    "sum": v.iter().sum::<f64>(),
                    "abs_sum": v.iter().map(|x| x.abs()).sum::<f64>(),
                    "first": v.iter().take(8).copied().collect::<Vec<_>>(),
                }),
            );
        }
    }
    json.insert("grads".to_owned(), serde_json::json!(grads));
    json.insert("batch".to_owned(), serde_json::json!(batch));
    let path = dir.join("rust_outputs.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
