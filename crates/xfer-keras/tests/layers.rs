//! The converter on tiny Keras-like models built here, one per layer kind, run on
//! the real ONNX Runtime and checked against direct float64 loops in Keras's NHWC
//! semantics (TensorFlow's 'same' padding rule included).

use std::collections::BTreeMap;

use ndarray::{Array2, Array4, ArrayD, IxDyn};
use serde_json::{Value, json};
use xfer_keras::{
    ConvertOptions, KerasModel, Part, Preprocessing, convert, fold_for_inference, snake_case,
};
use xfer_runtime::{InputTensor, Model, SessionOptions};

// ---------------------------------------------------------------- model building

/// Builds a Keras 3 functional config and its weights the way Keras saves them.
struct Builder {
    name: String,
    layers: Vec<Value>,
    weights: BTreeMap<String, ArrayD<f32>>,
    counters: BTreeMap<String, usize>,
    prefix: String,
    input: String,
}

fn history(layer: &str) -> Value {
    json!({"class_name": "__keras_tensor__", "config": {"shape": [], "dtype": "float32", "keras_history": [layer, 0, 0]}})
}

impl Builder {
    fn new(name: &str, prefix: &str, shape: [Option<usize>; 3]) -> Self {
        let mut b = Builder {
            name: name.to_owned(),
            layers: Vec::new(),
            weights: BTreeMap::new(),
            counters: BTreeMap::new(),
            prefix: prefix.to_owned(),
            input: format!("{name}_input"),
        };
        let input = b.input.clone();
        b.push(
            "InputLayer",
            &input,
            json!({"batch_shape": [null, shape[0], shape[1], shape[2]], "dtype": "float32"}),
            vec![],
            &[],
        );
        b
    }

    fn group(&mut self, class: &str) -> String {
        let snake = snake_case(class);
        let k = self.counters.entry(snake.clone()).or_insert(0);
        let name = if *k == 0 {
            snake
        } else {
            format!("{snake}_{k}")
        };
        *k += 1;
        if self.prefix.is_empty() {
            format!("layers/{name}")
        } else {
            format!("{}/layers/{name}", self.prefix)
        }
    }

    fn push(
        &mut self,
        class: &str,
        name: &str,
        mut config: Value,
        vars: Vec<ArrayD<f32>>,
        inputs: &[&str],
    ) -> String {
        config["name"] = json!(name);
        let group = self.group(class);
        for (i, v) in vars.into_iter().enumerate() {
            self.weights.insert(format!("{group}/vars/{i}"), v);
        }
        let args: Value = match inputs {
            [] => json!([]),
            [one] => json!([history(one)]),
            many => json!([many.iter().map(|n| history(n)).collect::<Vec<_>>()]),
        };
        let inbound = if inputs.is_empty() {
            json!([])
        } else {
            json!([{"args": args, "kwargs": {}}])
        };
        self.layers.push(json!({"module": "keras.layers", "class_name": class, "config": config, "name": name, "inbound_nodes": inbound}));
        name.to_owned()
    }

    fn config(&self, output: &str) -> Value {
        json!({"module": "keras.src.models.functional", "class_name": "Functional", "config": {
            "name": self.name, "trainable": true, "layers": self.layers,
            "input_layers": [[self.input, 0, 0]], "output_layers": [[output, 0, 0]]}})
    }

    fn model(self, output: &str) -> KerasModel {
        let config = self.config(output);
        KerasModel::new(config, self.weights)
    }
}

// ---------------------------------------------------------------- data

/// Deterministic values in [lo, hi).
fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 11) as f64) / ((1u64 << 53) as f64);
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

fn arr(shape: &[usize], seed: u64, lo: f64, hi: f64) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), values(n, seed, lo, hi)).expect("shape")
}

/// NHWC pixels 0..255.
fn pixels(n: usize, h: usize, w: usize, c: usize, seed: u64) -> Array4<f64> {
    arr(&[n, h, w, c], seed, 0.0, 255.0)
        .mapv(f64::from)
        .into_dimensionality()
        .expect("4d")
}

fn to_nchw_f32(x: &Array4<f64>) -> Array4<f32> {
    x.mapv(|v| v as f32)
        .permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .to_owned()
}

fn f64v(a: &ArrayD<f32>) -> ArrayD<f64> {
    a.mapv(f64::from)
}

// ---------------------------------------------------------------- references (NHWC, float64)

