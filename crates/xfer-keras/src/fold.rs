//! Inference-time folding: BatchNormalization into the convolution before it,
//! and the input preprocessing (`x * s + t`) into a first 'valid' convolution.

use std::collections::{BTreeMap, HashSet};

use ndarray::{ArrayD, Axis, IxDyn};
use xfer_onnx::{GraphBuilder, ModelProto, NodeProto, TensorProto};

use crate::{Error, Result};

/// Folds BatchNorm and preprocessing into convolutions in an ONNX model (a copy).
///
/// Works on any graph whose convolutions and BatchNorm parameters are float32
/// initializers, e.g. a trained `train.onnx` written by [`crate::convert`] with
/// `fold_batch_norm: false`. Values and outputs keep their names.
pub fn fold_for_inference(model: &ModelProto) -> Result<ModelProto> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
    let mut inits = BTreeMap::new();
    let mut others = Vec::new();
    for t in &graph.initializer {
        match t.to_f32() {
            Ok(v) => {
                let array = ArrayD::from_shape_vec(IxDyn(&t.shape()), v)
                    .map_err(|e| Error::Graph(format!("initializer `{}`: {e}", t.name)))?;
                inits.insert(t.name.clone(), array);
            }
            Err(_) => others.push(t.clone()),
        }
    }
    let mut nodes = graph.node.clone();
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let first_input = graph
        .input
        .iter()
        .map(|i| i.name.clone())
        .find(|n| !inits.contains_key(n))
        .unwrap_or_default();
    fold_nodes(&mut nodes, &mut inits, &outputs, &first_input)?;

    let mut new_graph = graph.clone();
    new_graph.node = nodes;
    let referenced: HashSet<&str> = new_graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut initializers: Vec<TensorProto> = inits
        .iter()
        .filter(|(n, _)| referenced.contains(n.as_str()))
        .map(|(n, a)| {
            let dims: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
            TensorProto::from_f32(n.clone(), &dims, &a.iter().copied().collect::<Vec<_>>())
        })
        .collect();
    initializers.extend(
        others
            .into_iter()
            .filter(|t| referenced.contains(t.name.as_str())),
    );
    new_graph.initializer = initializers;
    let gb = GraphBuilder::from_graph(new_graph);
    let mut out = model.clone();
    out.graph = Some(gb.build());
    out.set_metadata("batch_norm", "folded");
    Ok(out)
}

fn uses(nodes: &[NodeProto], value: &str) -> usize {
    nodes
        .iter()
        .flat_map(|n| n.input.iter())
        .filter(|i| *i == value)
        .count()
}

fn fresh_name(inits: &BTreeMap<String, ArrayD<f32>>, want: &str) -> String {
    if !inits.contains_key(want) {
        return want.to_owned();
    }
    (1..)
        .map(|i| format!("{want}_{i}"))
        .find(|n| !inits.contains_key(n))
        .unwrap_or_else(|| want.to_owned())
}

/// `block1_conv1.kernel` -> `block1_conv1.kernel_folded`; names already folded stay.
fn folded_name(name: &str) -> String {
    if name.ends_with("_folded") {
        name.to_owned()
    } else {
        format!("{name}_folded")
    }
}

/// `block1_conv1.kernel` -> `block1_conv1.bias_folded`.
fn folded_bias_name(kernel: &str) -> String {
    let layer = kernel.rsplit_once('.').map_or(kernel, |(l, _)| l);
    format!("{layer}.bias_folded")
}

fn f64_of(a: &ArrayD<f32>) -> ArrayD<f64> {
    a.mapv(f64::from)
}

fn conv_is_unpadded(n: &NodeProto) -> bool {
    let auto = n.attr_string("auto_pad").unwrap_or_default();
    let pads_zero = n
        .attr_ints("pads")
        .is_none_or(|p| p.iter().all(|&v| v == 0));
    (auto.is_empty() || auto == "NOTSET" || auto == "VALID") && pads_zero
}

/// Replaces a conv's weight (and bias) initializers by folded versions.
fn set_conv_params(
    nodes: &mut [NodeProto],
    inits: &mut BTreeMap<String, ArrayD<f32>>,
    conv: usize,
    w: ArrayD<f64>,
    b: Vec<f64>,
) {
    let old_w = nodes[conv].input[1].clone();
    let old_b = nodes[conv].input.get(2).cloned();
    // Only drop the old tensors if nothing else reads them.
    let w_name = if old_w.ends_with("_folded") {
        old_w.clone()
    } else {
        fresh_name(inits, &folded_name(&old_w))
    };
    let b_name = match &old_b {
        Some(n) if n.ends_with("_folded") => n.clone(),
        _ => fresh_name(inits, &folded_bias_name(&old_w)),
    };
    inits.insert(w_name.clone(), w.mapv(|v| v as f32));
    let bias = ArrayD::from_shape_vec(IxDyn(&[b.len()]), b.iter().map(|&v| v as f32).collect())
        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])));
    inits.insert(b_name.clone(), bias);
    nodes[conv].input.truncate(1);
    nodes[conv].input.push(w_name.clone());
    nodes[conv].input.push(b_name.clone());
    for old in [Some(old_w), old_b].into_iter().flatten() {
        if old != w_name && old != b_name && uses(nodes, &old) == 0 {
            inits.remove(&old);
        }
    }
}

