//! The NCHWc option of the training-graph builder ([`CpuKernels::Nchwc`]) on the real ONNX
//! Runtime library: the block probe finds the block that reproduces a standard Conv and rejects
//! the other; the NCHWc training graph's loss and every gradient equal the portable graph's, on a
//! tiny model with depthwise convs of 8 and 24 channels (neither a multiple of 16; one with a
//! bias, one strided) and on the real Xception (needs `just setup`).

mod common;

use std::path::Path;

use common::{Rng, run, session};
use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::{
    CpuKernels, HeadSpec, Loss, NCHWC_BLOCKS, NCHWC_DOMAIN, Trainable, TrainingGraphBuilder,
    TrainingGraphs, nchwc_block, nchwc_block_matches,
};
use xfer_onnx::{Dim, GraphBuilder, ModelProto, TensorProto, attr};
use xfer_runtime::{ModelManifest, SessionOptions};

/// The block of this machine's ONNX Runtime; every x86-64 CPU ONNX Runtime supports has one.
fn block() -> i64 {
    let block = nchwc_block(&SessionOptions::default()).expect("probe runs");
    if cfg!(target_arch = "x86_64") {
        block.expect("an x86-64 CPU has an NCHWc block (16 with AVX-512, 8 with AVX2)")
    } else {
        block.unwrap_or(0)
    }
}

#[test]
fn the_probe_finds_the_block_that_reproduces_a_standard_conv_and_rejects_the_other() {
    let block = block();
    if block == 0 {
        return; // no NCHWc kernels on this architecture: the builder keeps the portable graph
    }
    let options = SessionOptions::default();
    assert!(nchwc_block_matches(&options, block).expect("probe"));
    for other in NCHWC_BLOCKS.into_iter().filter(|&b| b != block) {
        assert!(
            !nchwc_block_matches(&options, other).expect("probe"),
            "block {other} must not reproduce a standard Conv where {block} does"
        );
    }
}

/// image [b,3,9,9] -> 1x1 conv 3->8 -> depthwise 3x3 (8) -> Relu -> 1x1 conv 8->24 ->
/// depthwise 3x3 (24, bias) -> depthwise 3x3 stride 2 (24) -> GAP -> Flatten.
fn depthwise_cnn() -> ModelProto {
    let mut rng = Rng(5);
    let mut g = GraphBuilder::new("depthwise_cnn");
    g.input("image", &[Dim::from("batch"), 3.into(), 9.into(), 9.into()]);
    for (name, dims) in [
        ("in.kernel", vec![8, 3, 1, 1]),
        ("dw8.kernel", vec![8, 1, 3, 3]),
        ("pw.kernel", vec![24, 8, 1, 1]),
        ("dw24.kernel", vec![24, 1, 3, 3]),
        ("dw24.bias", vec![24]),
        ("dws.kernel", vec![24, 1, 3, 3]),
    ] {
        let n: i64 = dims.iter().product();
        let values = rng.vec(n as usize, -0.5, 0.5);
        g.initializer(TensorProto::from_f32(name, &dims, &values));
    }
    let pads = || attr::ints("pads", &[1, 1, 1, 1]);
    g.node_named("Conv", &["image", "in.kernel"], &["a"], vec![]);
    let dw8 = vec![attr::int("group", 8), pads()];
    g.node_named("Conv", &["a", "dw8.kernel"], &["b"], dw8);
    g.node_named("Relu", &["b"], &["c"], vec![]);
    g.node_named("Conv", &["c", "pw.kernel"], &["d"], vec![]);
    let dw24 = vec![attr::int("group", 24), pads()];
    g.node_named("Conv", &["d", "dw24.kernel", "dw24.bias"], &["e"], dw24);
    let dws = vec![
        attr::int("group", 24),
        pads(),
        attr::ints("strides", &[2, 2]),
    ];
    g.node_named("Conv", &["e", "dws.kernel"], &["f"], dws);
    g.node_named("GlobalAveragePool", &["f"], &["gap"], vec![]);
    g.node_named("Flatten", &["gap"], &["features"], vec![]);
    g.output("features", &[Dim::from("batch"), 24.into()]);
    g.build_model()
}

fn build(forward: ModelProto, kernels: CpuKernels) -> TrainingGraphs {
    TrainingGraphBuilder::new(forward)
        .head(HeadSpec::Dense {
            units: 1,
            dropout: 0.0,
        })
        .trainable(Trainable::All)
        .loss(Loss::BinaryCrossEntropyWithLogits)
        .seed(2)
        .cpu_kernels(kernels)
        .build()
        .expect("training graph")
}

