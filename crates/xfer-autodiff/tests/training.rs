//! Training graphs end to end on a tiny CNN built here: gradients of the loss against finite
//! differences, a few Adam steps lower the loss, eval graph agrees with the training forward,
//! frozen parts get no backward nodes, and bad selections are clear errors.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{Rng, assert_close, run, sample_indices, session};
use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::{
    Adam, HeadSpec, Loss, Optimizer, Parameter, Trainable, TrainingGraphBuilder, TrainingGraphs,
};
use xfer_onnx::{Dim, GraphBuilder, ModelProto, TensorProto, attr};

/// x[N,3,11,11] -> conv 3x3/2 SAME_UPPER -> BN -> Relu -> MaxPool 3x3/2 SAME_UPPER
/// -> depthwise 3x3 SAME -> BN -> pointwise 1x1 -> Add(residual 1x1/2) -> Relu -> GAP -> Flatten.
fn tiny_cnn(seed: u64) -> ModelProto {
    let mut rng = Rng(seed);
    let mut g = GraphBuilder::new("tiny_cnn");
    g.input(
        "image",
        &[Dim::from("batch"), 3.into(), 11.into(), 11.into()],
    );
    let mut p = |g: &mut GraphBuilder, name: &str, dims: &[i64], lo: f32, hi: f32| {
        let n: i64 = dims.iter().product();
        g.initializer(TensorProto::from_f32(
            name,
            dims,
            &rng.vec(n as usize, lo, hi),
        ));
    };
    p(&mut g, "conv1.kernel", &[4, 3, 3, 3], -0.5, 0.5);
    p(&mut g, "conv1_bn.gamma", &[4], 0.5, 1.5);
    p(&mut g, "conv1_bn.beta", &[4], -0.2, 0.2);
    p(&mut g, "conv1_bn.moving_mean", &[4], -0.2, 0.2);
    p(&mut g, "conv1_bn.moving_variance", &[4], 0.5, 1.5);
    p(&mut g, "sep.depthwise_kernel", &[4, 1, 3, 3], -0.5, 0.5);
    p(&mut g, "sep.pointwise_kernel", &[6, 4, 1, 1], -0.5, 0.5);
    p(&mut g, "sep_bn.gamma", &[6], 0.5, 1.5);
    p(&mut g, "sep_bn.beta", &[6], -0.2, 0.2);
    p(&mut g, "sep_bn.moving_mean", &[6], -0.2, 0.2);
    p(&mut g, "sep_bn.moving_variance", &[6], 0.5, 1.5);
    p(&mut g, "res.kernel", &[6, 4, 1, 1], -0.5, 0.5);
    let same = || attr::string("auto_pad", "SAME_UPPER");
    g.node_named(
        "Conv",
        &["image", "conv1.kernel"],
        &["c1"],
        vec![attr::ints("strides", &[2, 2]), same()],
    );
    g.node_named(
        "BatchNormalization",
        &[
            "c1",
            "conv1_bn.gamma",
            "conv1_bn.beta",
            "conv1_bn.moving_mean",
            "conv1_bn.moving_variance",
        ],
        &["b1"],
        vec![attr::float("epsilon", 1e-3)],
    );
    g.node_named("Relu", &["b1"], &["r1"], vec![]);
    g.node_named(
        "MaxPool",
        &["r1"],
        &["m1"],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            same(),
        ],
    );
    g.node_named(
        "Conv",
        &["m1", "sep.depthwise_kernel"],
        &["d1"],
        vec![attr::int("group", 4), same()],
    );
    g.node_named("Conv", &["d1", "sep.pointwise_kernel"], &["p1"], vec![]);
    g.node_named(
        "BatchNormalization",
        &[
            "p1",
            "sep_bn.gamma",
            "sep_bn.beta",
            "sep_bn.moving_mean",
            "sep_bn.moving_variance",
        ],
        &["b2"],
        vec![attr::float("epsilon", 1e-3)],
    );
    g.node_named(
        "Conv",
        &["r1", "res.kernel"],
        &["res"],
        vec![attr::ints("strides", &[2, 2]), same()],
    );
    g.node_named("Add", &["b2", "res"], &["sum"], vec![]);
    g.node_named("Relu", &["sum"], &["r2"], vec![]);
    g.node_named("GlobalAveragePool", &["r2"], &["gap"], vec![]);
    g.node_named("Flatten", &["gap"], &["features"], vec![]);
    g.output("features", &[Dim::from("batch"), 6.into()]);
    g.build_model()
}