/// Folds in place; `outputs` are the graph outputs, `input` the pixel input.
pub(crate) fn fold_nodes(
    nodes: &mut Vec<NodeProto>,
    inits: &mut BTreeMap<String, ArrayD<f32>>,
    outputs: &[String],
    input: &str,
) -> Result<()> {
    // BatchNorm after Conv.
    let mut i = 0;
    while i < nodes.len() {
        if nodes[i].op_type != "BatchNormalization" || nodes[i].input.len() < 5 {
            i += 1;
            continue;
        }
        let bn = nodes[i].clone();
        let x = &bn.input[0];
        let producer = nodes.iter().position(|n| n.output.first() == Some(x));
        let params: Option<Vec<&ArrayD<f32>>> =
            bn.input[1..5].iter().map(|n| inits.get(n)).collect();
        let (Some(p), Some(params)) = (producer, params) else {
            i += 1;
            continue;
        };
        let conv = &nodes[p];
        let foldable = conv.op_type == "Conv"
            && uses(nodes, x) == 1
            && !outputs.contains(x)
            && conv.input.len() >= 2
            && uses(nodes, &conv.input[1]) == 1
            && inits.contains_key(&conv.input[1])
            && conv
                .input
                .get(2)
                .is_none_or(|b| inits.contains_key(b) && uses(nodes, b) == 1);
        if !foldable {
            i += 1;
            continue;
        }
        let eps = f64::from(bn.attr_float("epsilon", 1e-5));
        let [gamma, beta, mean, var] =
            [0, 1, 2, 3].map(|k| f64_of(params[k]).into_iter().collect::<Vec<f64>>());
        let w = f64_of(&inits[&conv.input[1]]);
        let c = w.shape()[0];
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != c) {
            return Err(Error::Graph(format!(
                "BatchNormalization `{}` has parameters for a different channel count than the {c} outputs of `{}`",
                bn.name, conv.name
            )));
        }
        let b: Vec<f64> = match conv.input.get(2) {
            Some(name) => f64_of(&inits[name]).into_iter().collect(),
            None => vec![0.0; c],
        };
        let s: Vec<f64> = (0..c).map(|o| gamma[o] / (var[o] + eps).sqrt()).collect();
        let mut w2 = w;
        for (o, mut slice) in w2.axis_iter_mut(Axis(0)).enumerate() {
            slice.mapv_inplace(|v| v * s[o]);
        }
        let b2: Vec<f64> = (0..c).map(|o| (b[o] - mean[o]) * s[o] + beta[o]).collect();
        set_conv_params(nodes, inits, p, w2, b2);
        nodes[p].output[0] = bn.output[0].clone();
        nodes.remove(i);
        for name in &bn.input[1..5] {
            if uses(nodes, name) == 0 {
                inits.remove(name);
            }
        }
        // `i` now points at the next node.
    }

    // Preprocessing Mul(input, s) -> Add(., t) -> Conv (valid, group 1).
    let mul = nodes.iter().position(|n| {
        n.op_type == "Mul"
            && n.input.first().map(String::as_str) == Some(input)
            && n.input
                .get(1)
                .is_some_and(|s| inits.get(s).is_some_and(|a| a.len() == 1))
    });
    let Some(mul) = mul else { return Ok(()) };
    let scaled = nodes[mul].output[0].clone();
    let add = nodes.iter().position(|n| {
        n.op_type == "Add"
            && n.input.first() == Some(&scaled)
            && n.input
                .get(1)
                .is_some_and(|t| inits.get(t).is_some_and(|a| a.len() == 1))
    });
    let Some(add) = add else { return Ok(()) };
    let pre = nodes[add].output[0].clone();
    if uses(nodes, &scaled) != 1
        || uses(nodes, &pre) != 1
        || outputs.contains(&pre)
        || outputs.contains(&scaled)
    {
        return Ok(());
    }
    let Some(conv) = nodes.iter().position(|n| n.input.first() == Some(&pre)) else {
        return Ok(());
    };
    let n = &nodes[conv];
    if n.op_type != "Conv"
        || n.attr_int("group", 1) != 1
        || !conv_is_unpadded(n)
        || n.input.len() < 2
        || !inits.contains_key(&n.input[1])
        || uses(nodes, &n.input[1]) != 1
    {
        return Ok(());
    }
    let s = f64::from(
        inits[&nodes[mul].input[1]]
            .iter()
            .copied()
            .next()
            .unwrap_or(1.0),
    );
    let t = f64::from(
        inits[&nodes[add].input[1]]
            .iter()
            .copied()
            .next()
            .unwrap_or(0.0),
    );
    let w = f64_of(&inits[&n.input[1]]);
    let c = w.shape()[0];
    let b: Vec<f64> = match n.input.get(2) {
        Some(name) if inits.contains_key(name) => f64_of(&inits[name]).into_iter().collect(),
        Some(_) => return Ok(()),
        None => vec![0.0; c],
    };
    let b2: Vec<f64> = w
        .axis_iter(Axis(0))
        .zip(&b)
        .map(|(slice, bo)| bo + t * slice.sum())
        .collect();
    let w2 = w.mapv(|v| v * s);
    set_conv_params(nodes, inits, conv, w2, b2);
    nodes[conv].input[0] = input.to_owned();
    let (first, second) = if mul > add { (mul, add) } else { (add, mul) };
    let removed = [nodes.remove(first), nodes.remove(second)];
    for node in removed {
        if let Some(k) = node.input.get(1).filter(|k| uses(nodes, k) == 0) {
            inits.remove(k);
        }
    }
    Ok(())
}
