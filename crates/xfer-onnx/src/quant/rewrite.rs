//! The rewrite of a [`QdqPlan`]: each wrapped tensor `T` gets `QuantizeLinear(T) →
//! DequantizeLinear → T_dequantized`, read by every node that read `T`; each quantized
//! operator's constant weight becomes int8 + a per-channel `DequantizeLinear`, its bias
//! int32 + a `DequantizeLinear` whose scale is input scale × weight scale.

use std::collections::{HashMap, HashSet};

use super::params::{Range, U8Params, quantize_bias, quantize_per_channel};
use super::{QdqPlan, QdqSummary};
use crate::{Error, GraphBuilder, GraphProto, ModelProto, NodeProto, Result, TensorProto, attr};

/// Runs the rewrite of `plan` with the calibrated `ranges`.
pub(super) fn apply(
    plan: QdqPlan,
    ranges: &HashMap<String, Range>,
) -> Result<(ModelProto, QdqSummary)> {
    let params = activation_params(&plan, ranges)?;
    let QdqPlan {
        mut model,
        quantized,
        summary,
        ..
    } = plan;
    let graph = model
        .graph
        .take()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
    let nodes = graph.node.clone();
    let mut rewriter = Rewriter::new(graph, params, summary);
    rewriter.wrap_graph_inputs();
    for (node, q) in nodes.into_iter().zip(quantized) {
        rewriter.emit(node, q)?;
    }
    let (graph, summary) = rewriter.finish();
    model.graph = Some(graph);
    Ok((model, summary))
}

/// The uint8 parameters of every wrapped tensor: from its range, or shared with its source.
fn activation_params(
    plan: &QdqPlan,
    ranges: &HashMap<String, Range>,
) -> Result<HashMap<String, U8Params>> {
    let mut params = HashMap::new();
    for t in plan.activations() {
        let range = ranges
            .get(&t)
            .ok_or_else(|| Error::Graph(format!("no calibrated range for tensor `{t}`")))?;
        params.insert(t, U8Params::from_range(*range));
    }
    for t in &plan.wrapped {
        let mut source = t;
        while let Some(s) = plan.shared.get(source) {
            source = s;
        }
        let p = *params.get(source).ok_or_else(|| {
            Error::Graph(format!(
                "tensor `{t}` shares the parameters of `{source}`, which has none"
            ))
        })?;
        params.insert(t.clone(), p);
    }
    Ok(params)
}

struct Rewriter {
    builder: GraphBuilder,
    /// Float initializers by name (the weights and biases to quantize).
    floats: HashMap<String, TensorProto>,
    params: HashMap<String, U8Params>,
    /// Wrapped tensor → the output of its DequantizeLinear.
    dequantized: HashMap<String, String>,
    /// Float initializers replaced by quantized ones (removed when nothing reads them).
    replaced: HashSet<String>,
    summary: QdqSummary,
}

impl Rewriter {
    fn new(graph: GraphProto, params: HashMap<String, U8Params>, summary: QdqSummary) -> Self {
        let floats = graph
            .initializer
            .iter()
            .filter(|t| t.data_type == crate::DataType::Float as i32)
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        // Every name of the float graph stays reserved; the nodes are emitted again.
        let mut builder = GraphBuilder::from_graph(graph);
        builder.graph_mut().node.clear();
        Rewriter {
            builder,
            floats,
            params,
            dequantized: HashMap::new(),
            replaced: HashSet::new(),
            summary,
        }
    }

    /// Q/DQ pairs for the graph inputs that are wrapped (e.g. the pixels of a first Conv).
    fn wrap_graph_inputs(&mut self) {
        let inputs: Vec<String> = self
            .builder
            .graph()
            .input
            .iter()
            .map(|i| i.name.clone())
            .collect();
        for name in inputs {
            self.wrap(&name);
        }
    }

    /// Emits `node` (its inputs reading dequantized tensors), quantizing its weights first
    /// when it is quantized, then the Q/DQ pair of each wrapped output.
    fn emit(&mut self, mut node: NodeProto, quantized: bool) -> Result<()> {
        let activation = node.input.first().cloned().unwrap_or_default();
        for input in node.input.iter_mut() {
            if let Some(dq) = self.dequantized.get(input) {
                *input = dq.clone();
            }
        }
        if quantized {
            *self
                .summary
                .quantized_ops
                .entry(node.op_type.clone())
                .or_default() += 1;
            if let Some(axis) = weight_axis(&node, &self.floats) {
                self.quantize_weights(&mut node, &activation, axis)?;
            }
        }
        let outputs = node.output.clone();
        self.builder.graph_mut().node.push(node);
        for y in &outputs {
            self.wrap(y);
        }
        Ok(())
    }

