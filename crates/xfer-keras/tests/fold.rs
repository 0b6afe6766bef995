//! `fold_for_inference` on hand-built graphs.

use xfer_keras::fold_for_inference;
use xfer_onnx::{GraphBuilder, ModelProto, TensorProto, attr};

/// `pixels -> Conv(kernel [2,1,1,1], bias) -> BatchNormalization (2 channels) -> features`.
fn conv_bn(bias: &[f32]) -> ModelProto {
    let mut g = GraphBuilder::new("g");
    g.input("pixels", &[1.into(), 1.into(), 2.into(), 2.into()]);
    let k = g.initializer(TensorProto::from_f32(
        "c.kernel",
        &[2, 1, 1, 1],
        &[0.5, 2.0],
    ));
    let b = g.initializer(TensorProto::from_f32("c.bias", &[bias.len() as i64], bias));
    let c = g.op("Conv", &["pixels", &k, &b], vec![], "c");
    let p: Vec<String> = ["gamma", "beta", "mean", "var"]
        .iter()
        .map(|n| g.initializer(TensorProto::from_f32(format!("bn.{n}"), &[2], &[1.0, 2.0])))
        .collect();
    g.node_named(
        "BatchNormalization",
        &[&c, &p[0], &p[1], &p[2], &p[3]],
        &["features"],
        vec![attr::float("epsilon", 1e-3)],
    );
    g.output("features", &[1.into(), 2.into(), 2.into(), 2.into()]);
    g.build_model()
}

#[test]
fn folding_a_conv_whose_bias_has_too_few_values_is_an_error_not_a_panic() {
    let err = fold_for_inference(&conv_bn(&[0.1])).expect_err("bias of 1 value for 2 channels");
    assert!(err.to_string().contains("different channel count"), "{err}");
    let folded = fold_for_inference(&conv_bn(&[0.1, 0.2])).expect("fold");
    let graph = folded.graph.expect("graph");
    assert!(graph.node.iter().all(|n| n.op_type == "Conv"));
    assert!(graph.initializer("c.kernel_folded").is_some());
}