struct Step {
    loss: f64,
    logits: ArrayD<f32>,
    grads: HashMap<String, ArrayD<f32>>,
}

/// Runs the training graph with these parameter values.
fn step(
    s: &mut xfer_runtime::Model,
    tg: &TrainingGraphs,
    params: &[Parameter],
    x: &ArrayD<f32>,
    labels_f: Option<&ArrayD<f32>>,
    labels_i: Option<&ArrayD<i64>>,
    masks: &[(String, ArrayD<f32>)],
) -> Step {
    let arrays: Vec<(String, ArrayD<f32>)> = params
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone()).expect("shape"),
            )
        })
        .collect();
    let mut f32s: Vec<(&str, &ArrayD<f32>)> = vec![(tg.spec.data_input.name.as_str(), x)];
    if let Some(l) = labels_f {
        f32s.push(("labels", l));
    }
    f32s.extend(masks.iter().map(|(n, a)| (n.as_str(), a)));
    f32s.extend(arrays.iter().map(|(n, a)| (n.as_str(), a)));
    let i64s: Vec<(&str, &ArrayD<i64>)> = labels_i.map(|l| vec![("labels", l)]).unwrap_or_default();
    let out = run(s, &f32s, &i64s);
    Step {
        loss: f64::from(out["loss"].iter().copied().next().expect("scalar loss")),
        logits: out["logits"].clone(),
        grads: out
            .into_iter()
            .filter(|(n, _)| n.ends_with("_grad"))
            .collect(),
    }
}

fn image_batch(rng: &mut Rng, n: usize) -> ArrayD<f32> {
    rng.array(&[n, 3, 11, 11], -1.0, 1.0)
}

/// Every trainable parameter: sampled coordinates of d loss / d param against central differences.
/// eps = 1e-3 with atol 2e-3 / rtol 2e-2: the loss is a mean of ~1 values, its float32 rounding
/// (~1e-7) over 2 eps is ~1e-4; the network has Relu and MaxPool kinks, which random inputs with
/// this eps cross with small probability (seeds are fixed).
fn fd_check(
    tg: &TrainingGraphs,
    x: &ArrayD<f32>,
    lf: Option<&ArrayD<f32>>,
    li: Option<&ArrayD<i64>>,
    masks: &[(String, ArrayD<f32>)],
) {
    let mut s = session(&tg.training);
    let mut params = tg.params.clone();
    let base = step(&mut s, tg, &params, x, lf, li, masks);
    let eps = 1e-3f32;
    for k in 0..params.len() {
        let name = params[k].name.clone();
        let an = base.grads[&format!("{name}_grad")].clone();
        assert_eq!(an.shape(), params[k].shape.as_slice(), "{name}_grad shape");
        assert!(an.iter().any(|&v| v != 0.0), "{name}_grad is all zeros");
        for j in sample_indices(params[k].numel(), 6) {
            let orig = params[k].data[j];
            params[k].data[j] = orig + eps;
            let lp = step(&mut s, tg, &params, x, lf, li, masks).loss;
            params[k].data[j] = orig - eps;
            let lm = step(&mut s, tg, &params, x, lf, li, masks).loss;
            params[k].data[j] = orig;
            let fd = (lp - lm) / (2.0 * f64::from(eps));
            assert_close(
                &format!("dL/d{name}[{j}]"),
                f64::from(an.as_slice().expect("c")[j]),
                fd,
                2e-3,
                2e-2,
            );
        }
    }
}

fn masks_for(tg: &TrainingGraphs, n: usize, seed: u64, step_no: u64) -> Vec<(String, ArrayD<f32>)> {
    tg.spec.dropout_feeds(seed, step_no, n).expect("mask")
}

