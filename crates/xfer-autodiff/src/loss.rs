//! The loss appended to the training graph, and the eval graph (forward + head).

use std::collections::HashMap;

use xfer_onnx::{Dim, GraphBuilder, GraphProto, ModelProto, TensorProto, attr};

use crate::Result;
use crate::builder::{HEAD_BIAS, HEAD_KERNEL, reserve};
use crate::emit::Emit;
use crate::spec::Loss;

/// Emits the loss (output `loss`) and returns the gradient of the loss with respect to `logits`.
pub(crate) fn emit_loss(e: &mut Emit, loss: Loss, logits: &str, units: i64) -> Result<String> {
    match loss {
        Loss::BinaryCrossEntropyWithLogits => {
            // loss_i = max(z, 0) - z*y + log(1 + exp(-|z|)); dL/dz = (sigmoid(z) - y) / N
            let z = e.reshape(logits, &[-1]);
            let relu = e.op("Relu", &[&z], vec![]);
            let zy = e.op("Mul", &[&z, "labels"], vec![]);
            let abs = e.op("Abs", &[&z], vec![]);
            let neg = e.op("Neg", &[&abs], vec![]);
            let sp = e.op("Softplus", &[&neg], vec![]);
            let d = e.op("Sub", &[&relu, &zy], vec![]);
            let per = e.op("Add", &[&d, &sp], vec![]);
            e.b.node_named(
                "ReduceMean",
                &[&per],
                &["loss"],
                vec![attr::int("keepdims", 0)],
            );
            let sig = e.op("Sigmoid", &[&z], vec![]);
            let diff = e.op("Sub", &[&sig, "labels"], vec![]);
            let n = e.op("Size", &[&z], vec![]);
            let nf = e.cast_f32(&n);
            let dz = e.op("Div", &[&diff, &nf], vec![]);
            Ok(e.reshape(&dz, &[-1, 1]))
        }
        Loss::SoftmaxCrossEntropy => {
            // loss = -mean(log_softmax(z)[label]); dL/dz = (softmax(z) - onehot) / N
            let logp = e.op("LogSoftmax", &[logits], vec![attr::int("axis", 1)]);
            let axis1 = e.i64s(&[1]);
            let lab = e.op("Unsqueeze", &["labels", &axis1], vec![]);
            let picked = e.op("GatherElements", &[&logp, &lab], vec![attr::int("axis", 1)]);
            let mean = e.op("ReduceMean", &[&picked], vec![attr::int("keepdims", 0)]);
            e.b.node_named("Neg", &[&mean], &["loss"], vec![]);
            let p = e.op("Exp", &[&logp], vec![]);
            let classes: Vec<i64> = (0..units).collect();
            let cls = e.b.constant_i64("classes", &[1, units], &classes);
            let eq = e.op("Equal", &[&cls, &lab], vec![]);
            let onehot = e.cast_f32(&eq);
            let d = e.op("Sub", &[&p, &onehot], vec![]);
            let n = e.op("Size", &["labels"], vec![]);
            let nf = e.cast_f32(&n);
            Ok(e.op("Div", &[&d, &nf], vec![]))
        }
    }
}

/// The eval model: the forward graph with Dropout as Identity, then the head (its parameters as
/// initializers holding `head_values`). Output: `logits`.
pub(crate) fn build_eval(
    graph: &GraphProto,
    features: &str,
    dense: bool,
    head_values: &HashMap<String, Vec<f32>>,
    dim: i64,
    units: i64,
    batch: &Dim,
) -> Result<ModelProto> {
    let mut g = graph.clone();
    for n in &mut g.node {
        if n.op_type == "Dropout" {
            n.op_type = "Identity".to_owned();
            n.attribute.clear();
            n.input.truncate(1);
            n.output.truncate(1);
        }
    }
    g.output.clear();
    let mut b = GraphBuilder::from_graph(g);
    reserve(&mut b, "logits")?;
    if dense {
        b.initializer(TensorProto::from_f32(
            HEAD_KERNEL,
            &[dim, units],
            &head_values[HEAD_KERNEL],
        ));
        b.initializer(TensorProto::from_f32(
            HEAD_BIAS,
            &[units],
            &head_values[HEAD_BIAS],
        ));
        let mm = b.unique("head.matmul");
        b.node_named("MatMul", &[features, HEAD_KERNEL], &[&mm], vec![]);
        b.node_named("Add", &[&mm, HEAD_BIAS], &["logits"], vec![]);
    } else {
        b.node_named("Identity", &[features], &["logits"], vec![]);
    }
    b.output("logits", &[batch.clone(), Dim::Fixed(units)]);
    let mut model = ModelProto::with_graph(b.build(), xfer_onnx::DEFAULT_OPSET);
    model.producer_name = "xfer-autodiff".to_owned();
    model.set_metadata("xfer.graph", "eval");
    Ok(model)
}