    /// Q → DQ after `tensor` when it is wrapped.
    fn wrap(&mut self, tensor: &str) {
        let Some(p) = self.params.get(tensor).copied() else {
            return;
        };
        let b = &mut self.builder;
        let scale_name = b.unique(&format!("{tensor}_scale"));
        let scale = b.initializer(TensorProto::from_f32(scale_name, &[], &[p.scale]));
        let zp_name = b.unique(&format!("{tensor}_zero_point"));
        let zp = b.initializer(TensorProto::from_u8(zp_name, &[], &[p.zero_point]));
        let q = b.op(
            "QuantizeLinear",
            &[tensor, &scale, &zp],
            vec![],
            &format!("{tensor}_quantized"),
        );
        let dq = b.op(
            "DequantizeLinear",
            &[&q, &scale, &zp],
            vec![],
            &format!("{tensor}_dequantized"),
        );
        self.dequantized.insert(tensor.to_owned(), dq);
        self.summary.activations += 1;
    }

    /// Replaces input 1 (weight) and input 2 (bias) of `node` by dequantized int8 / int32
    /// tensors; `activation` is the (original) name of its input 0.
    fn quantize_weights(
        &mut self,
        node: &mut NodeProto,
        activation: &str,
        axis: usize,
    ) -> Result<()> {
        let Some(w_name) = node.input.get(1).cloned() else {
            return Ok(());
        };
        let Some(w) = self.floats.get(&w_name) else {
            return Ok(());
        };
        let q = quantize_per_channel(&w.to_f32()?, &w.dims, axis);
        let dims = w.dims.clone();
        let channels = q.scales.len() as i64;
        let b = &mut self.builder;
        let values = b.unique(&format!("{w_name}_quantized"));
        let values = b.initializer(TensorProto::from_i8(values, &dims, &q.values));
        let scale = b.constant_f32(&format!("{w_name}_scale"), &[channels], &q.scales);
        let zp = b.unique(&format!("{w_name}_zero_point"));
        let zp = b.initializer(TensorProto::from_i8(
            zp,
            &[channels],
            &vec![0; q.scales.len()],
        ));
        let dq = b.op(
            "DequantizeLinear",
            &[&values, &scale, &zp],
            vec![attr::int("axis", axis as i64)],
            &format!("{w_name}_dequantized"),
        );
        node.input[1] = dq;
        self.replaced.insert(w_name);
        self.summary.weights += 1;
        let input_scale = self.params.get(activation).map(|p| p.scale);
        if let (Some(bias), Some(input_scale)) = (node.input.get(2).cloned(), input_scale) {
            self.quantize_bias(node, &bias, input_scale, &q.scales)?;
        }
        Ok(())
    }

    fn quantize_bias(
        &mut self,
        node: &mut NodeProto,
        bias: &str,
        input_scale: f32,
        weight_scales: &[f32],
    ) -> Result<()> {
        let Some(t) = self.floats.get(bias) else {
            return Ok(());
        };
        let values = t.to_f32()?;
        if values.len() != weight_scales.len() {
            // A broadcast bias (e.g. a Gemm's [1, N] or scalar C) stays in float.
            return Ok(());
        }
        let (q, scales) = quantize_bias(&values, input_scale, weight_scales);
        let n = q.len() as i64;
        let b = &mut self.builder;
        let name = b.unique(&format!("{bias}_quantized"));
        let name = b.initializer(TensorProto::from_i32(name, &[n], &q));
        let scale = b.constant_f32(&format!("{bias}_scale"), &[n], &scales);
        let zp = b.unique(&format!("{bias}_zero_point"));
        let zp = b.initializer(TensorProto::from_i32(zp, &[n], &vec![0; q.len()]));
        let dq = b.op(
            "DequantizeLinear",
            &[&name, &scale, &zp],
            vec![attr::int("axis", 0)],
            &format!("{bias}_dequantized"),
        );
        node.input[2] = dq;
        self.replaced.insert(bias.to_owned());
        self.summary.biases += 1;
        Ok(())
    }

    /// The graph, without the float initializers that nothing reads any more.
    fn finish(self) -> (GraphProto, QdqSummary) {
        let mut graph = self.builder.build();
        let read: HashSet<&String> = graph.node.iter().flat_map(|n| n.input.iter()).collect();
        let unread: HashSet<String> = self
            .replaced
            .iter()
            .filter(|t| !read.contains(t))
            .cloned()
            .collect();
        graph.initializer.retain(|t| !unread.contains(&t.name));
        (graph, self.summary)
    }
}

/// The channel axis of a quantized node's constant weight (input 1): a Conv's output
/// channels (0), a MatMul's columns (its last axis), a Gemm's output features.
fn weight_axis(node: &NodeProto, floats: &HashMap<String, TensorProto>) -> Option<usize> {
    let w = floats.get(node.input.get(1)?)?;
    match node.op_type.as_str() {
        "Conv" => Some(0),
        "MatMul" => w.dims.len().checked_sub(1),
        "Gemm" => Some(if node.attr_int("transB", 0) != 0 {
            0
        } else {
            1
        }),
        _ => None,
    }
}