/// TF output size and leading pad for one spatial axis.
fn tf_out(input: usize, k: usize, s: usize, d: usize, same: bool) -> (usize, usize) {
    let dk = (k - 1) * d + 1;
    if same {
        let out = input.div_ceil(s);
        let total = ((out - 1) * s + dk).saturating_sub(input);
        (out, total / 2)
    } else {
        ((input - dk) / s + 1, 0)
    }
}

/// Grouped conv, kernel HWIO [kh, kw, cin/groups, cout].
fn conv_ref(
    x: &Array4<f64>,
    k: &ArrayD<f64>,
    bias: Option<&[f64]>,
    s: usize,
    d: usize,
    same: bool,
    groups: usize,
) -> Array4<f64> {
    let (n, h, w, cin) = x.dim();
    let (kh, kw, cig, cout) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    assert_eq!(cig * groups, cin);
    let cog = cout / groups;
    let (oh, ph) = tf_out(h, kh, s, d, same);
    let (ow, pw) = tf_out(w, kw, s, d, same);
    let mut y = Array4::<f64>::zeros((n, oh, ow, cout));
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for o in 0..cout {
                    let g = o / cog;
                    let mut acc = bias.map_or(0.0, |b| b[o]);
                    for a in 0..kh {
                        for bb in 0..kw {
                            let yy = (i * s + a * d) as isize - ph as isize;
                            let xx = (j * s + bb * d) as isize - pw as isize;
                            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                continue;
                            }
                            for c in 0..cig {
                                acc += x[[b, yy as usize, xx as usize, g * cig + c]]
                                    * k[[a, bb, c, o]];
                            }
                        }
                    }
                    y[[b, i, j, o]] = acc;
                }
            }
        }
    }
    y
}

/// Depthwise conv, kernel [kh, kw, C, M]; output channel c*M + m.
fn depthwise_ref(x: &Array4<f64>, k: &ArrayD<f64>, s: usize, same: bool) -> Array4<f64> {
    let (n, h, w, c) = x.dim();
    let (kh, kw, m) = (k.shape()[0], k.shape()[1], k.shape()[3]);
    let (oh, ph) = tf_out(h, kh, s, 1, same);
    let (ow, pw) = tf_out(w, kw, s, 1, same);
    let mut y = Array4::<f64>::zeros((n, oh, ow, c * m));
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    for mi in 0..m {
                        let mut acc = 0.0;
                        for a in 0..kh {
                            for bb in 0..kw {
                                let yy = (i * s + a) as isize - ph as isize;
                                let xx = (j * s + bb) as isize - pw as isize;
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                acc += x[[b, yy as usize, xx as usize, ch]] * k[[a, bb, ch, mi]];
                            }
                        }
                        y[[b, i, j, ch * m + mi]] = acc;
                    }
                }
            }
        }
    }
    y
}

fn pool_ref(x: &Array4<f64>, k: usize, s: usize, same: bool, max: bool) -> Array4<f64> {
    let (n, h, w, c) = x.dim();
    let (oh, ph) = tf_out(h, k, s, 1, same);
    let (ow, pw) = tf_out(w, k, s, 1, same);
    let mut y = Array4::<f64>::zeros((n, oh, ow, c));
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0);
                    for a in 0..k {
                        for bb in 0..k {
                            let yy = (i * s + a) as isize - ph as isize;
                            let xx = (j * s + bb) as isize - pw as isize;
                            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let v = x[[b, yy as usize, xx as usize, ch]];
                            best = best.max(v);
                            sum += v;
                            count += 1;
                        }
                    }
                    y[[b, i, j, ch]] = if max { best } else { sum / f64::from(count) };
                }
            }
        }
    }
    y
}

fn bn_ref(x: &Array4<f64>, p: &[ArrayD<f32>; 4], eps: f64) -> Array4<f64> {
    let mut y = x.clone();
    for ((_, _, _, c), v) in y.indexed_iter_mut() {
        let (g, b, m, var) = (
            f64::from(p[0][c]),
            f64::from(p[1][c]),
            f64::from(p[2][c]),
            f64::from(p[3][c]),
        );
        *v = (*v - m) / (var + eps).sqrt() * g + b;
    }
    y
}

fn gap_ref(x: &Array4<f64>) -> Array2<f64> {
    let (n, h, w, c) = x.dim();
    Array2::from_shape_fn((n, c), |(b, ch)| {
        let mut s = 0.0;
        for i in 0..h {
            for j in 0..w {
                s += x[[b, i, j, ch]];
            }
        }
        s / (h * w) as f64
    })
}