/// Convs of the NCHWc domain in a training graph.
fn nchwc_convs(tg: &TrainingGraphs) -> usize {
    let graph = tg.training.graph.as_ref().expect("graph");
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" && n.domain == NCHWC_DOMAIN)
        .count()
}

/// Relative L2 distance of `b` from `a`.
fn rel_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*x).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

/// Runs both graphs on the same feeds and checks the loss and every `_grad` output: relative L2
/// per tensor within `tol`. Returns how many gradients were compared.
fn assert_same_outputs(
    portable: &TrainingGraphs,
    nchwc: &TrainingGraphs,
    data: (&str, &ArrayD<f32>),
    labels: &ArrayD<f32>,
    tol: f64,
) -> usize {
    let params: Vec<(String, ArrayD<f32>)> = portable
        .params
        .iter()
        .map(|p| {
            let a = ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone()).expect("shape");
            (p.name.clone(), a)
        })
        .collect();
    let mut feeds: Vec<(&str, &ArrayD<f32>)> = vec![data, ("labels", labels)];
    feeds.extend(params.iter().map(|(n, a)| (n.as_str(), a)));
    let a = run(&mut session(&portable.training), &feeds, &[]);
    let b = run(&mut session(&nchwc.training), &feeds, &[]);
    let loss_err = rel_l2(&a["loss"], &b["loss"]);
    assert!(loss_err <= tol, "loss differs by {loss_err:.2e} relative");
    let mut compared = 0;
    for (name, ga) in a.iter().filter(|(n, _)| n.ends_with("_grad")) {
        let err = rel_l2(ga, &b[name]);
        assert!(err <= tol, "{name}: NCHWc differs by {err:.2e} relative L2");
        compared += 1;
    }
    compared
}

#[test]
fn nchwc_training_graph_equals_the_portable_one_on_depthwise_convs_of_8_and_24_channels() {
    let block = block();
    if block == 0 {
        return;
    }
    let portable = build(depthwise_cnn(), CpuKernels::Portable);
    let nchwc = build(depthwise_cnn(), CpuKernels::Nchwc { block });
    assert_eq!(nchwc_convs(&portable), 0);
    // Forward: dw8, dw24, dws; input gradients (stride 1): dw24's, dw8's (dws's is a
    // ConvTranspose, the weight gradients are not depthwise Convs).
    assert_eq!(nchwc_convs(&nchwc), 5);
    assert_eq!(portable.params.len(), nchwc.params.len());
    let mut rng = Rng(11);
    let x = rng.array(&[3, 3, 9, 9], -1.0, 1.0);
    let y = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 0.0, 1.0]).expect("labels");
    let compared = assert_same_outputs(&portable, &nchwc, ("image", &x), &y, 1e-5);
    assert_eq!(compared, portable.params.len());
}

#[test]
fn nchwc_xception_loss_and_all_156_gradients_equal_the_portable_graph() {
    let block = block();
    if block == 0 {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/xception");
    assert!(
        dir.join("model.json").exists(),
        "{} is missing: run `just setup` (it fetches and converts the Keras Xception)",
        dir.display()
    );
    let manifest = ModelManifest::read(&dir).expect("manifest");
    let path = manifest.training_onnx_path(&dir).expect("training graph");
    let forward = xfer_onnx::read_model(&path).expect("train.onnx");
    let graphs = |kernels| {
        TrainingGraphBuilder::new(forward.clone())
            .features(&manifest.output)
            .trainable(Trainable::All)
            .example_shape(&[3, 150, 150])
            .seed(1)
            .cpu_kernels(kernels)
            .build()
            .expect("training graph")
    };
    let portable = graphs(CpuKernels::Portable);
    let nchwc = graphs(CpuKernels::Nchwc { block });
    // 34 depthwise convs (blocks 2-14), each in the forward and in its input gradient (every
    // one has a trainable conv upstream).
    assert_eq!(nchwc_convs(&nchwc), 2 * 34);
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 150, 150]), |i| {
        ((i[3] * 3 + i[2] * 5 + 40 * i[1] + 97 * i[0]) % 256) as f32
    });
    let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f32, 0.0]).expect("labels");
    let compared = assert_same_outputs(&portable, &nchwc, ("pixels", &x), &y, 1e-4);
    assert_eq!(compared, 156);
}
