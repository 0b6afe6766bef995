//! Which initializers are parameters, and which of them a [`Trainable`] selection trains.

use std::collections::{HashMap, HashSet};

use xfer_onnx::{DataType, GraphProto};

use crate::spec::Trainable;
use crate::{Error, Result};

/// Whether `name` is a float32 initializer of `graph`.
pub(crate) fn is_float_initializer(graph: &GraphProto, name: &str) -> bool {
    graph
        .initializer(name)
        .is_some_and(|t| t.data_type == DataType::Float as i32)
}

/// Float initializers used as parameters (weights, biases, BatchNorm scale/offset), in order of first use.
pub(crate) fn parameter_candidates(graph: &GraphProto) -> Vec<String> {
    let producers: HashMap<&str, &str> = graph
        .node
        .iter()
        .flat_map(|n| {
            n.output
                .iter()
                .map(move |o| (o.as_str(), n.op_type.as_str()))
        })
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in &graph.node {
        for (i, v) in n.input.iter().enumerate() {
            let position = match n.op_type.as_str() {
                "Conv" | "ConvTranspose" | "BatchNormalization" | "Gemm" => i == 1 || i == 2,
                "MatMul" => true,
                "PRelu" => i == 1,
                "Add" => n.input.iter().any(|o| {
                    matches!(
                        producers.get(o.as_str()),
                        Some(&("MatMul" | "Conv" | "Gemm"))
                    )
                }),
                _ => false,
            };
            if position && is_float_initializer(graph, v) && seen.insert(v.clone()) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// The Keras layer a parameter belongs to: its name up to the last `.`.
fn layer_of(param: &str) -> &str {
    param.rsplit_once('.').map_or(param, |(l, _)| l)
}

/// The parameters `trainable` selects among the backbone `candidates` and the `head` parameters.
pub(crate) fn select(
    trainable: &Trainable,
    candidates: &[String],
    head: &[String],
) -> Result<Vec<String>> {
    Ok(match trainable {
        Trainable::All => candidates.iter().chain(head).cloned().collect(),
        Trainable::Head => head.to_vec(),
        Trainable::From(layer) => {
            let Some(start) = candidates.iter().position(|c| layer_of(c) == layer) else {
                let mut layers: Vec<&str> = Vec::new();
                for c in candidates {
                    if layers.last() != Some(&layer_of(c)) {
                        layers.push(layer_of(c));
                    }
                }
                let shown: Vec<&str> = layers.iter().take(12).copied().collect();
                return Err(Error::Selection(format!(
                    "no layer `{layer}` among the {} layers with parameters (first ones: {}{})",
                    layers.len(),
                    shown.join(", "),
                    if layers.len() > 12 { ", ..." } else { "" }
                )));
            };
            candidates[start..].iter().chain(head).cloned().collect()
        }
        Trainable::Names(names) => {
            let all: Vec<&String> = candidates.iter().chain(head).collect();
            for n in names {
                if !all.contains(&n) {
                    return Err(Error::Selection(format!(
                        "`{n}` is not a parameter (expected an initializer used as a weight, bias or BatchNorm scale/offset, or head.kernel/head.bias)"
                    )));
                }
            }
            all.into_iter()
                .filter(|c| names.contains(*c))
                .cloned()
                .collect()
        }
    })
}
