//! Inference-time folding of `BatchNormalization` into the convolution before it:
//! `W' = W·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`, computed in f64 and stored as f32.
//!
//! The one implementation behind the Keras converter's inference graph
//! (`xfer-keras`) and the fine-tuned model export (`xfer-finetune`).
//!
//! A folded convolution reads `L.kernel_folded` and `L.bias_folded` (for a kernel
//! named `L.kernel`); names already ending in `_folded` are reused, so folding a
//! convolution twice (BatchNorm, then preprocessing) keeps one pair of tensors.

use std::collections::{BTreeMap, HashSet};

use crate::{Error, GraphProto, NodeProto, Result, TensorProto};

/// A float32 initializer opened up for rewriting.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatTensor {
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl FloatTensor {
    /// A tensor of `dims` holding `data`.
    pub fn new(dims: Vec<i64>, data: Vec<f32>) -> Self {
        FloatTensor { dims, data }
    }

    /// The initializer `name` with these values (little-endian raw data).
    pub fn to_proto(&self, name: &str) -> TensorProto {
        TensorProto::from_f32(name, &self.dims, &self.data)
    }

    /// Size of the first dimension (a convolution's output channels); 0 for a scalar.
    pub fn leading_dim(&self) -> usize {
        self.dims.first().map_or(0, |&d| d.max(0) as usize)
    }
}

/// The float32 initializers of a graph being rewritten, by name (so the rewritten
/// graph lists them in a deterministic order).
pub type FloatInitializers = BTreeMap<String, FloatTensor>;

/// How many node inputs read `value`.
pub fn uses(nodes: &[NodeProto], value: &str) -> usize {
    nodes
        .iter()
        .flat_map(|n| n.input.iter())
        .filter(|i| *i == value)
        .count()
}

/// Folds every `Conv → BatchNormalization` pair into the Conv, in place, and returns
/// how many were folded. A pair is folded when the Conv output is read only by the
/// BatchNormalization and is no graph output (`outputs`), and the Conv's kernel (and
/// bias, if any) and the four BatchNorm parameters are float initializers read by
/// nobody else. The Conv keeps its name and takes the BatchNorm's output name;
/// parameters nothing reads any more leave `inits`.
pub fn fold_batch_norms(
    nodes: &mut Vec<NodeProto>,
    inits: &mut FloatInitializers,
    outputs: &[String],
) -> Result<usize> {
    let mut folded = 0;
    let mut i = 0;
    while i < nodes.len() {
        match foldable_pair(nodes, inits, outputs, i) {
            Some(conv) => {
                fold_pair(nodes, inits, conv, i)?;
                folded += 1;
                // `i` now points at the node after the removed BatchNormalization.
            }
            None => i += 1,
        }
    }
    Ok(folded)
}

/// [`fold_batch_norms`] on a whole graph: its float initializers are opened up,
/// folded, and written back (those still read, in name order, then the other
/// initializers in their order); graph inputs naming a dropped initializer go too.
pub fn fold_batch_norms_in_graph(graph: &mut GraphProto) -> Result<usize> {
    rewrite_graph(graph, |nodes, inits, outputs| {
        fold_batch_norms(nodes, inits, outputs)
    })
}

/// Runs `rewrite` on `graph`'s nodes, float initializers and output names, then
/// writes the result back as [`fold_batch_norms_in_graph`] describes.
pub fn rewrite_graph<T>(
    graph: &mut GraphProto,
    rewrite: impl FnOnce(&mut Vec<NodeProto>, &mut FloatInitializers, &[String]) -> Result<T>,
) -> Result<T> {
    let (mut inits, others) = split_initializers(std::mem::take(&mut graph.initializer));
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let before: HashSet<String> = inits
        .keys()
        .cloned()
        .chain(others.iter().map(|t| t.name.clone()))
        .collect();
    let result = rewrite(&mut graph.node, &mut inits, &outputs)?;
    graph.initializer = referenced_initializers(&graph.node, inits, others);
    let kept: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .retain(|v| !before.contains(&v.name) || kept.contains(v.name.as_str()));
    Ok(result)
}