#[test]
fn bce_all_trainable_gradients_match_finite_differences() {
    let tg = TrainingGraphBuilder::new(tiny_cnn(1))
        .head(HeadSpec::Dense {
            units: 1,
            dropout: 0.25,
        })
        .trainable(Trainable::All)
        .loss(Loss::BinaryCrossEntropyWithLogits)
        .seed(3)
        .build()
        .expect("training graph");
    let names: Vec<&str> = tg.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv1.kernel",
            "conv1_bn.gamma",
            "conv1_bn.beta",
            "sep.depthwise_kernel",
            "sep.pointwise_kernel",
            "sep_bn.gamma",
            "sep_bn.beta",
            "res.kernel",
            "head.kernel",
            "head.bias"
        ]
    );
    assert_eq!(tg.spec.dropout_masks.len(), 1);
    assert_eq!(tg.spec.dropout_masks[0].shape, vec![-1, 6]);
    let mut rng = Rng(9);
    let x = image_batch(&mut rng, 4);
    let labels = ArrayD::from_shape_vec(IxDyn(&[4]), vec![1.0f32, 0.0, 1.0, 0.0]).expect("labels");
    let masks = masks_for(&tg, 4, 5, 0);
    fd_check(&tg, &x, Some(&labels), None, &masks);
}

#[test]
fn bce_loss_matches_a_direct_float64_computation() {
    let tg = TrainingGraphBuilder::new(tiny_cnn(2))
        .trainable(Trainable::Head)
        .build()
        .expect("graph");
    let mut rng = Rng(10);
    let x = image_batch(&mut rng, 3);
    let labels = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 0.0, 1.0]).expect("labels");
    let mut s = session(&tg.training);
    let out = step(&mut s, &tg, &tg.params, &x, Some(&labels), None, &[]);
    let mut expected = 0.0f64;
    for (z, y) in out.logits.iter().zip(labels.iter()) {
        let (z, y) = (f64::from(*z), f64::from(*y));
        let p = 1.0 / (1.0 + (-z).exp());
        expected -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
    }
    expected /= 3.0;
    assert!(
        (out.loss - expected).abs() < 1e-5,
        "loss {} vs {expected}",
        out.loss
    );
    // d loss / d bias = mean(sigmoid(z) - y)
    let db: f64 = out
        .logits
        .iter()
        .zip(labels.iter())
        .map(|(z, y)| 1.0 / (1.0 + (-f64::from(*z)).exp()) - f64::from(*y))
        .sum::<f64>()
        / 3.0;
    let got = f64::from(out.grads["head.bias_grad"][[0]]);
    assert!((got - db).abs() < 1e-5, "bias grad {got} vs {db}");
}

#[test]
fn softmax_from_layer_gradients_match_finite_differences() {
    let tg = TrainingGraphBuilder::new(tiny_cnn(3))
        .head(HeadSpec::Dense {
            units: 3,
            dropout: 0.0,
        })
        .trainable(Trainable::From("sep".to_owned()))
        .loss(Loss::SoftmaxCrossEntropy)
        .build()
        .expect("training graph");
    let names: Vec<&str> = tg.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sep.depthwise_kernel",
            "sep.pointwise_kernel",
            "sep_bn.gamma",
            "sep_bn.beta",
            "res.kernel",
            "head.kernel",
            "head.bias"
        ]
    );
    assert!(tg.spec.dropout_masks.is_empty());
    assert_eq!(tg.spec.labels.dtype, "int64");
    // Frozen conv1 stays an initializer, and nothing below `sep` trains, so the MaxPool that
    // feeds `sep` gets no backward (no Indices output, no scatter).
    let graph = tg.training.graph.as_ref().expect("graph");
    assert!(graph.initializer("conv1.kernel").is_some());
    assert!(
        !graph.node.iter().any(|n| n.op_type == "ScatterElements"),
        "no MaxPool backward needed"
    );
    let mut rng = Rng(11);
    let x = image_batch(&mut rng, 4);
    let labels = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i64, 2, 1, 2]).expect("labels");
    fd_check(&tg, &x, None, Some(&labels), &[]);
}

#[test]
fn head_only_graph_has_no_backbone_backward() {
    let tg = TrainingGraphBuilder::new(tiny_cnn(4))
        .trainable(Trainable::Head)
        .build()
        .expect("graph");
    let names: Vec<&str> = tg.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["head.kernel", "head.bias"]);
    let graph = tg.training.graph.as_ref().expect("graph");
    let forward_nodes = tiny_cnn(4).graph.expect("graph").node.len();
    // Forward (12 nodes) + head (2) + BCE loss and its gradient + head backward: a handful.
    let convs = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "ConvTranspose")
        .count();
    assert_eq!(convs, 4, "only the 4 forward convolutions");
    assert!(
        graph.node.len() < forward_nodes + 35,
        "{} nodes",
        graph.node.len()
    );
    assert!(
        !graph
            .node
            .iter()
            .any(|n| n.op_type == "MaxPool" && n.output.len() > 1),
        "no MaxPool indices"
    );
}