fn dense_ref(x: &Array2<f64>, k: &ArrayD<f32>, b: &ArrayD<f32>) -> Array2<f64> {
    let (n, din) = x.dim();
    let units = k.shape()[1];
    Array2::from_shape_fn((n, units), |(r, u)| {
        f64::from(b[u])
            + (0..din)
                .map(|i| x[[r, i]] * f64::from(k[[i, u]]))
                .sum::<f64>()
    })
}

fn relu(x: Array4<f64>) -> Array4<f64> {
    x.mapv(|v| v.max(0.0))
}

fn preprocess(x: &Array4<f64>) -> Array4<f64> {
    x.mapv(|v| v / 127.5 - 1.0)
}

// ---------------------------------------------------------------- running

fn run(model: &xfer_onnx::ModelProto, x: &Array4<f64>) -> BTreeMap<String, ArrayD<f32>> {
    let bytes = xfer_onnx::write_model_bytes(model);
    let mut session = Model::from_bytes(&bytes, "test", &SessionOptions::default())
        .expect("ONNX Runtime accepts the converted graph");
    let input = to_nchw_f32(x);
    session
        .run(&[("pixels", InputTensor::F32(input.view().into_dyn()))])
        .expect("run")
        .into_iter()
        .map(|(n, t)| (n, t.into_f32().expect("float output")))
        .collect()
}

/// Max |a - b| / (1 + max|b|).
fn assert_close(got: &ArrayD<f32>, want: &ArrayD<f64>, tol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want.iter())
        .fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    assert!(
        err / scale <= tol,
        "{what}: max error {err} (scale {scale}) exceeds {tol}"
    );
}

/// NHWC reference map -> NCHW, as the graph's spatial `features` output.
fn nchw(x: &Array4<f64>) -> ArrayD<f64> {
    x.view().permuted_axes([0, 3, 1, 2]).to_owned().into_dyn()
}

fn map_options(fold: bool) -> ConvertOptions {
    ConvertOptions {
        fold_batch_norm: fold,
        pool_features: false,
        ..Default::default()
    }
}

/// Converts with folding on and off and checks the spatial output against `want` (NHWC).
fn check_map(model: &KerasModel, x: &Array4<f64>, want: &Array4<f64>, what: &str) {
    for fold in [true, false] {
        let converted = convert(model, &map_options(fold)).expect("convert");
        let out = run(&converted.model, x);
        assert_close(
            &out["features"],
            &nchw(want),
            2e-5,
            &format!("{what} (fold {fold})"),
        );
    }
}

fn conv_cfg(filters: usize, k: usize, s: usize, padding: &str, bias: bool, act: &str) -> Value {
    json!({"filters": filters, "kernel_size": [k, k], "strides": [s, s], "padding": padding,
           "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
           "activation": act, "use_bias": bias})
}

// ---------------------------------------------------------------- tests

#[test]
fn conv2d_valid_with_bias_and_relu() {
    let mut b = Builder::new("m", "", [Some(9), Some(8), Some(3)]);
    let k = arr(&[3, 3, 3, 4], 1, -0.1, 0.1);
    let bias = arr(&[4], 2, -0.5, 0.5);
    b.push(
        "Conv2D",
        "c1",
        conv_cfg(4, 3, 1, "valid", true, "relu"),
        vec![k.clone(), bias.clone()],
        &["m_input"],
    );
    let model = b.model("c1");
    let x = pixels(2, 9, 8, 3, 3);
    let bias: Vec<f64> = bias.iter().map(|v| f64::from(*v)).collect();
    let want = relu(conv_ref(
        &preprocess(&x),
        &f64v(&k),
        Some(&bias),
        1,
        1,
        false,
        1,
    ));
    check_map(&model, &x, &want, "conv valid");
}

#[test]
fn conv2d_same_stride2_on_even_and_odd_sizes() {
    for (h, w) in [(8, 8), (7, 9), (5, 6)] {
        for k in [1, 3] {
            let mut b = Builder::new("m", "", [None, None, Some(3)]);
            let kernel = arr(&[k, k, 3, 5], 4, -0.2, 0.2);
            b.push(
                "Conv2D",
                "c",
                conv_cfg(5, k, 2, "same", false, "linear"),
                vec![kernel.clone()],
                &["m_input"],
            );
            let model = b.model("c");
            let x = pixels(1, h, w, 3, 5);
            let want = conv_ref(&preprocess(&x), &f64v(&kernel), None, 2, 1, true, 1);
            check_map(&model, &x, &want, &format!("conv same/2 k{k} {h}x{w}"));
        }
    }
}

