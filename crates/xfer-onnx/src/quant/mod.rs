//! Static QDQ quantization of a float graph: which tensors need a calibrated range, and
//! the rewrite that puts `QuantizeLinear → DequantizeLinear` pairs around them.
//!
//! The result is the "QDQ" form that ONNX Runtime (and OpenVINO) fuse into integer
//! kernels: uint8 activations (asymmetric, from calibrated ranges), int8 weights with one
//! scale per output channel (symmetric), int32 biases. Every `Conv` (depthwise included),
//! `MatMul` and `Gemm` with constant weights, and the `Add`, pooling and `Relu` nodes
//! between them, are quantized unless [`QdqOptions::keep_float`] names them.
//!
//! A `Relu` that is the only reader of a quantized node's output is folded into that
//! output's quantization: the output takes the Relu's (non-negative) range, whose zero
//! point 0 clamps negative values exactly as the Relu did.
//!
//! Use: [`QdqPlan::new`], run the float model given by [`QdqPlan::calibration_model`] to
//! collect the [`Range`] of every tensor in [`QdqPlan::activations`], then
//! [`QdqPlan::apply`].

mod params;
mod rewrite;

use std::collections::{HashMap, HashSet};

pub use params::{PerChannelI8, Range, U8Params, quantize_bias, quantize_per_channel};

use crate::proto::type_proto;
use crate::{Error, GraphProto, ModelProto, NodeProto, Result, TypeProto, ValueInfoProto};

/// Operators the rewrite quantizes.
pub const QUANTIZED_OPS: &[&str] = &[
    "Conv",
    "MatMul",
    "Gemm",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
];

/// In [`QdqOptions::keep_float`]: the first `Conv`/`MatMul`/`Gemm` of the graph.
pub const FIRST_WEIGHTED: &str = "first";
/// In [`QdqOptions::keep_float`]: the last `Conv`/`MatMul`/`Gemm` of the graph.
pub const LAST_WEIGHTED: &str = "last";

/// Lowest default-domain opset with per-channel `DequantizeLinear`.
pub const MIN_QDQ_OPSET: i64 = 13;

/// What the rewrite leaves alone.
#[derive(Debug, Clone, Default)]
pub struct QdqOptions {
    /// Nodes kept in float, by node name or output name, or [`FIRST_WEIGHTED`] / [`LAST_WEIGHTED`].
    pub keep_float: Vec<String>,
}

/// What a rewrite did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QdqSummary {
    /// Nodes that now run on quantized tensors, by operator.
    pub quantized_ops: std::collections::BTreeMap<String, usize>,
    /// Activation tensors given a QuantizeLinear/DequantizeLinear pair.
    pub activations: usize,
    /// Weight tensors quantized per channel.
    pub weights: usize,
    /// Bias tensors quantized to int32.
    pub biases: usize,
    /// Relu nodes folded into the quantization of their input.
    pub folded_relus: usize,
    /// Nodes of a quantizable operator kept in float.
    pub kept_float: usize,
}

/// The tensors a model's QDQ rewrite needs ranges for, and the rewrite itself.
#[derive(Debug, Clone)]
pub struct QdqPlan {
    /// The model with its graph's foldable Relus removed (valid only once quantized).
    model: ModelProto,
    /// Per node of `model`'s graph: whether it is quantized.
    quantized: Vec<bool>,
    /// Tensors wrapped in Q/DQ, in graph order.
    wrapped: Vec<String>,
    /// Tensors that reuse another tensor's parameters (a MaxPool's output, its input's).
    shared: HashMap<String, String>,
    summary: QdqSummary,
}

impl QdqPlan {
    /// Plans the rewrite of `model`.
    pub fn new(model: &ModelProto, options: &QdqOptions) -> Result<Self> {
        if model.opset() < MIN_QDQ_OPSET {
            return Err(Error::Graph(format!(
                "the model imports opset {}; per-channel quantization needs opset {MIN_QDQ_OPSET} or later",
                model.opset()
            )));
        }
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
        let keep = resolve_keep_float(graph, &options.keep_float)?;
        let quantized = quantizable_nodes(graph, &keep);
        let kept_float = graph
            .node
            .iter()
            .zip(&quantized)
            .filter(|(n, q)| !**q && QUANTIZED_OPS.contains(&n.op_type.as_str()))
            .count();
        let (graph, quantized, folded_relus) = fold_relus(graph, quantized);
        let (wrapped, shared) = wrapped_tensors(&graph, &quantized);
        let mut model = model.clone();
        model.graph = Some(graph);
        Ok(QdqPlan {
            model,
            quantized,
            wrapped,
            shared,
            summary: QdqSummary {
                folded_relus,
                kept_float,
                ..QdqSummary::default()
            },
        })
    }

    /// The tensors whose ranges calibration must measure, in graph order.
    pub fn activations(&self) -> Vec<String> {
        self.wrapped
            .iter()
            .filter(|t| !self.shared.contains_key(*t))
            .cloned()
            .collect()
    }

    /// `original` (the float model this plan was made from) with every tensor of
    /// [`Self::activations`] added as a graph output, to be run on calibration data.
    pub fn calibration_model(&self, original: &ModelProto) -> ModelProto {
        let mut model = original.clone();
        if let Some(graph) = model.graph.as_mut() {
            let present: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
            for name in self.activations() {
                if !present.contains(&name) {
                    graph.output.push(untyped_float(&name));
                }
            }
        }
        model
    }