/// Splits initializers into the float32 ones (decoded, by name) and the others (in order).
pub fn split_initializers(initializers: Vec<TensorProto>) -> (FloatInitializers, Vec<TensorProto>) {
    let mut floats = FloatInitializers::new();
    let mut others = Vec::new();
    for t in initializers {
        match t.to_f32() {
            Ok(data) => {
                floats.insert(t.name.clone(), FloatTensor::new(t.dims.clone(), data));
            }
            Err(_) => others.push(t),
        }
    }
    (floats, others)
}

/// The initializers some node reads: the float ones in name order, then `others` in order.
pub fn referenced_initializers(
    nodes: &[NodeProto],
    floats: FloatInitializers,
    others: Vec<TensorProto>,
) -> Vec<TensorProto> {
    let referenced: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    floats
        .iter()
        .filter(|(name, _)| referenced.contains(name.as_str()))
        .map(|(name, t)| t.to_proto(name))
        .chain(
            others
                .into_iter()
                .filter(|t| referenced.contains(t.name.as_str())),
        )
        .collect()
}

/// The index of the Conv that the BatchNormalization at `bn` can be folded into.
fn foldable_pair(
    nodes: &[NodeProto],
    inits: &FloatInitializers,
    outputs: &[String],
    bn: usize,
) -> Option<usize> {
    let node = nodes.get(bn)?;
    if node.op_type != "BatchNormalization" || node.input.len() != 5 || node.output.len() != 1 {
        return None;
    }
    let x = &node.input[0];
    if !node.input[1..].iter().all(|p| inits.contains_key(p)) {
        return None;
    }
    let conv = nodes.iter().position(|n| n.output.first() == Some(x))?;
    let c = &nodes[conv];
    let sole_reader = |name: &String| inits.contains_key(name) && uses(nodes, name) == 1;
    let foldable = c.op_type == "Conv"
        && uses(nodes, x) == 1
        && !outputs.contains(x)
        && c.input.get(1).is_some_and(sole_reader)
        && conv_bias(c).is_none_or(sole_reader);
    foldable.then_some(conv)
}

/// The name of a Conv's bias input, if it has one (an empty name means none).
fn conv_bias(conv: &NodeProto) -> Option<&String> {
    conv.input.get(2).filter(|b| !b.is_empty())
}

/// Folds the BatchNormalization at `bn` into the Conv at `conv` (see [`foldable_pair`]).
fn fold_pair(
    nodes: &mut Vec<NodeProto>,
    inits: &mut FloatInitializers,
    conv: usize,
    bn: usize,
) -> Result<()> {
    let bn_node = nodes.remove(bn);
    let conv = if conv > bn { conv - 1 } else { conv };
    let (kernel, bias) = scaled_conv_params(&nodes[conv], &bn_node, inits)?;
    set_conv_params(nodes, inits, conv, kernel, bias);
    nodes[conv].output[0].clone_from(&bn_node.output[0]);
    for name in &bn_node.input[1..] {
        if uses(nodes, name) == 0 {
            inits.remove(name);
        }
    }
    Ok(())
}

/// The Conv's kernel and bias with the BatchNormalization applied.
fn scaled_conv_params(
    conv: &NodeProto,
    bn: &NodeProto,
    inits: &FloatInitializers,
) -> Result<(FloatTensor, Vec<f32>)> {
    let param = |name: &str| -> Result<&FloatTensor> {
        inits
            .get(name)
            .ok_or_else(|| Error::Graph(format!("initializer `{name}` of `{}` is gone", bn.name)))
    };
    let kernel = param(&conv.input[1])?;
    let c = kernel.leading_dim();
    let per = kernel.data.len().checked_div(c).unwrap_or(0);
    let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|k| param(&bn.input[k]));
    let [gamma, beta, mean, var] = [gamma?, beta?, mean?, var?].map(|p| &p.data);
    let bias = match conv_bias(conv) {
        Some(name) => param(name)?.data.clone(),
        None => vec![0.0; c],
    };
    if c == 0 || per * c != kernel.data.len() {
        return Err(Error::Graph(format!(
            "Conv `{}` has a kernel of dims {:?}; folding needs [out_channels, ...]",
            conv.name, kernel.dims
        )));
    }
    if [gamma, beta, mean, var, &bias].iter().any(|v| v.len() != c) {
        return Err(Error::Graph(format!(
            "BatchNormalization `{}` has parameters for a different channel count than the {c} outputs of `{}`",
            bn.name, conv.name
        )));
    }
    let eps = f64::from(bn.attr_float("epsilon", 1e-5));
    let scale: Vec<f64> = (0..c)
        .map(|o| f64::from(gamma[o]) / (f64::from(var[o]) + eps).sqrt())
        .collect();
    let data = kernel
        .data
        .iter()
        .enumerate()
        .map(|(k, &w)| (f64::from(w) * scale[k / per]) as f32)
        .collect();
    let bias = (0..c)
        .map(|o| ((f64::from(bias[o]) - f64::from(mean[o])) * scale[o] + f64::from(beta[o])) as f32)
        .collect();
    Ok((FloatTensor::new(kernel.dims.clone(), data), bias))
}

