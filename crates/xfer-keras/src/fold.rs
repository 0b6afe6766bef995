//! Inference-time folding: BatchNormalization into the convolution before it
//! ([`xfer_onnx::fold`]), and the input preprocessing (`x * s + t`) into a first
//! 'valid' convolution.

use ndarray::{ArrayD, Axis, IxDyn};
use xfer_onnx::fold::{self, FloatInitializers, FloatTensor, uses};
use xfer_onnx::{ModelProto, NodeProto};

use crate::{Error, Result};

/// Folds BatchNorm and preprocessing into convolutions in an ONNX model (a copy).
///
/// Works on any graph whose convolutions and BatchNorm parameters are float32
/// initializers, e.g. a trained `train.onnx` written by [`crate::convert`] with
/// `fold_batch_norm: false`. Values and outputs keep their names.
pub fn fold_for_inference(model: &ModelProto) -> Result<ModelProto> {
    let mut graph = model
        .graph
        .clone()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
    let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    fold::rewrite_graph(&mut graph, |nodes, inits, outputs| {
        let pixels = inputs
            .iter()
            .find(|n| !inits.contains_key(*n))
            .cloned()
            .unwrap_or_default();
        Ok(fold_nodes(nodes, inits, outputs, &pixels))
    })??;
    let mut out = model.clone();
    out.graph = Some(graph);
    out.set_metadata("batch_norm", "folded");
    Ok(out)
}

/// Folds in place; `outputs` are the graph outputs, `input` the pixel input.
pub(crate) fn fold_nodes(
    nodes: &mut Vec<NodeProto>,
    inits: &mut FloatInitializers,
    outputs: &[String],
    input: &str,
) -> Result<()> {
    fold::fold_batch_norms(nodes, inits, outputs)?;
    if let Some(chain) = Preprocessing::find(nodes, inits, outputs, input) {
        chain.fold_into_conv(nodes, inits, input)?;
    }
    Ok(())
}

/// The preprocessing chain `Mul(input, s) -> Add(., t) -> Conv` (node indices),
/// foldable when the Conv is 'valid' with group 1 and every value in the chain has
/// one reader and is no graph output.
struct Preprocessing {
    mul: usize,
    add: usize,
    conv: usize,
}

impl Preprocessing {
    fn find(
        nodes: &[NodeProto],
        inits: &FloatInitializers,
        outputs: &[String],
        input: &str,
    ) -> Option<Self> {
        let scalar_step = |op: &str, x: &str| {
            nodes.iter().position(|n| {
                n.op_type == op
                    && n.input.first().map(String::as_str) == Some(x)
                    && n.input
                        .get(1)
                        .is_some_and(|s| inits.get(s).is_some_and(|a| a.data.len() == 1))
            })
        };
        let mul = scalar_step("Mul", input)?;
        let scaled = nodes[mul].output.first()?;
        let add = scalar_step("Add", scaled)?;
        let pre = nodes[add].output.first()?;
        if uses(nodes, scaled) != 1
            || uses(nodes, pre) != 1
            || outputs.contains(pre)
            || outputs.contains(scaled)
        {
            return None;
        }
        let conv = nodes.iter().position(|n| n.input.first() == Some(pre))?;
        let n = &nodes[conv];
        let foldable = n.op_type == "Conv"
            && n.attr_int("group", 1) == 1
            && conv_is_unpadded(n)
            && n.input
                .get(1)
                .is_some_and(|w| inits.contains_key(w) && uses(nodes, w) == 1)
            && n.input.get(2).is_none_or(|b| inits.contains_key(b));
        foldable.then_some(Preprocessing { mul, add, conv })
    }

    /// `conv(x·s + t) = conv'(x)` with `W' = W·s`, `b' = b + t·ΣW` (per output channel).
    fn fold_into_conv(
        self,
        nodes: &mut Vec<NodeProto>,
        inits: &mut FloatInitializers,
        input: &str,
    ) -> Result<()> {
        let scalar = |node: usize, default: f32| {
            nodes[node]
                .input
                .get(1)
                .and_then(|k| inits.get(k))
                .and_then(|a| a.data.first().copied())
                .map_or(f64::from(default), f64::from)
        };
        let (s, t) = (scalar(self.mul, 1.0), scalar(self.add, 0.0));
        let conv = &nodes[self.conv];
        let kernel = &inits[&conv.input[1]];
        let shape: Vec<usize> = kernel.dims.iter().map(|&d| d.max(0) as usize).collect();
        let w = ArrayD::from_shape_vec(IxDyn(&shape), kernel.data.clone())
            .map_err(|e| Error::Graph(format!("kernel of `{}`: {e}", conv.name)))?
            .mapv(f64::from);
        let c = w.shape().first().copied().unwrap_or(0);
        let b: Vec<f64> = match conv.input.get(2) {
            Some(name) => inits[name].data.iter().map(|&v| f64::from(v)).collect(),
            None => vec![0.0; c],
        };
        if b.len() != c {
            return Err(Error::Graph(format!(
                "`{}` has {} bias values for {c} output channels",
                conv.name,
                b.len()
            )));
        }
        let b2: Vec<f32> = w
            .axis_iter(Axis(0))
            .zip(&b)
            .map(|(slice, bo)| (bo + t * slice.sum()) as f32)
            .collect();
        let w2 = FloatTensor::new(
            kernel.dims.clone(),
            w.mapv(|v| (v * s) as f32).iter().copied().collect(),
        );
        fold::set_conv_params(nodes, inits, self.conv, w2, b2);
        nodes[self.conv].input[0] = input.to_owned();
        self.remove_scaling(nodes, inits);
        Ok(())
    }

    /// Removes the Mul and Add nodes and their scalars.
    fn remove_scaling(self, nodes: &mut Vec<NodeProto>, inits: &mut FloatInitializers) {
        let (first, second) = if self.mul > self.add {
            (self.mul, self.add)
        } else {
            (self.add, self.mul)
        };
        let removed = [nodes.remove(first), nodes.remove(second)];
        for node in removed {
            if let Some(k) = node.input.get(1).filter(|k| uses(nodes, k) == 0) {
                inits.remove(k);
            }
        }
    }
}

fn conv_is_unpadded(n: &NodeProto) -> bool {
    let auto = n.attr_string("auto_pad").unwrap_or_default();
    let pads_zero = n
        .attr_ints("pads")
        .is_none_or(|p| p.iter().all(|&v| v == 0));
    (auto.is_empty() || auto == "NOTSET" || auto == "VALID") && pads_zero
}