#[test]
fn conv2d_same_stride1_dilated_and_grouped() {
    let mut b = Builder::new("m", "", [None, None, Some(4)]);
    let mut cfg = conv_cfg(6, 3, 1, "same", true, "linear");
    cfg["dilation_rate"] = json!([2, 2]);
    cfg["groups"] = json!(2);
    let kernel = arr(&[3, 3, 2, 6], 6, -0.2, 0.2);
    let bias = arr(&[6], 7, -1.0, 1.0);
    b.push(
        "Conv2D",
        "c",
        cfg,
        vec![kernel.clone(), bias.clone()],
        &["m_input"],
    );
    let model = b.model("c");
    let x = pixels(2, 7, 6, 4, 8);
    let bias: Vec<f64> = bias.iter().map(|v| f64::from(*v)).collect();
    let want = conv_ref(&preprocess(&x), &f64v(&kernel), Some(&bias), 1, 2, true, 2);
    check_map(&model, &x, &want, "conv same dilated grouped");
}

#[test]
fn depthwise_conv2d_same_stride2_multiplier2() {
    for (h, w) in [(8, 6), (7, 7)] {
        let mut b = Builder::new("m", "", [None, None, Some(3)]);
        let k = arr(&[3, 3, 3, 2], 9, -0.3, 0.3);
        let bias = arr(&[6], 10, -1.0, 1.0);
        let cfg = json!({"kernel_size": [3, 3], "strides": [2, 2], "padding": "same", "depth_multiplier": 2,
                         "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": true});
        b.push(
            "DepthwiseConv2D",
            "dw",
            cfg,
            vec![k.clone(), bias.clone()],
            &["m_input"],
        );
        let model = b.model("dw");
        let x = pixels(1, h, w, 3, 11);
        let mut want = depthwise_ref(&preprocess(&x), &f64v(&k), 2, true);
        for ((_, _, _, c), v) in want.indexed_iter_mut() {
            *v += f64::from(bias[c]);
        }
        check_map(&model, &x, &want, &format!("depthwise {h}x{w}"));
    }
}

#[test]
fn separable_conv2d_then_batch_norm() {
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    let dk = arr(&[3, 3, 3, 1], 12, -0.3, 0.3);
    let pk = arr(&[1, 1, 3, 4], 13, -0.5, 0.5);
    let cfg = json!({"filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "depth_multiplier": 1,
                     "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": false});
    b.push(
        "SeparableConv2D",
        "sep",
        cfg,
        vec![dk.clone(), pk.clone()],
        &["m_input"],
    );
    let bn = [
        arr(&[4], 14, 0.5, 1.5),
        arr(&[4], 15, -0.5, 0.5),
        arr(&[4], 16, -0.2, 0.2),
        arr(&[4], 17, 0.1, 2.0),
    ];
    b.push(
        "BatchNormalization",
        "sep_bn",
        json!({"axis": -1, "epsilon": 0.001, "center": true, "scale": true}),
        bn.to_vec(),
        &["sep"],
    );
    let model = b.model("sep_bn");
    let x = pixels(2, 6, 5, 3, 18);
    let d = depthwise_ref(&preprocess(&x), &f64v(&dk), 1, true);
    let p = conv_ref(&d, &f64v(&pk), None, 1, 1, false, 1);
    let want = bn_ref(&p, &bn, 1e-3);
    check_map(&model, &x, &want, "separable + bn");

    // Folded: no BatchNormalization op is left and the pointwise kernel carries it; kept: Keras names.
    let folded = convert(&model, &map_options(true)).expect("convert");
    let graph = folded.model.graph.as_ref().expect("graph");
    assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));
    assert!(graph.initializer("sep.pointwise_kernel_folded").is_some());
    let kept = convert(&model, &map_options(false)).expect("convert");
    let graph = kept.model.graph.as_ref().expect("graph");
    assert_eq!(
        graph
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .count(),
        1
    );
    for name in [
        "sep.depthwise_kernel",
        "sep.pointwise_kernel",
        "sep_bn.gamma",
        "sep_bn.beta",
        "sep_bn.moving_mean",
        "sep_bn.moving_variance",
    ] {
        assert!(graph.initializer(name).is_some(), "missing {name}");
    }
    // Pointwise kernel stored OIHW [4, 3, 1, 1] with the Keras values.
    let pw = graph
        .initializer("sep.pointwise_kernel")
        .expect("pointwise");
    assert_eq!(pw.dims, vec![4, 3, 1, 1]);
    let values = pw.to_f32().expect("f32");
    assert_eq!(values[2 * 3 + 1], pk[[0, 0, 1, 2]]);
}