#[test]
fn adam_steps_lower_the_loss_and_eval_matches_training_forward() {
    let tg = TrainingGraphBuilder::new(tiny_cnn(5))
        .head(HeadSpec::Dense {
            units: 1,
            dropout: 0.2,
        })
        .build()
        .expect("graph");
    let mut rng = Rng(12);
    let x = image_batch(&mut rng, 8);
    let labels =
        ArrayD::from_shape_vec(IxDyn(&[8]), vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
            .expect("labels");
    let mut s = session(&tg.training);
    let mut params = tg.params.clone();
    let mut adam = Adam::new(1e-2);
    let ones: Vec<(String, ArrayD<f32>)> = vec![(
        "dropout_mask".to_owned(),
        ArrayD::from_elem(IxDyn(&[8, 6]), 1.0f32),
    )];
    let first = step(&mut s, &tg, &params, &x, Some(&labels), None, &ones).loss;
    for k in 0..30 {
        let masks = masks_for(&tg, 8, 1, k);
        let out = step(&mut s, &tg, &params, &x, Some(&labels), None, &masks);
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| {
                out.grads[&format!("{}_grad", p.name)]
                    .iter()
                    .copied()
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        adam.step(&mut params, &refs).expect("adam step");
    }
    let last = step(&mut s, &tg, &params, &x, Some(&labels), None, &ones);
    assert!(last.loss < 0.5 * first, "loss {first} -> {}", last.loss);
    // The eval graph with the trained values gives the training forward's logits (mask = ones).
    let eval = tg.eval_with(&params).expect("eval");
    let mut e = session(&eval);
    let out = run(&mut e, &[("image", &x)], &[]);
    let diff = (&out["logits"] - &last.logits)
        .iter()
        .fold(0.0f32, |m, d| m.max(d.abs()));
    assert!(diff < 1e-4, "eval vs training logits differ by {diff}");
}

#[test]
fn selection_errors_are_clear() {
    let err = TrainingGraphBuilder::new(tiny_cnn(6))
        .trainable(Trainable::From("block99".to_owned()))
        .build()
        .expect_err("unknown layer");
    assert!(
        err.to_string().contains("block99") && err.to_string().contains("conv1"),
        "{err}"
    );
    let err = TrainingGraphBuilder::new(tiny_cnn(6))
        .trainable(Trainable::Names(BTreeSet::from([
            "conv1_bn.moving_mean".to_owned()
        ])))
        .build()
        .expect_err("statistics are not parameters");
    assert!(err.to_string().contains("moving_mean"), "{err}");
    let err = TrainingGraphBuilder::new(tiny_cnn(6))
        .head(HeadSpec::Dense {
            units: 2,
            dropout: 0.0,
        })
        .loss(Loss::BinaryCrossEntropyWithLogits)
        .build()
        .expect_err("bce with two units");
    assert!(err.to_string().contains("dense:1"), "{err}");
}

#[test]
fn folding_batch_norm_into_convs_keeps_loss_and_gradients() {
    let build = |fold: bool| {
        TrainingGraphBuilder::new(tiny_cnn(7))
            .head(HeadSpec::Dense {
                units: 1,
                dropout: 0.0,
            })
            .fold_batch_norm(fold)
            .build()
            .expect("graph")
    };
    let (folded, plain) = (build(true), build(false));
    let count = |tg: &TrainingGraphs| {
        tg.training
            .graph
            .as_ref()
            .expect("graph")
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .count()
    };
    assert_eq!(count(&folded), 0, "both conv->BN pairs train, so both fold");
    assert_eq!(count(&plain), 2);
    let mut rng = Rng(13);
    let x = image_batch(&mut rng, 4);
    let labels = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0f32, 1.0, 1.0, 0.0]).expect("labels");
    let a = step(
        &mut session(&folded.training),
        &folded,
        &folded.params,
        &x,
        Some(&labels),
        None,
        &[],
    );
    let b = step(
        &mut session(&plain.training),
        &plain,
        &plain.params,
        &x,
        Some(&labels),
        None,
        &[],
    );
    assert!(
        (a.loss - b.loss).abs() < 1e-6,
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    for (name, ga) in &a.grads {
        let gb = &b.grads[name];
        let scale = gb.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let diff = (ga - gb).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            diff <= 1e-4 * scale,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
}

/// The model with value `from` renamed `to` everywhere.
fn rename_value(mut model: ModelProto, from: &str, to: &str) -> ModelProto {
    let graph = model.graph.as_mut().expect("graph");
    for n in &mut graph.node {
        for v in n.input.iter_mut().chain(n.output.iter_mut()) {
            if v == from {
                *v = to.to_owned();
            }
        }
    }
    model
}

#[test]
fn forward_values_named_like_head_values_do_not_confuse_the_head() {
    // The forward graph already has values `head.matmul` and `head.dropout`, so the head's own
    // values are `head.matmul_1` and `head.dropout_1`. Their shapes used to be registered under
    // the literal names (overwriting the forward values' shapes), and the build failed with
    // "the shape of `head.dropout_1` is unknown (internal: not probed)".
    let build = |model: ModelProto| {
        TrainingGraphBuilder::new(model)
            .head(HeadSpec::Dense {
                units: 1,
                dropout: 0.3,
            })
            .trainable(Trainable::All)
            .seed(3)
            .build()
    };
    let plain = build(tiny_cnn(8)).expect("plain training graph");
    let clashing = rename_value(
        rename_value(tiny_cnn(8), "r2", "head.matmul"),
        "gap",
        "head.dropout",
    );
    let clashing = build(clashing).expect("training graph despite the name clash");
    let mut rng = Rng(81);
    let x = image_batch(&mut rng, 3);
    let labels = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 0.0, 1.0]).expect("labels");
    let mut results = Vec::new();
    for tg in [&plain, &clashing] {
        let masks = masks_for(tg, 3, 5, 0);
        let mut s = session(&tg.training);
        results.push(step(
            &mut s,
            tg,
            &tg.params,
            &x,
            Some(&labels),
            None,
            &masks,
        ));
    }
    assert_close("loss", results[1].loss, results[0].loss, 1e-6, 1e-6);
    assert_eq!(results[0].grads.len(), results[1].grads.len());
    for (name, g) in &results[0].grads {
        let other = &results[1].grads[name];
        for (j, (&a, &b)) in g.iter().zip(other.iter()).enumerate() {
            assert_close(
                &format!("{name}[{j}]"),
                f64::from(b),
                f64::from(a),
                1e-6,
                1e-5,
            );
        }
    }
}

