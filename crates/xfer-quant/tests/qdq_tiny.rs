//! The QDQ rewrite of a tiny convolutional model built here (a Conv + Relu, a depthwise
//! Conv, a residual Add, a MaxPool), run in the real ONNX Runtime and checked against a
//! quantized forward pass computed by hand in this file (its own quantize/dequantize
//! formulas and convolution loops, in f64).

use std::collections::HashMap;

use ndarray::{Array4, ArrayD, IxDyn};
use xfer_onnx::quant::{QdqOptions, QdqPlan, Range};
use xfer_onnx::{Dim, GraphBuilder, ModelProto, NodeProto, attr};
use xfer_runtime::{Model, SessionOptions};

const C_IN: usize = 2;
const C: usize = 3;
const S: usize = 5;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Weights {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

fn weights() -> Weights {
    Weights {
        w1: values(C * C_IN * 9, 1),
        b1: values(C, 2).iter().map(|v| v * 0.3).collect(),
        w2: values(C * 9, 3),
        b2: values(C, 4).iter().map(|v| v * 0.3).collect(),
    }
}

/// x → Conv(3×3, pad 1) → Relu → r1 → depthwise Conv → c2; a = c2 + r1; p = MaxPool(a, 2×2/2).
fn tiny_model(w: &Weights) -> ModelProto {
    let mut g = GraphBuilder::new("tiny_qdq");
    g.input(
        "x",
        &[
            Dim::from("batch"),
            Dim::Fixed(C_IN as i64),
            Dim::Fixed(5),
            Dim::Fixed(5),
        ],
    );
    let w1 = g.constant_f32("w1", &[C as i64, C_IN as i64, 3, 3], &w.w1);
    let b1 = g.constant_f32("b1", &[C as i64], &w.b1);
    let w2 = g.constant_f32("w2", &[C as i64, 1, 3, 3], &w.w2);
    let b2 = g.constant_f32("b2", &[C as i64], &w.b2);
    let pads = attr::ints("pads", &[1, 1, 1, 1]);
    g.node_named("Conv", &["x", &w1, &b1], &["c1"], vec![pads.clone()]);
    g.node_named("Relu", &["c1"], &["r1"], vec![]);
    g.node_named(
        "Conv",
        &["r1", &w2, &b2],
        &["c2"],
        vec![pads, attr::int("group", C as i64)],
    );
    g.node_named("Add", &["c2", "r1"], &["a"], vec![]);
    g.node_named(
        "MaxPool",
        &["a"],
        &["p"],
        vec![
            attr::ints("kernel_shape", &[2, 2]),
            attr::ints("strides", &[2, 2]),
        ],
    );
    g.output(
        "p",
        &[
            Dim::from("batch"),
            Dim::Fixed(C as i64),
            Dim::Fixed(2),
            Dim::Fixed(2),
        ],
    );
    g.build_model()
}

fn session(model: &ModelProto) -> Model {
    let bytes = xfer_onnx::write_model_bytes(model);
    Model::from_bytes(&bytes, "tiny qdq", &SessionOptions::default()).expect("ORT loads the model")
}

fn input(seed: u64) -> ArrayD<f32> {
    let v: Vec<f32> = values(2 * C_IN * S * S, seed)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[2, C_IN, S, S]), v).expect("shape")
}

/// The independent arithmetic: uint8 asymmetric activation quantization.
#[derive(Debug, Clone, Copy)]
struct Act {
    scale: f64,
    zp: f64,
}

impl Act {
    fn of(min: f32, max: f32) -> Act {
        let (lo, hi) = (f64::from(min.min(0.0)), f64::from(max.max(0.0)));
        let scale = f64::from(((hi - lo) / 255.0) as f32);
        Act {
            scale,
            zp: (-lo / scale).round_ties_even().clamp(0.0, 255.0),
        }
    }
    fn fq(&self, x: f64) -> f64 {
        let q = ((x / self.scale).round_ties_even() + self.zp).clamp(0.0, 255.0);
        (q - self.zp) * self.scale
    }
}