    /// The quantized model, given the calibrated range of every tensor of [`Self::activations`].
    pub fn apply(self, ranges: &HashMap<String, Range>) -> Result<(ModelProto, QdqSummary)> {
        rewrite::apply(self, ranges)
    }
}

/// A float tensor value of unknown shape (a graph output whose shape ORT infers).
fn untyped_float(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: crate::DataType::Float as i32,
                shape: None,
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// Indices of the nodes `keep_float` names (node names, output names, first/last).
fn resolve_keep_float(graph: &GraphProto, keep_float: &[String]) -> Result<HashSet<usize>> {
    let weighted: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm"))
        .map(|(i, _)| i)
        .collect();
    let mut keep = HashSet::new();
    for name in keep_float {
        let found = match name.as_str() {
            FIRST_WEIGHTED => weighted.first().copied(),
            LAST_WEIGHTED => weighted.last().copied(),
            _ => graph
                .node
                .iter()
                .position(|n| n.name == *name || n.output.iter().any(|o| o == name)),
        };
        let index = found.ok_or_else(|| {
            Error::Graph(format!(
                "no node is named `{name}` and none writes a tensor of that name (use a node or output name, `{FIRST_WEIGHTED}` or `{LAST_WEIGHTED}`)"
            ))
        })?;
        keep.insert(index);
    }
    Ok(keep)
}

/// Per node: whether it is quantized (its operator is quantizable, its weights are
/// constant, it is not kept in float).
fn quantizable_nodes(graph: &GraphProto, keep: &HashSet<usize>) -> Vec<bool> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let is_init = |name: &String| inits.contains(name.as_str());
    graph
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| !keep.contains(&i) && node_is_quantizable(n, &is_init))
        .collect()
}

fn node_is_quantizable(node: &NodeProto, is_init: &dyn Fn(&String) -> bool) -> bool {
    let input = |k: usize| node.input.get(k).filter(|s| !s.is_empty());
    let activation = input(0).is_some_and(|x| !is_init(x));
    let single_output = node.output.len() == 1;
    match node.op_type.as_str() {
        "Conv" | "MatMul" => {
            activation
                && input(1).is_some_and(is_init)
                && input(2).is_none_or(is_init)
                && node.input.len() <= 3
        }
        "Gemm" => {
            activation
                && input(1).is_some_and(is_init)
                && input(2).is_none_or(is_init)
                && node.attr_float("alpha", 1.0) == 1.0
                && node.attr_float("beta", 1.0) == 1.0
                && node.attr_int("transA", 0) == 0
        }
        "Add" => node.input.len() == 2 && node.input.iter().all(|x| !is_init(x)) && single_output,
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "Relu" => activation && single_output,
        _ => false,
    }
}

/// Removes each Relu that is the only reader of a quantized node's output (neither being
/// a graph output); that node writes the Relu's output instead.
fn fold_relus(graph: &GraphProto, quantized: Vec<bool>) -> (GraphProto, Vec<bool>, usize) {
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut renamed: HashMap<usize, String> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    for (i, n) in graph.node.iter().enumerate() {
        let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else {
            continue;
        };
        let Some(&p) = producer.get(x.as_str()) else {
            continue;
        };
        let foldable = n.op_type == "Relu"
            && quantized[i]
            && quantized[p]
            && !matches!(graph.node[p].op_type.as_str(), "Relu" | "MaxPool")
            && readers.get(x.as_str()) == Some(&1)
            && !outputs.contains(x.as_str())
            && !outputs.contains(y.as_str());
        if foldable {
            renamed.insert(p, y.clone());
            removed.insert(i);
        }
    }
    let mut folded = graph.clone();
    folded.node.clear();
    let mut kept_quantized = Vec::with_capacity(quantized.len());
    for (i, n) in graph.node.iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        let mut n = n.clone();
        if let Some(y) = renamed.get(&i) {
            n.output[0] = y.clone();
        }
        folded.node.push(n);
        kept_quantized.push(quantized[i]);
    }
    (folded, kept_quantized, removed.len())
}

/// The activation tensors of the quantized nodes (inputs read as activations and their
/// output; never a graph output), in graph order, and the MaxPool outputs that share
/// their input's parameters.
fn wrapped_tensors(
    graph: &GraphProto,
    quantized: &[bool],
) -> (Vec<String>, HashMap<String, String>) {
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut wrapped: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut shared = HashMap::new();
    let mut add = |t: &String| {
        if !t.is_empty() && !outputs.contains(t.as_str()) && seen.insert(t.clone()) {
            wrapped.push(t.clone());
        }
    };
    for (n, _) in graph.node.iter().zip(quantized).filter(|(_, q)| **q) {
        let activations = if n.op_type == "Add" { 2 } else { 1 };
        n.input.iter().take(activations).for_each(&mut add);
        if let Some(y) = n.output.first() {
            add(y);
        }
    }
    // A MaxPool's output reuses its input's parameters (ORT then runs it on uint8 as is).
    let wrapped_set: HashSet<&String> = wrapped.iter().collect();
    for (n, _) in graph.node.iter().zip(quantized).filter(|(_, q)| **q) {
        if let (Some(x), Some(y)) = (n.input.first(), n.output.first())
            && n.op_type == "MaxPool"
            && wrapped_set.contains(x)
            && wrapped_set.contains(y)
        {
            shared.insert(y.clone(), x.clone());
        }
    }
    (wrapped, shared)
}
