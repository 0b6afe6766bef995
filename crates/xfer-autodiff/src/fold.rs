//! Folding trainable `Conv -> BatchNormalization` pairs into one convolution whose kernel and
//! bias are computed from the parameters at run time.

use std::collections::{HashMap, HashSet};

use xfer_onnx::{AttributeProto, GraphBuilder, NodeProto, TensorProto};

use crate::Result;
use crate::vjp::{input, inv_std_values, output};

/// Shapes of values added to a graph, in the order they were added.
pub(crate) type ValueShapes = Vec<(String, Vec<i64>)>;

/// A Conv and the BatchNormalization that alone consumes its output.
struct Pair {
    conv_index: usize,
    conv: NodeProto,
    bn: NodeProto,
    /// The conv's weight shape `[O, I, kh, kw]`.
    w_dims: Vec<i64>,
    /// The BatchNorm's moving variance.
    var: Vec<f32>,
}

/// Rewrites `Conv -> BatchNormalization` pairs that train (the conv weight, the BN scale or
/// offset is trainable) into standard ops that fold the BatchNorm into the convolution at run
/// time: `a = scale * inv_std; W' = W * a; b = B - mean * a; y = Conv(x, W', b)`. Same values
/// as the pair, one full-size pass instead of three, and the generic gradients of Mul, Sub,
/// Reshape and Conv give exactly the BatchNorm gradients (dscale = inv_std * (sum(W * dW') -
/// mean * dB)). Only pairs where the conv has no bias, its output feeds only the BN, and the
/// statistics are initializers. Returns the shapes of the new values.
pub(crate) fn fuse_conv_bn(b: &mut GraphBuilder, trained: &HashSet<String>) -> Result<ValueShapes> {
    let mut new_shapes = Vec::new();
    let uses = use_counts(b);
    let mut bi = 0;
    while bi < b.graph().node.len() {
        let bn_pos = bi;
        bi += 1;
        let Some(pair) = foldable(b, bn_pos, trained, &uses)? else {
            continue;
        };
        let (replacement, shapes) = folded(b, &pair)?;
        new_shapes.extend(shapes);
        let nodes = &mut b.graph_mut().node;
        let added = replacement.len();
        nodes.splice(bn_pos..bn_pos + 1, replacement);
        nodes.remove(pair.conv_index);
        bi = bn_pos + added - 1;
    }
    Ok(new_shapes)
}

/// How many times each value is consumed (node inputs and graph outputs).
fn use_counts(b: &GraphBuilder) -> HashMap<String, usize> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &b.graph().node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &b.graph().output {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    uses
}

/// The pair ending at node `bn_pos` when it can be folded.
fn foldable(
    b: &GraphBuilder,
    bn_pos: usize,
    trained: &HashSet<String>,
    uses: &HashMap<String, usize>,
) -> Result<Option<Pair>> {
    let graph = b.graph();
    let Some(bn) = graph.node.get(bn_pos) else {
        return Ok(None);
    };
    if bn.op_type != "BatchNormalization"
        || bn.input.len() < 5
        || bn.output.len() != 1
        || bn.attr_int("training_mode", 0) != 0
    {
        return Ok(None);
    }
    let Some(conv_index) = graph
        .node
        .iter()
        .position(|n| n.op_type == "Conv" && n.output.first() == Some(&bn.input[0]))
    else {
        return Ok(None);
    };
    let conv = &graph.node[conv_index];
    let w = input(conv, 1)?;
    let has_bias = conv.input.get(2).is_some_and(|s| !s.is_empty());
    let (scale, offset, mean, var) = (&bn.input[1], &bn.input[2], &bn.input[3], &bn.input[4]);
    let trains = trained.contains(w) || trained.contains(scale) || trained.contains(offset);
    let w_dims = graph.initializer(w).map(|t| t.dims.clone());
    let var_values = graph.initializer(var).map(TensorProto::to_f32);
    let mean_is_const = graph.initializer(mean).is_some();
    let (Some(w_dims), Some(Ok(var))) = (w_dims, var_values) else {
        return Ok(None);
    };
    let conv_output = output(conv, 0)?;
    if !trains
        || has_bias
        || !mean_is_const
        || uses.get(conv_output).copied().unwrap_or(0) != 1
        || w_dims.len() != 4
    {
        return Ok(None);
    }
    Ok(Some(Pair {
        conv_index,
        conv: conv.clone(),
        bn: bn.clone(),
        w_dims,
        var,
    }))
}

/// A node with one output, named after it.
fn node(op: &str, inputs: &[&str], out: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![out.to_owned()],
        name: format!("{out}_node"),
        op_type: op.to_owned(),
        attribute,
        ..Default::default()
    }
}

/// The nodes that replace the pair (the folded kernel and bias, then the conv), and the shapes
/// of the values they add.
fn folded(b: &mut GraphBuilder, pair: &Pair) -> Result<(Vec<NodeProto>, ValueShapes)> {
    let Pair {
        conv, bn, w_dims, ..
    } = pair;
    let (x, w) = (input(conv, 0)?, input(conv, 1)?);
    let (scale, offset, mean) = (&bn.input[1], &bn.input[2], &bn.input[3]);
    let c = w_dims[0];
    let inv = inv_std_values(&pair.var, bn.attr_float("epsilon", 1e-5));
    let base = output(bn, 0)?.to_owned();
    let inv_std = b.constant_f32(&format!("{base}.fold_inv_std"), &[c], &inv);
    let shape4 = b.constant_i64(&format!("{base}.fold_shape"), &[4], &[c, 1, 1, 1]);
    let [a, a4, kernel, mean_a, bias] = [
        "fold_a",
        "fold_a4",
        "fold_kernel",
        "fold_mean_a",
        "fold_bias",
    ]
    .map(|s| b.unique(&format!("{base}.{s}")));
    let mut fused_conv = conv.clone();
    fused_conv.input = vec![x.to_owned(), kernel.clone(), bias.clone()];
    fused_conv.output = vec![base];
    fused_conv.name = format!("{}_folded", bn.name);
    let replacement = vec![
        node("Mul", &[scale, &inv_std], &a, vec![]),
        node("Reshape", &[&a, &shape4], &a4, vec![]),
        node("Mul", &[w, &a4], &kernel, vec![]),
        node("Mul", &[mean, &a], &mean_a, vec![]),
        node("Sub", &[offset, &mean_a], &bias, vec![]),
        fused_conv,
    ];
    let shapes = vec![
        (inv_std, vec![c]),
        (a, vec![c]),
        (a4, vec![c, 1, 1, 1]),
        (kernel, w_dims.clone()),
        (mean_a, vec![c]),
        (bias, vec![c]),
    ];
    Ok((replacement, shapes))
}