/// Symmetric int8 per output channel: the dequantized weights and the scales.
fn fq_weights(w: &[f32], channels: usize) -> (Vec<f64>, Vec<f64>) {
    let per = w.len() / channels;
    let mut out = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for c in 0..channels {
        let chunk = &w[c * per..(c + 1) * per];
        let s = f64::from(chunk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
        scales.push(s);
        out.extend(
            chunk
                .iter()
                .map(|&v| (f64::from(v) / s).round().clamp(-127.0, 127.0) * s),
        );
    }
    (out, scales)
}

/// 3×3 convolution, pad 1, stride 1, `group` groups, on `x` [C_in, S, S].
fn conv(x: &Array4<f64>, n: usize, w: &[f64], b: &[f64], c_in: usize, group: usize) -> Array4<f64> {
    let per_group_in = c_in / group;
    let per_group_out = C / group;
    let mut y = Array4::<f64>::zeros((1, C, S, S));
    for o in 0..C {
        let g = o / per_group_out;
        for i in 0..S {
            for j in 0..S {
                let mut acc = b[o];
                for k in 0..per_group_in {
                    let ci = g * per_group_in + k;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (ii, jj) = (i as i64 + di as i64 - 1, j as i64 + dj as i64 - 1);
                            if ii < 0 || jj < 0 || ii >= S as i64 || jj >= S as i64 {
                                continue;
                            }
                            let wv = w[((o * per_group_in + k) * 3 + di) * 3 + dj];
                            acc += wv * x[[n, ci, ii as usize, jj as usize]];
                        }
                    }
                }
                y[[0, o, i, j]] = acc;
            }
        }
    }
    y
}

/// Ranges of x, r1, c2 and a on the calibration input (minmax), from the float model.
fn calibrate(model: &ModelProto, plan: &QdqPlan, x: &ArrayD<f32>) -> HashMap<String, Range> {
    let mut s = session(&plan.calibration_model(model));
    let outputs = s.run(&[("x", x.view().into())]).expect("calibration run");
    let mut ranges: HashMap<String, Range> = HashMap::new();
    ranges.insert(
        "x".into(),
        Range::new(
            x.iter().cloned().fold(f32::MAX, f32::min),
            x.iter().cloned().fold(f32::MIN, f32::max),
        ),
    );
    for (name, t) in outputs {
        let a = t.into_f32().expect("float");
        let r = Range::new(
            a.iter().cloned().fold(f32::MAX, f32::min),
            a.iter().cloned().fold(f32::MIN, f32::max),
        );
        ranges.insert(name, r);
    }
    ranges
}

fn producer<'a>(nodes: &'a [NodeProto], value: &str) -> &'a NodeProto {
    nodes
        .iter()
        .find(|n| n.output.iter().any(|o| o == value))
        .unwrap_or_else(|| panic!("nothing writes {value}"))
}

