//! Gradient checks for every supported operator: the vector-Jacobian products built by
//! `vjp_model` (run in ONNX Runtime) against central finite differences of
//! `L = sum(r * y)` (r a fixed random cotangent), also computed by running the graph in
//! ONNX Runtime, accumulated in float64.
//!
//! Step sizes and tolerances (float32 forward): eps = 1e-2 for ops that are linear or smooth
//! on the sampled inputs (truncation error O(eps^2 f''') ~ 1e-4), atol = 2e-3 and rtol = 1e-2:
//! the rounding error of L is about 1e-7 * |y| * sqrt(#outputs) ~ 1e-5, divided by 2 eps that
//! is ~5e-4. Piecewise-linear ops (Relu, MaxPool, Clip) use inputs on a shuffled grid with
//! spacing 0.02 and eps = 2e-3, so no perturbation crosses a kink or a tie.

mod common;

use std::collections::HashMap;

use common::{Rng, assert_close, run, sample_indices, session, unshaped_float_output};
use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::vjp_model;
use xfer_onnx::{
    AttributeProto, DataType, Dim, GraphBuilder, ModelProto, TensorProto, ValueInfoProto, attr,
};
use xfer_runtime::SessionOptions;

struct Case {
    g: GraphBuilder,
    values: Vec<(String, ArrayD<f32>)>,
    wrt: Vec<String>,
    eps: f32,
    atol: f64,
    rtol: f64,
}

impl Case {
    fn new() -> Self {
        Case {
            g: GraphBuilder::new("case"),
            values: Vec::new(),
            wrt: Vec::new(),
            eps: 1e-2,
            atol: 2e-3,
            rtol: 1e-2,
        }
    }

    /// A graph input `name` with these values; differentiated when `diff`.
    fn input(&mut self, name: &str, a: ArrayD<f32>, diff: bool) -> &mut Self {
        let dims: Vec<Dim> = a.shape().iter().map(|&d| Dim::Fixed(d as i64)).collect();
        self.g.input(name, &dims);
        self.values.push((name.to_owned(), a));
        if diff {
            self.wrt.push(name.to_owned());
        }
        self
    }