#[test]
fn a_conv_without_its_weight_is_a_typed_error_not_a_panic() {
    // Folding Conv+BN used to index `conv.input[1]` and panic on this malformed Conv.
    let mut model = tiny_cnn(9);
    let graph = model.graph.as_mut().expect("graph");
    let conv = graph
        .node
        .iter_mut()
        .find(|n| n.output == ["c1"])
        .expect("conv c1");
    conv.input.truncate(1);
    let err = TrainingGraphBuilder::new(model)
        .trainable(Trainable::All)
        .build()
        .expect_err("malformed conv");
    match &err {
        xfer_autodiff::Error::MalformedNode {
            node,
            op_type,
            expected,
        } => {
            assert_eq!(op_type, "Conv");
            assert_eq!(node, "Conv_c1");
            assert_eq!(expected, "input 1");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_dropout_without_input_is_a_typed_error_not_a_panic() {
    // Rewriting Dropout nodes used to index `node.input[0]` and panic.
    let mut model = tiny_cnn(10);
    let graph = model.graph.as_mut().expect("graph");
    graph.node.push(xfer_onnx::NodeProto {
        name: "bad_dropout".to_owned(),
        op_type: "Dropout".to_owned(),
        output: vec!["dropped".to_owned()],
        ..Default::default()
    });
    let err = TrainingGraphBuilder::new(model)
        .build()
        .expect_err("malformed dropout");
    let msg = err.to_string();
    assert!(
        matches!(&err, xfer_autodiff::Error::MalformedNode { op_type, .. } if op_type == "Dropout"),
        "{msg}"
    );
    assert!(
        msg.contains("bad_dropout") && msg.contains("input 0"),
        "{msg}"
    );
}