#[test]
fn qdq_rewrite_matches_a_hand_computed_quantized_forward_pass() {
    let w = weights();
    let model = tiny_model(&w);
    let plan = QdqPlan::new(&model, &QdqOptions::default()).expect("plan");
    assert_eq!(plan.activations(), vec!["x", "r1", "c2", "a"]);
    let calib = input(10);
    let ranges = calibrate(&model, &plan, &calib);
    let (quantized, summary) = plan.apply(&ranges).expect("apply");
    assert_eq!(summary.folded_relus, 1);
    assert_eq!(
        (summary.activations, summary.weights, summary.biases),
        (4, 2, 2)
    );

    // Structure: no Relu left; both Conv weights and biases come from per-channel DQs.
    let graph = quantized.graph.as_ref().expect("graph");
    assert!(graph.node.iter().all(|n| n.op_type != "Relu"));
    for conv in graph.node.iter().filter(|n| n.op_type == "Conv") {
        for slot in [1, 2] {
            let dq = producer(&graph.node, &conv.input[slot]);
            assert_eq!(dq.op_type, "DequantizeLinear");
            assert_eq!(dq.attr_int("axis", -1), 0);
            let scale = graph.initializer(&dq.input[1]).expect("scale initializer");
            assert_eq!(scale.dims, vec![C as i64], "one scale per output channel");
        }
        assert_eq!(
            producer(&graph.node, &conv.input[0]).op_type,
            "DequantizeLinear"
        );
    }

    // The hand-computed quantized forward pass on held-out input.
    let x = input(11);
    let mut s = session(&quantized);
    let out = s.run(&[("x", x.view().into())]).expect("run");
    let got = out[0].1.clone().into_f32().expect("f32");
    let act = |t: &str| Act::of(ranges[t].min, ranges[t].max);
    let (ax, ar1, ac2, aa) = (act("x"), act("r1"), act("c2"), act("a"));
    let (w1, s1) = fq_weights(&w.w1, C);
    let (w2, s2) = fq_weights(&w.w2, C);
    let qbias = |b: &[f32], sx: f64, sw: &[f64]| -> Vec<f64> {
        b.iter()
            .zip(sw)
            .map(|(&v, &s)| (f64::from(v) / (sx * s)).round() * sx * s)
            .collect()
    };
    let b1 = qbias(&w.b1, ax.scale, &s1);
    let b2 = qbias(&w.b2, ar1.scale, &s2);
    let xq = Array4::from_shape_fn((2, C_IN, S, S), |(n, c, i, j)| {
        ax.fq(f64::from(x[[n, c, i, j]]))
    });
    let mut max_diff = 0.0f64;
    let mut float_diff = 0.0f64;
    let mut f = session(&model);
    let float = f.run(&[("x", x.view().into())]).expect("float run")[0]
        .1
        .clone()
        .into_f32()
        .expect("f32");
    for n in 0..2 {
        // Relu folded: the uint8 quantization of r1 (zero point 0) clamps the negatives.
        let r1 = conv(&xq, n, &w1, &b1, C_IN, 1).mapv(|v| ar1.fq(v));
        let c2 = conv(&r1, 0, &w2, &b2, C, C).mapv(|v| ac2.fq(v));
        let a = (&c2 + &r1).mapv(|v| aa.fq(v));
        for c in 0..C {
            for i in 0..2 {
                for j in 0..2 {
                    let mut m = f64::MIN;
                    for di in 0..2 {
                        for dj in 0..2 {
                            m = m.max(a[[0, c, 2 * i + di, 2 * j + dj]]);
                        }
                    }
                    let g = f64::from(got[[n, c, i, j]]);
                    max_diff = max_diff.max((g - m).abs());
                    float_diff = float_diff.max((g - f64::from(float[[n, c, i, j]])).abs());
                }
            }
        }
    }
    // ORT's integer kernels requantize with a float multiplier: a value on a rounding tie
    // may land one level away, and such a level can move the next tensor by one level too.
    assert!(
        max_diff <= 2.0 * aa.scale + 1e-6,
        "ORT vs hand-computed: {max_diff} (a's step {})",
        aa.scale
    );
    // The quantized model is not the float one (the check above is not vacuous).
    assert!(
        float_diff > max_diff,
        "float diff {float_diff} vs {max_diff}"
    );
}

#[test]
fn kept_float_nodes_keep_their_float_weights() {
    let w = weights();
    let model = tiny_model(&w);
    let options = QdqOptions {
        keep_float: vec!["first".into()],
    };
    let plan = QdqPlan::new(&model, &options).expect("plan");
    // The first Conv stays float, so x needs no range and its Relu is not folded (the
    // Relu itself is quantized: its input c1 gets a range).
    assert_eq!(plan.activations(), vec!["c1", "r1", "c2", "a"]);
    let ranges = calibrate(&model, &plan, &input(10));
    let (quantized, summary) = plan.apply(&ranges).expect("apply");
    assert_eq!(
        (summary.weights, summary.folded_relus, summary.kept_float),
        (1, 0, 1)
    );
    let graph = quantized.graph.as_ref().expect("graph");
    let first = graph
        .node
        .iter()
        .find(|n| n.op_type == "Conv")
        .expect("conv");
    assert_eq!(first.input[1], "w1");
    assert!(graph.initializer("w1").is_some());
    let mut s = session(&quantized);
    s.run(&[("x", input(11).view().into())]).expect("runs");

    let unknown = QdqOptions {
        keep_float: vec!["block9".into()],
    };
    let err = QdqPlan::new(&model, &unknown).expect_err("unknown node");
    assert!(err.to_string().contains("block9"), "{err}");
}