#[test]
fn batch_norm_on_the_input_is_kept_as_an_op_and_matches() {
    // Not after a convolution: nothing to fold into, so the inference graph keeps the op.
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    let bn = [
        arr(&[3], 20, 0.5, 1.5),
        arr(&[3], 21, -0.5, 0.5),
        arr(&[3], 22, -0.2, 0.2),
        arr(&[3], 23, 0.1, 2.0),
    ];
    b.push(
        "BatchNormalization",
        "bn",
        json!({"axis": -1, "epsilon": 0.01}),
        bn.to_vec(),
        &["m_input"],
    );
    let model = b.model("bn");
    let x = pixels(1, 4, 5, 3, 24);
    let want = bn_ref(&preprocess(&x), &bn, 1e-2);
    check_map(&model, &x, &want, "bn alone");
}

#[test]
fn pooling_same_and_valid() {
    for (class, k, s, padding, h, w) in [
        ("MaxPooling2D", 3, 2, "same", 8, 8),
        ("MaxPooling2D", 3, 2, "same", 9, 7),
        ("AveragePooling2D", 3, 2, "same", 9, 7),
        ("AveragePooling2D", 3, 1, "same", 5, 6),
        ("AveragePooling2D", 2, 2, "valid", 7, 6),
        ("MaxPooling2D", 2, 2, "valid", 5, 5),
    ] {
        let mut b = Builder::new("m", "", [None, None, Some(2)]);
        let cfg = json!({"pool_size": [k, k], "strides": [s, s], "padding": padding, "data_format": "channels_last"});
        b.push(class, "p", cfg, vec![], &["m_input"]);
        let model = b.model("p");
        let x = pixels(2, h, w, 2, 25);
        let want = pool_ref(
            &preprocess(&x),
            k,
            s,
            padding == "same",
            class == "MaxPooling2D",
        );
        check_map(
            &model,
            &x,
            &want,
            &format!("{class} {k}/{s} {padding} {h}x{w}"),
        );
    }
}

#[test]
fn activation_relu_rescaling_and_dropout_layers() {
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    b.push(
        "Rescaling",
        "rs",
        json!({"scale": 2.0, "offset": -0.5}),
        vec![],
        &["m_input"],
    );
    b.push("Dropout", "drop", json!({"rate": 0.5}), vec![], &["rs"]);
    b.push(
        "ReLU",
        "r6",
        json!({"max_value": 1.5, "negative_slope": 0.0, "threshold": 0.0}),
        vec![],
        &["drop"],
    );
    b.push(
        "Activation",
        "sig",
        json!({"activation": "sigmoid"}),
        vec![],
        &["r6"],
    );
    let model = b.model("sig");
    let x = pixels(1, 3, 4, 3, 26);
    let want = preprocess(&x).mapv(|v| 1.0 / (1.0 + (-(v * 2.0 - 0.5).clamp(0.0, 1.5)).exp()));
    check_map(&model, &x, &want, "rescaling/dropout/relu6/sigmoid");
}

/// A small Xception-like base (entry conv, residual block with Add, stride-2 pooling) nested in a model with a head.
/// Features and probabilities of a batch, computed independently.
type Features = (Array2<f64>, Array2<f64>);

fn tiny_xception(
    h: Option<usize>,
    w: Option<usize>,
) -> (KerasModel, impl Fn(&Array4<f64>) -> Features) {
    tiny_xception_with(h, w, "linear")
}