/// Replaces the kernel and bias of the Conv at `conv` by `kernel` and `bias`, stored
/// as `L.kernel_folded` / `L.bias_folded` (or the names already in use when they end
/// in `_folded`); the old tensors leave `inits` when nothing else reads them.
pub fn set_conv_params(
    nodes: &mut [NodeProto],
    inits: &mut FloatInitializers,
    conv: usize,
    kernel: FloatTensor,
    bias: Vec<f32>,
) {
    let old_w = nodes[conv].input.get(1).cloned().unwrap_or_default();
    let old_b = nodes[conv].input.get(2).cloned();
    let w_name = if old_w.ends_with("_folded") {
        old_w.clone()
    } else {
        fresh_name(inits, &format!("{old_w}_folded"))
    };
    let b_name = match &old_b {
        Some(n) if n.ends_with("_folded") => n.clone(),
        _ => fresh_name(inits, &folded_bias_name(&old_w)),
    };
    inits.insert(w_name.clone(), kernel);
    inits.insert(
        b_name.clone(),
        FloatTensor::new(vec![bias.len() as i64], bias),
    );
    let input = &mut nodes[conv].input;
    input.truncate(1);
    input.push(w_name.clone());
    input.push(b_name.clone());
    for old in [Some(old_w), old_b].into_iter().flatten() {
        if old != w_name && old != b_name && uses(nodes, &old) == 0 {
            inits.remove(&old);
        }
    }
}

/// `want`, or `want_1`, `want_2`, ... when an initializer already has the name.
fn fresh_name(inits: &FloatInitializers, want: &str) -> String {
    if !inits.contains_key(want) {
        return want.to_owned();
    }
    (1..)
        .map(|i| format!("{want}_{i}"))
        .find(|n| !inits.contains_key(n))
        .unwrap_or_else(|| want.to_owned())
}

