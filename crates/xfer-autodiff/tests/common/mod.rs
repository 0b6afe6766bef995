//! Shared helpers: random tensors, running models in ONNX Runtime, finite differences.
#![allow(dead_code)]

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{DataType, ModelProto, TypeProto, ValueInfoProto, type_proto};
use xfer_runtime::{InputTensor, Model, OutputTensor, SessionOptions};

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Distinct values (a shuffled grid with spacing `gap`, away from zero), for kinks.
    pub fn distinct(&mut self, n: usize, gap: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n)
            .map(|i| {
                let k = i as f32 - n as f32 / 2.0;
                if k >= 0.0 {
                    (k + 0.5) * gap
                } else {
                    (k - 0.5) * gap
                }
            })
            .collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
    pub fn array(&mut self, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), self.vec(n, lo, hi)).expect("shape")
    }
}

/// A float graph output `name` of unknown shape.
pub fn unshaped_float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

pub fn session(model: &ModelProto) -> Model {
    let bytes = xfer_onnx::write_model_bytes(model);
    Model::from_bytes(&bytes, "test", &SessionOptions::default()).expect("session")
}

/// Runs a model on float (and int64) inputs, returning outputs by name.
pub fn run(
    model: &mut Model,
    f32s: &[(&str, &ArrayD<f32>)],
    i64s: &[(&str, &ArrayD<i64>)],
) -> HashMap<String, ArrayD<f32>> {
    let mut feeds: Vec<(&str, InputTensor<'_>)> = f32s
        .iter()
        .map(|(n, a)| (*n, InputTensor::F32(a.view())))
        .collect();
    feeds.extend(i64s.iter().map(|(n, a)| (*n, InputTensor::I64(a.view()))));
    model
        .run(&feeds)
        .expect("run")
        .into_iter()
        .filter_map(|(n, t)| match t {
            OutputTensor::F32(a) => Some((n, a)),
            OutputTensor::I64(_) => None,
        })
        .collect()
}

/// Checks an analytic gradient against central differences of `loss(values)`.
/// Tolerance: |analytic - fd| <= atol + rtol * max(|analytic|, |fd|).
pub fn assert_close(what: &str, analytic: f64, fd: f64, atol: f64, rtol: f64) {
    let tol = atol + rtol * analytic.abs().max(fd.abs());
    assert!(
        (analytic - fd).abs() <= tol,
        "{what}: analytic {analytic:.6e} vs finite difference {fd:.6e} (tol {tol:.1e})"
    );
}

/// Indices to check: all when small, else an evenly spread sample (plus the last).
pub fn sample_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..max).map(|k| k * n / max).collect();
    v.push(n - 1);
    v
}