/// [`tiny_xception`] whose last Dense has activation `head_activation` (`linear` or `softmax`).
fn tiny_xception_with(
    h: Option<usize>,
    w: Option<usize>,
    head_activation: &str,
) -> (KerasModel, impl Fn(&Array4<f64>) -> Features) {
    let mut base = Builder::new("base", "layers/functional", [h, w, Some(3)]);
    let c1 = arr(&[3, 3, 3, 4], 30, -0.2, 0.2);
    let bn1 = [
        arr(&[4], 31, 0.5, 1.5),
        arr(&[4], 32, -0.5, 0.5),
        arr(&[4], 33, -0.2, 0.2),
        arr(&[4], 34, 0.5, 2.0),
    ];
    let res_k = arr(&[1, 1, 4, 6], 35, -0.5, 0.5);
    let bn2 = [
        arr(&[6], 36, 0.5, 1.5),
        arr(&[6], 37, -0.5, 0.5),
        arr(&[6], 38, -0.2, 0.2),
        arr(&[6], 39, 0.5, 2.0),
    ];
    let dk = arr(&[3, 3, 4, 1], 40, -0.3, 0.3);
    let pk = arr(&[1, 1, 4, 6], 41, -0.5, 0.5);
    let bn3 = [
        arr(&[6], 42, 0.5, 1.5),
        arr(&[6], 43, -0.5, 0.5),
        arr(&[6], 44, -0.2, 0.2),
        arr(&[6], 45, 0.5, 2.0),
    ];
    base.push(
        "Conv2D",
        "block1_conv1",
        conv_cfg(4, 3, 2, "valid", false, "linear"),
        vec![c1.clone()],
        &["base_input"],
    );
    base.push(
        "BatchNormalization",
        "block1_conv1_bn",
        json!({"axis": -1, "epsilon": 0.001}),
        bn1.to_vec(),
        &["block1_conv1"],
    );
    base.push(
        "Activation",
        "block1_conv1_act",
        json!({"activation": "relu"}),
        vec![],
        &["block1_conv1_bn"],
    );
    base.push(
        "Conv2D",
        "conv2d",
        conv_cfg(6, 1, 2, "same", false, "linear"),
        vec![res_k.clone()],
        &["block1_conv1_act"],
    );
    base.push(
        "BatchNormalization",
        "batch_normalization",
        json!({"axis": -1, "epsilon": 0.001}),
        bn2.to_vec(),
        &["conv2d"],
    );
    let sep = json!({"filters": 6, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "depth_multiplier": 1,
                     "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": false});
    base.push(
        "SeparableConv2D",
        "block2_sepconv1",
        sep,
        vec![dk.clone(), pk.clone()],
        &["block1_conv1_act"],
    );
    base.push(
        "BatchNormalization",
        "block2_sepconv1_bn",
        json!({"axis": -1, "epsilon": 0.001}),
        bn3.to_vec(),
        &["block2_sepconv1"],
    );
    base.push(
        "MaxPooling2D",
        "block2_pool",
        json!({"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}),
        vec![],
        &["block2_sepconv1_bn"],
    );
    base.push(
        "Add",
        "add",
        json!({}),
        vec![],
        &["block2_pool", "batch_normalization"],
    );
    base.push(
        "Activation",
        "block2_act",
        json!({"activation": "relu"}),
        vec![],
        &["add"],
    );
    let base_config = base.config("block2_act");

    let mut top = Builder::new("outer", "", [h, w, Some(3)]);
    for (k, v) in base.weights {
        top.weights.insert(k, v);
    }
    top.group("Functional");
    let mut nested = base_config.clone();
    nested["name"] = json!("base");
    nested["inbound_nodes"] =
        json!([{"args": [history("outer_input")], "kwargs": {"training": false}}]);
    top.layers.push(nested);
    top.push(
        "GlobalAveragePooling2D",
        "gap",
        json!({"keepdims": false}),
        vec![],
        &["base"],
    );
    let d1k = arr(&[6, 5], 50, -0.5, 0.5);
    let d1b = arr(&[5], 51, -0.5, 0.5);
    let d2k = arr(&[5, 3], 52, -0.5, 0.5);
    let d2b = arr(&[3], 53, -0.5, 0.5);
    top.push(
        "Dense",
        "dense",
        json!({"units": 5, "activation": "relu", "use_bias": true}),
        vec![d1k.clone(), d1b.clone()],
        &["gap"],
    );
    top.push(
        "Dropout",
        "dropout",
        json!({"rate": 0.2}),
        vec![],
        &["dense"],
    );
    top.push(
        "Dense",
        "dense_1",
        json!({"units": 3, "activation": head_activation, "use_bias": true}),
        vec![d2k.clone(), d2b.clone()],
        &["dropout"],
    );
    let model = top.model("dense_1");

    let reference = move |x: &Array4<f64>| {
        let a = relu(bn_ref(
            &conv_ref(&preprocess(x), &f64v(&c1), None, 2, 1, false, 1),
            &bn1,
            1e-3,
        ));
        let r = bn_ref(
            &conv_ref(&a, &f64v(&res_k), None, 2, 1, true, 1),
            &bn2,
            1e-3,
        );
        let s = bn_ref(
            &conv_ref(
                &depthwise_ref(&a, &f64v(&dk), 1, true),
                &f64v(&pk),
                None,
                1,
                1,
                false,
                1,
            ),
            &bn3,
            1e-3,
        );
        let p = pool_ref(&s, 3, 2, true, true);
        let out = relu(&p + &r);
        let features = gap_ref(&out);
        let hidden = dense_ref(&features, &d1k, &d1b).mapv(|v| v.max(0.0));
        let logits = dense_ref(&hidden, &d2k, &d2b);
        let mut probs = logits.clone();
        for mut row in probs.rows_mut() {
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - m).exp());
            let s = row.sum();
            row.mapv_inplace(|v| v / s);
        }
        (features, probs)
    };
    (model, reference)
}