    /// An initializer `name` (a parameter); differentiated when `diff`.
    fn param(&mut self, name: &str, a: ArrayD<f32>, diff: bool) -> &mut Self {
        let dims: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = a.iter().copied().collect();
        self.g
            .initializer(TensorProto::from_f32(name, &dims, &data));
        if diff {
            self.values.push((name.to_owned(), a));
            self.wrt.push(name.to_owned());
        }
        self
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> &mut Self {
        self.g.node_named(op, inputs, outputs, attrs);
        self
    }

    fn check(&mut self, rng: &mut Rng) {
        let mut graph = self.g.clone().build();
        graph.output = vec![unshaped_float_output("y")];
        let forward = ModelProto::with_graph(graph, 17);
        let wrt: Vec<&str> = self.wrt.iter().map(String::as_str).collect();
        let vjp =
            vjp_model(&forward, "y", &wrt, None, &SessionOptions::default()).expect("vjp graph");
        let mut fwd = session(&forward);
        let inputs_only: Vec<(&str, &ArrayD<f32>)> = self
            .values
            .iter()
            .filter(|(n, _)| {
                forward
                    .graph
                    .as_ref()
                    .expect("graph")
                    .initializer(n)
                    .is_none()
            })
            .map(|(n, a)| (n.as_str(), a))
            .collect();
        let y = run(&mut fwd, &inputs_only, &[])["y"].clone();
        let r = rng.array(y.shape(), -1.0, 1.0);
        let mut s = session(&vjp);
        let mut values: HashMap<String, ArrayD<f32>> = self.values.iter().cloned().collect();
        let loss = |s: &mut xfer_runtime::Model,
                    values: &HashMap<String, ArrayD<f32>>|
         -> (f64, HashMap<String, ArrayD<f32>>) {
            let mut feeds: Vec<(&str, &ArrayD<f32>)> =
                values.iter().map(|(n, a)| (n.as_str(), a)).collect();
            feeds.push(("y_grad", &r));
            let out = run(s, &feeds, &[]);
            let l = out["y"]
                .iter()
                .zip(r.iter())
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            (l, out)
        };
        let (_, out) = loss(&mut s, &values);
        assert!(
            (&out["y"] - &y).iter().all(|d| d.abs() < 1e-5),
            "vjp graph's forward output differs"
        );
        for w in &self.wrt {
            let an = out[&format!("{w}_grad")].clone();
            assert_eq!(an.shape(), values[w].shape(), "{w}_grad shape");
            for j in sample_indices(an.len(), 48) {
                let orig = values[w].as_slice().expect("contiguous")[j];
                values.get_mut(w).expect("w").as_slice_mut().expect("c")[j] = orig + self.eps;
                let (lp, _) = loss(&mut s, &values);
                values.get_mut(w).expect("w").as_slice_mut().expect("c")[j] = orig - self.eps;
                let (lm, _) = loss(&mut s, &values);
                values.get_mut(w).expect("w").as_slice_mut().expect("c")[j] = orig;
                let fd = (lp - lm) / (2.0 * f64::from(self.eps));
                let a = f64::from(an.as_slice().expect("c")[j]);
                assert_close(&format!("d/d{w}[{j}]"), a, fd, self.atol, self.rtol);
            }
        }
    }
}

fn arr(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape")
}

fn conv_case(seed: u64, x: &[usize], w: &[usize], bias: bool, attrs: Vec<AttributeProto>) {
    let mut rng = Rng(seed);
    let mut c = Case::new();
    c.input("x", rng.array(x, -1.0, 1.0), true);
    c.param("w", rng.array(w, -1.0, 1.0), true);
    let mut ins = vec!["x", "w"];
    if bias {
        c.param("b", rng.array(&[w[0]], -1.0, 1.0), true);
        ins.push("b");
    }
    c.node("Conv", &ins, &["y"], attrs);
    c.check(&mut rng);
}

#[test]
fn conv_full_3x3_stride1_explicit_pads_with_bias() {
    conv_case(
        1,
        &[2, 3, 6, 5],
        &[4, 3, 3, 3],
        true,
        vec![attr::ints("pads", &[1, 1, 1, 1])],
    );
}

#[test]
fn conv_full_3x3_valid_stride2_odd_size() {
    // 9 -> 4 with stride 2, 'valid': the weight gradient must crop the unused last row/column.
    conv_case(
        2,
        &[2, 3, 9, 9],
        &[4, 3, 3, 3],
        false,
        vec![attr::ints("strides", &[2, 2])],
    );
}

#[test]
fn conv_full_same_upper_stride2_odd_size() {
    conv_case(
        3,
        &[2, 3, 7, 7],
        &[5, 3, 3, 3],
        false,
        vec![
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
}

#[test]
fn conv_same_lower_stride2_even_size_asymmetric_kernel() {
    conv_case(
        4,
        &[2, 2, 8, 6],
        &[3, 2, 2, 3],
        true,
        vec![
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_LOWER"),
        ],
    );
}

#[test]
fn conv_depthwise_stride2_same_upper_odd_size() {
    conv_case(
        5,
        &[2, 4, 7, 7],
        &[4, 1, 3, 3],
        false,
        vec![
            attr::int("group", 4),
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
}

#[test]
fn conv_depthwise_stride1_same_upper() {
    conv_case(
        6,
        &[2, 4, 6, 5],
        &[4, 1, 3, 3],
        false,
        vec![
            attr::int("group", 4),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
}

#[test]
fn conv_depthwise_stride1_asymmetric_pads_rectangular_kernel() {
    // The per-row MatMul + diagonal weight gradient with a 2x3 kernel and uneven pads.
    conv_case(
        27,
        &[3, 5, 6, 7],
        &[5, 1, 2, 3],
        true,
        vec![attr::int("group", 5), attr::ints("pads", &[1, 0, 0, 2])],
    );
}

#[test]
fn conv_depthwise_stride1_wide_map_uses_the_grouped_conv() {
    // Padded width 132 > 128: the grouped-Conv weight gradient instead of the diagonal one.
    conv_case(
        30,
        &[2, 3, 4, 130],
        &[3, 1, 3, 3],
        false,
        vec![attr::int("group", 3), attr::ints("pads", &[1, 1, 1, 1])],
    );
}

#[test]
fn conv_depthwise_stride1_valid() {
    conv_case(
        28,
        &[2, 3, 6, 5],
        &[3, 1, 3, 3],
        false,
        vec![attr::int("group", 3)],
    );
}

#[test]
fn conv_depthwise_multiplier2_with_bias() {
    conv_case(
        7,
        &[2, 3, 5, 5],
        &[6, 1, 3, 3],
        true,
        vec![attr::int("group", 3), attr::ints("pads", &[1, 0, 1, 2])],
    );
}

#[test]
fn conv_pointwise_1x1() {
    conv_case(8, &[2, 5, 4, 3], &[6, 5, 1, 1], false, vec![]);
}

#[test]
fn conv_pointwise_1x1_large_map() {
    // 33x33 >= 1024 positions: the batched-MatMul weight gradient.
    conv_case(26, &[2, 3, 33, 33], &[2, 3, 1, 1], false, vec![]);
}

#[test]
fn conv_1x1_stride2_same_upper_odd_size() {
    // Xception's residual convolutions.
    conv_case(
        9,
        &[2, 3, 7, 7],
        &[4, 3, 1, 1],
        true,
        vec![
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
}

#[test]
fn conv_full_dilated_mixed_strides_uneven_pads() {
    // The im2col weight gradient: one strided Slice per tap of the padded input.
    conv_case(
        29,
        &[2, 3, 9, 8],
        &[4, 3, 3, 2],
        true,
        vec![
            attr::ints("dilations", &[2, 1]),
            attr::ints("strides", &[1, 2]),
            attr::ints("pads", &[2, 1, 1, 0]),
        ],
    );
}

#[test]
fn conv_grouped_dilated() {
    conv_case(
        10,
        &[2, 4, 7, 7],
        &[6, 2, 3, 3],
        false,
        vec![
            attr::int("group", 2),
            attr::ints("dilations", &[2, 2]),
            attr::ints("pads", &[2, 1, 2, 1]),
        ],
    );
}

#[test]
fn batch_normalization_inference_mode() {
    let mut rng = Rng(11);
    let mut c = Case::new();
    c.input("x", rng.array(&[2, 3, 4, 5], -2.0, 2.0), true);
    c.param("scale", rng.array(&[3], 0.5, 1.5), true);
    c.param("bias", rng.array(&[3], -1.0, 1.0), true);
    c.param("mean", rng.array(&[3], -0.5, 0.5), false);
    c.param("var", rng.array(&[3], 0.5, 2.0), false);
    c.node(
        "BatchNormalization",
        &["x", "scale", "bias", "mean", "var"],
        &["y"],
        vec![attr::float("epsilon", 1e-3)],
    );
    c.check(&mut rng);
}

#[test]
fn relu_sigmoid_tanh_chain() {
    let mut rng = Rng(12);
    let mut c = Case::new();
    c.eps = 2e-3;
    let x = rng.distinct(2 * 3 * 4, 0.02);
    c.input("x", arr(&[2, 3, 4], x), true);
    c.node("Relu", &["x"], &["r"], vec![]);
    c.node("Sigmoid", &["x"], &["s"], vec![]);
    c.node("Tanh", &["x"], &["t"], vec![]);
    c.node("Add", &["r", "s"], &["rs"], vec![]);
    c.node("Add", &["rs", "t"], &["y"], vec![]);
    c.check(&mut rng);
}

#[test]
fn clip_passes_gradient_only_inside() {
    let mut rng = Rng(13);
    let mut c = Case::new();
    c.eps = 2e-3;
    let x = rng.distinct(40, 0.02);
    c.input("x", arr(&[2, 20], x), true);
    // Bounds between grid points (the grid is odd multiples of 0.01).
    c.param("lo", arr(&[], vec![-0.12]), false);
    c.param("hi", arr(&[], vec![0.2]), false);
    c.node("Clip", &["x", "lo", "hi"], &["y"], vec![]);
    c.check(&mut rng);
}

#[test]
fn add_sub_mul_div_with_broadcasting() {
    let mut rng = Rng(14);
    let mut c = Case::new();
    c.input("a", rng.array(&[2, 3, 4, 5], -1.0, 1.0), true);
    c.input("b", rng.array(&[1, 3, 1, 5], -1.0, 1.0), true);
    c.param("c", rng.array(&[3, 1, 1], -1.0, 1.0), true);
    c.param("d", rng.array(&[5], 1.0, 2.0), true);
    c.node("Add", &["a", "b"], &["ab"], vec![]);
    c.node("Mul", &["ab", "c"], &["abc"], vec![]);
    c.node("Sub", &["c", "abc"], &["s"], vec![]);
    c.node("Div", &["s", "d"], &["q"], vec![]);
    c.node("Div", &["b", "d"], &["bd"], vec![]);
    c.node("Mul", &["q", "bd"], &["y"], vec![]);
    c.check(&mut rng);
}

#[test]
fn maxpool_overlapping_windows_same_upper_odd() {
    let mut rng = Rng(15);
    let mut c = Case::new();
    c.eps = 2e-3;
    let x = rng.distinct(2 * 2 * 7 * 7, 0.02);
    c.input("x", arr(&[2, 2, 7, 7], x), true);
    c.node(
        "MaxPool",
        &["x"],
        &["y"],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
    c.check(&mut rng);
}

#[test]
fn maxpool_stride1_explicit_pads_after_conv() {
    // Windows overlap heavily (stride 1): one input can be the max of up to 9 windows.
    let mut rng = Rng(16);
    let mut c = Case::new();
    c.eps = 2e-3;
    let x = rng.distinct(2 * 3 * 5 * 6, 0.02);
    c.input("x", arr(&[2, 3, 5, 6], x), true);
    c.node(
        "MaxPool",
        &["x"],
        &["y"],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("pads", &[1, 1, 1, 1]),
        ],
    );
    c.check(&mut rng);
}

#[test]
fn average_pool_excluding_and_including_pads() {
    for (seed, include) in [(17u64, 0i64), (18, 1)] {
        let mut rng = Rng(seed);
        let mut c = Case::new();
        c.input("x", rng.array(&[2, 3, 7, 6], -1.0, 1.0), true);
        c.node(
            "AveragePool",
            &["x"],
            &["y"],
            vec![
                attr::ints("kernel_shape", &[3, 3]),
                attr::ints("strides", &[2, 2]),
                attr::ints("pads", &[1, 1, 1, 1]),
                attr::int("count_include_pad", include),
            ],
        );
        c.check(&mut rng);
    }
}

#[test]
fn global_average_pool_flatten_gemm() {
    let mut rng = Rng(19);
    let mut c = Case::new();
    c.input("x", rng.array(&[2, 4, 3, 5], -1.0, 1.0), true);
    c.param("w", rng.array(&[3, 4], -1.0, 1.0), true);
    c.param("b", rng.array(&[3], -1.0, 1.0), true);
    c.node("GlobalAveragePool", &["x"], &["p"], vec![]);
    c.node("Flatten", &["p"], &["f"], vec![]);
    c.node(
        "Gemm",
        &["f", "w", "b"],
        &["y"],
        vec![
            attr::int("transB", 1),
            attr::float("alpha", 0.7),
            attr::float("beta", 1.3),
        ],
    );
    c.check(&mut rng);
}

#[test]
fn gemm_trans_a_and_scalar_broadcast_c() {
    let mut rng = Rng(20);
    let mut c = Case::new();
    c.input("a", rng.array(&[4, 3], -1.0, 1.0), true);
    c.param("b", rng.array(&[4, 5], -1.0, 1.0), true);
    c.param("c", rng.array(&[1, 5], -1.0, 1.0), true);
    c.node(
        "Gemm",
        &["a", "b", "c"],
        &["y"],
        vec![attr::int("transA", 1)],
    );
    c.check(&mut rng);
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut rng = Rng(21);
    let mut c = Case::new();
    c.input("a", rng.array(&[2, 3, 4], -1.0, 1.0), true);
    c.param("w", rng.array(&[4, 5], -1.0, 1.0), true);
    c.input("b", rng.array(&[1, 5, 2], -1.0, 1.0), true);
    c.node("MatMul", &["a", "w"], &["aw"], vec![]);
    c.node("MatMul", &["aw", "b"], &["y"], vec![]);
    c.check(&mut rng);
}

#[test]
fn reshape_transpose_concat_identity_dropout() {
    let mut rng = Rng(22);
    let mut c = Case::new();
    c.input("a", rng.array(&[2, 3, 4], -1.0, 1.0), true);
    c.input("b", rng.array(&[2, 2, 4], -1.0, 1.0), true);
    c.g.constant_i64("target", &[3], &[2, 4, 5]);
    let target = c.g.graph().initializer.last().expect("init").name.clone();
    c.node("Concat", &["a", "b"], &["ab"], vec![attr::int("axis", 1)]);
    c.node("Identity", &["ab"], &["i"], vec![]);
    c.node("Dropout", &["i"], &["d"], vec![]);
    c.node(
        "Transpose",
        &["d"],
        &["t"],
        vec![attr::ints("perm", &[0, 2, 1])],
    );
    c.node("Reshape", &["t", &target], &["r"], vec![]);
    c.node("Transpose", &["r"], &["y"], vec![]);
    c.check(&mut rng);
}

#[test]
fn softmax_logsoftmax_reduce_mean() {
    let mut rng = Rng(23);
    let mut c = Case::new();
    c.input("x", rng.array(&[2, 5, 3], -2.0, 2.0), true);
    c.node("Softmax", &["x"], &["s"], vec![attr::int("axis", 1)]);
    c.node("LogSoftmax", &["x"], &["l"], vec![]);
    c.node("Mul", &["s", "l"], &["sl"], vec![]);
    c.node(
        "ReduceMean",
        &["sl"],
        &["m1"],
        vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)],
    );
    c.node(
        "ReduceMean",
        &["l"],
        &["m2"],
        vec![attr::ints("axes", &[-1]), attr::int("keepdims", 1)],
    );
    c.node(
        "ReduceMean",
        &["sl"],
        &["m3"],
        vec![attr::ints("axes", &[0, 2]), attr::int("keepdims", 1)],
    );
    c.node("Add", &["m2", "m3"], &["y"], vec![]);
    c.check(&mut rng);
    // keepdims=0 over the middle axis.
    let mut rng = Rng(24);
    let mut c = Case::new();
    c.input("x", rng.array(&[2, 5, 3], -2.0, 2.0), true);
    c.node("Softmax", &["x"], &["s"], vec![attr::int("axis", 1)]);
    c.node(
        "ReduceMean",
        &["s"],
        &["y"],
        vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)],
    );
    c.check(&mut rng);
}

#[test]
fn unsupported_op_on_the_path_is_named() {
    let mut c = Case::new();
    let mut rng = Rng(25);
    c.input("x", rng.array(&[2, 3], -1.0, 1.0), true);
    c.node("Erf", &["x"], &["y"], vec![]);
    let mut graph = c.g.clone().build();
    graph.output = vec![ValueInfoProto::tensor(
        "y",
        DataType::Float,
        &[Dim::Fixed(2), Dim::Fixed(3)],
    )];
    let forward = ModelProto::with_graph(graph, 17);
    let err = vjp_model(&forward, "y", &["x"], None, &SessionOptions::default())
        .expect_err("Erf has no gradient");
    let msg = err.to_string();
    assert!(msg.contains("Erf") && msg.contains("y"), "{msg}");
}

#[test]
fn reshape_to_a_computed_shape_probes_the_int64_shape_value() {
    // PyTorch's flatten: Reshape(x, Concat(Slice(Shape(x), 0, 1), [-1])). The shape probe needs
    // the shape of the int64 `target`; it used to declare every probed value as float, which
    // ONNX Runtime rejects ("Type (tensor(int64)) of output arg (target) ... does not match").
    let mut c = Case::new();
    let mut rng = Rng(26);
    c.input("x", rng.array(&[2, 3, 4], -1.0, 1.0), true);
    c.g.initializer(TensorProto::from_i64("zero", &[1], &[0]));
    c.g.initializer(TensorProto::from_i64("one", &[1], &[1]));
    c.g.initializer(TensorProto::from_i64("minus_one", &[1], &[-1]));
    c.node("Mul", &["x", "x"], &["sq"], vec![])
        .node("Shape", &["x"], &["shape"], vec![])
        .node("Slice", &["shape", "zero", "one"], &["batch"], vec![])
        .node(
            "Concat",
            &["batch", "minus_one"],
            &["target"],
            vec![attr::int("axis", 0)],
        )
        .node("Reshape", &["sq", "target"], &["y"], vec![]);
    c.check(&mut rng);
}