/// `block1_conv1.kernel` -> `block1_conv1.bias_folded`.
fn folded_bias_name(kernel: &str) -> String {
    let layer = kernel.rsplit_once('.').map_or(kernel, |(l, _)| l);
    format!("{layer}.bias_folded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GraphBuilder, attr};

    /// `x -> Conv(c.kernel [2,1,1,2], c.bias?) -> BatchNormalization(bn.*) -> y`.
    fn conv_bn(bias: Option<&[f32]>, gamma: &[f32]) -> GraphProto {
        let mut g = GraphBuilder::new("g");
        g.input("x", &[1.into(), 1.into(), 1.into(), 2.into()]);
        let k = g.initializer(TensorProto::from_f32(
            "c.kernel",
            &[2, 1, 1, 2],
            &[0.5, -1.25, 3.0, 0.1],
        ));
        let mut inputs = vec!["x".to_owned(), k];
        if let Some(b) = bias {
            inputs.push(g.initializer(TensorProto::from_f32("c.bias", &[b.len() as i64], b)));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let c = g.op("Conv", &refs, vec![], "c");
        let params: Vec<String> = [
            ("bn.gamma", gamma),
            ("bn.beta", &[0.25, -0.5][..]),
            ("bn.mean", &[0.1, 0.2][..]),
            ("bn.var", &[0.9, 1.7][..]),
        ]
        .iter()
        .map(|(name, v)| g.initializer(TensorProto::from_f32(*name, &[v.len() as i64], v)))
        .collect();
        g.node_named(
            "BatchNormalization",
            &[&c, &params[0], &params[1], &params[2], &params[3]],
            &["y"],
            vec![attr::float("epsilon", 1e-3)],
        );
        g.output("y", &[1.into(), 2.into(), 1.into(), 1.into()]);
        g.build()
    }

    fn values(graph: &GraphProto, name: &str) -> Vec<f32> {
        graph
            .initializer(name)
            .unwrap_or_else(|| panic!("no initializer `{name}`"))
            .to_f32()
            .expect("float")
    }

    #[test]
    fn folds_batch_norm_into_the_conv_in_f64() {
        let mut graph = conv_bn(Some(&[0.3, -0.7]), &[1.5, 0.8]);
        assert_eq!(fold_batch_norms_in_graph(&mut graph).expect("fold"), 1);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Conv"]);
        let conv = &graph.node[0];
        assert_eq!(conv.input, ["x", "c.kernel_folded", "c.bias_folded"]);
        assert_eq!(conv.output, ["y"]);
        let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c.bias_folded", "c.kernel_folded"]);
        let eps = f64::from(1e-3f32);
        let scale = [
            1.5 / (f64::from(0.9f32) + eps).sqrt(),
            f64::from(0.8f32) / (f64::from(1.7f32) + eps).sqrt(),
        ];
        let kernel = [0.5f32, -1.25, 3.0, 0.1];
        let want_w: Vec<f32> = (0..4)
            .map(|i| (f64::from(kernel[i]) * scale[i / 2]) as f32)
            .collect();
        let (b, beta, mean) = ([0.3f32, -0.7], [0.25f32, -0.5], [0.1f32, 0.2]);
        let want_b: Vec<f32> = (0..2)
            .map(|o| {
                ((f64::from(b[o]) - f64::from(mean[o])) * scale[o] + f64::from(beta[o])) as f32
            })
            .collect();
        assert_eq!(values(&graph, "c.kernel_folded"), want_w);
        assert_eq!(values(&graph, "c.bias_folded"), want_b);
    }

    #[test]
    fn a_conv_without_bias_gets_one() {
        let mut graph = conv_bn(None, &[1.5, 0.8]);
        assert_eq!(fold_batch_norms_in_graph(&mut graph).expect("fold"), 1);
        assert_eq!(graph.node[0].input[2], "c.bias_folded");
        assert_eq!(values(&graph, "c.bias_folded").len(), 2);
    }

    #[test]
    fn a_conv_output_that_is_a_graph_output_is_not_folded() {
        let mut graph = conv_bn(Some(&[0.3, -0.7]), &[1.5, 0.8]);
        graph.output.push(graph.output[0].clone());
        graph.output[1].name = "c".to_owned();
        let before = graph.clone();
        assert_eq!(fold_batch_norms_in_graph(&mut graph).expect("fold"), 0);
        assert_eq!(graph.node, before.node);
    }

    #[test]
    fn parameters_for_another_channel_count_are_an_error_not_a_panic() {
        for (bias, gamma) in [(&[0.3f32][..], &[1.5f32, 0.8][..]), (&[0.3, -0.7], &[1.5])] {
            let mut graph = conv_bn(Some(bias), gamma);
            let err = fold_batch_norms_in_graph(&mut graph).expect_err("mismatch");
            assert!(err.to_string().contains("different channel count"), "{err}");
        }
    }

    #[test]
    fn graph_inputs_naming_dropped_initializers_go() {
        let mut graph = conv_bn(Some(&[0.3, -0.7]), &[1.5, 0.8]);
        let declared = graph.input[0].clone();
        for name in ["c.kernel", "bn.gamma"] {
            let mut v = declared.clone();
            v.name = name.to_owned();
            graph.input.push(v);
        }
        fold_batch_norms_in_graph(&mut graph).expect("fold");
        let inputs: Vec<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(inputs, ["x"]);
    }
}