#[test]
fn nested_base_with_residual_add_base_only() {
    let (model, reference) = tiny_xception(Some(15), Some(15));
    for (h, w) in [(15, 15), (16, 13)] {
        let x = pixels(2, h, w, 3, 60);
        let (features, _) = reference(&x);
        for fold in [true, false] {
            let options = ConvertOptions {
                fold_batch_norm: fold,
                ..Default::default()
            };
            let converted = convert(&model, &options).expect("convert");
            assert_eq!(converted.base_name, "base");
            assert_eq!(converted.feature_dim, 6);
            assert_eq!(converted.num_classes, None);
            assert_eq!(converted.input_size, Some([15, 15]));
            // 3*3*3*4 + 4*4 + 4*6 + 4*6 + 3*3*4 + 4*6 + 4*6 Keras variables of the base only.
            assert_eq!(converted.parameter_count, 108 + 16 + 24 + 24 + 36 + 24 + 24);
            let out = run(&converted.model, &x);
            assert_eq!(out.len(), 1, "base only: just `features`");
            assert_close(
                &out["features"],
                &features.clone().into_dyn(),
                2e-5,
                &format!("base {h}x{w} fold {fold}"),
            );
            let graph = converted.model.graph.as_ref().expect("graph");
            if fold {
                // Preprocessing folded into block1_conv1 ('valid'), BatchNorm into every conv.
                assert!(
                    graph
                        .node
                        .iter()
                        .all(|n| n.op_type != "BatchNormalization" && n.op_type != "Mul")
                );
                assert!(graph.initializer("block1_conv1.kernel_folded").is_some());
                assert!(graph.initializer("block1_conv1.bias_folded").is_some());
            } else {
                for name in [
                    "block1_conv1.kernel",
                    "block1_conv1_bn.gamma",
                    "conv2d.kernel",
                    "block2_sepconv1.depthwise_kernel",
                    "preprocess.scale",
                ] {
                    assert!(graph.initializer(name).is_some(), "missing {name}");
                }
                // The residual 1x1/2 conv is 'same' with stride 2: SAME_UPPER.
                let residual = graph
                    .node
                    .iter()
                    .find(|n| n.input.iter().any(|i| i == "conv2d.kernel"))
                    .expect("residual conv");
                assert_eq!(
                    residual.attr_string("auto_pad").as_deref(),
                    Some("SAME_UPPER")
                );
            }
        }
    }
}

#[test]
fn nested_base_with_head_gives_features_and_probabilities() {
    for (head_activation, fold) in [("linear", true), ("linear", false), ("softmax", true)] {
        let (model, reference) = tiny_xception_with(None, None, head_activation);
        let x = pixels(3, 17, 14, 3, 61);
        let (features, probs) = reference(&x);
        let options = ConvertOptions {
            part: Part::WithHead,
            fold_batch_norm: fold,
            ..Default::default()
        };
        let converted = convert(&model, &options).expect("convert");
        assert_eq!(converted.num_classes, Some(3));
        assert_eq!(converted.input_size, None);
        let out = run(&converted.model, &x);
        assert_close(
            &out["features"],
            &features.clone().into_dyn(),
            2e-5,
            "head features",
        );
        assert_close(
            &out["probabilities"],
            &probs.clone().into_dyn(),
            2e-5,
            "head probabilities",
        );
        let graph = converted.model.graph.as_ref().expect("graph");
        for name in [
            "dense.kernel",
            "dense.bias",
            "dense_1.kernel",
            "dense_1.bias",
        ] {
            assert!(graph.initializer(name).is_some(), "missing {name}");
        }
        // Logits get a softmax added; a softmax head is not wrapped in a second one.
        let softmaxes = graph.node.iter().filter(|n| n.op_type == "Softmax").count();
        assert_eq!(softmaxes, 1, "head activation {head_activation}");
    }
}

#[test]
fn fold_for_inference_of_the_training_graph_matches_and_removes_batch_norm() {
    let (model, _) = tiny_xception(None, None);
    let options = ConvertOptions {
        fold_batch_norm: false,
        ..Default::default()
    };
    let train = convert(&model, &options).expect("convert").model;
    let folded = fold_for_inference(&train).expect("fold");
    let graph = folded.graph.as_ref().expect("graph");
    assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));
    let x = pixels(1, 12, 11, 3, 62);
    let a = run(&train, &x);
    let b = run(&folded, &x);
    assert_close(
        &b["features"],
        &a["features"].mapv(f64::from),
        1e-5,
        "folded vs kept",
    );
}

#[test]
fn model_without_nested_base_uses_its_own_output_as_features() {
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    b.push(
        "GlobalAveragePooling2D",
        "gap",
        json!({}),
        vec![],
        &["m_input"],
    );
    let k = arr(&[3, 1], 70, -0.5, 0.5);
    let bias = arr(&[1], 71, -0.5, 0.5);
    b.push(
        "Dense",
        "out",
        json!({"units": 1, "activation": "sigmoid"}),
        vec![k.clone(), bias.clone()],
        &["gap"],
    );
    // No nested base: the whole model is the base, and with the head its output is the probability.
    let model = b.model("out");
    let converted = convert(
        &model,
        &ConvertOptions {
            part: Part::WithHead,
            ..Default::default()
        },
    );
    // With no nested base there is nothing to take `features` from.
    let err = converted.expect_err("no base").to_string();
    assert!(err.contains("no nested base"), "{err}");
    let x = pixels(2, 5, 4, 3, 72);
    let converted = convert(&model, &ConvertOptions::default()).expect("convert");
    let out = run(&converted.model, &x);
    let want = dense_ref(&gap_ref(&preprocess(&x)), &k, &bias).mapv(|v| 1.0 / (1.0 + (-v).exp()));
    assert_close(
        &out["features"],
        &want.into_dyn(),
        2e-5,
        "sigmoid dense as base output",
    );
}

#[test]
fn unsupported_layer_is_named_with_its_class() {
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    b.push("Flatten", "flatten_7", json!({}), vec![], &["m_input"]);
    let model = b.model("flatten_7");
    let err = convert(&model, &ConvertOptions::default())
        .expect_err("Flatten is unsupported")
        .to_string();
    assert!(
        err.contains("flatten_7") && err.contains("Flatten") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn missing_or_misshapen_weights_are_reported() {
    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    b.push(
        "Conv2D",
        "c",
        conv_cfg(4, 3, 1, "valid", true, "linear"),
        vec![arr(&[3, 3, 3, 4], 1, 0.0, 1.0)],
        &["m_input"],
    );
    let err = convert(&b.model("c"), &ConvertOptions::default())
        .expect_err("bias missing")
        .to_string();
    assert!(
        err.contains("`c`") && err.contains("layers/conv2d/vars"),
        "{err}"
    );

    let mut b = Builder::new("m", "", [None, None, Some(3)]);
    b.push(
        "Conv2D",
        "c",
        conv_cfg(4, 3, 1, "valid", false, "linear"),
        vec![arr(&[3, 3, 2, 4], 1, 0.0, 1.0)],
        &["m_input"],
    );
    let err = convert(&b.model("c"), &ConvertOptions::default())
        .expect_err("wrong channels")
        .to_string();
    assert!(err.contains("`c`") && err.contains("[3, 3, 2, 4]"), "{err}");
}

#[test]
fn no_preprocessing_option_feeds_pixels_directly() {
    let mut b = Builder::new("m", "", [None, None, Some(1)]);
    b.push(
        "AveragePooling2D",
        "p",
        json!({"pool_size": [2, 2], "padding": "valid"}),
        vec![],
        &["m_input"],
    );
    let model = b.model("p");
    let x = pixels(1, 4, 4, 1, 80);
    let options = ConvertOptions {
        preprocessing: Preprocessing::none(),
        ..Default::default()
    };
    let out = run(&convert(&model, &options).expect("convert").model, &x);
    let want = gap_ref(&pool_ref(&x, 2, 2, false, false));
    assert_close(&out["features"], &want.into_dyn(), 1e-6, "no preprocessing");
}
