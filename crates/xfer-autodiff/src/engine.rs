//! Which nodes need a backward pass, and the reverse sweep that emits it.

use std::collections::{HashMap, HashSet};

use xfer_onnx::NodeProto;

use crate::Result;
use crate::emit::{Emit, unsupported};

/// Ops whose outputs never carry a gradient.
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "NonZero",
    "ConstantOfShape",
    "Constant",
    "Range",
];

/// Input positions through which a gradient flows, for a supported op.
fn differentiable_input(op: &str, i: usize) -> bool {
    match op {
        "BatchNormalization" => i <= 2,
        "Clip" | "Reshape" | "Dropout" | "MaxPool" | "ReduceMean" => i == 0,
        _ => true,
    }
}

/// Values that depend on `sources` through differentiable paths, and the nodes that are not
/// differentiable but were reached (reported only if they also reach the loss).
pub(crate) fn requires_grad(nodes: &[NodeProto], sources: &HashSet<String>) -> HashSet<String> {
    let mut req = sources.clone();
    for n in nodes {
        if NON_DIFFERENTIABLE.contains(&n.op_type.as_str()) {
            continue;
        }
        let hit =
            n.input.iter().enumerate().any(|(i, v)| {
                !v.is_empty() && req.contains(v) && differentiable_input(&n.op_type, i)
            });
        if hit {
            // Only the first output of MaxPool (Indices) and Dropout (mask) carries a gradient.
            let outs = if matches!(n.op_type.as_str(), "MaxPool" | "Dropout") {
                1
            } else {
                n.output.len()
            };
            for o in n.output.iter().take(outs).filter(|o| !o.is_empty()) {
                req.insert(o.clone());
            }
        }
    }
    req
}

/// Values from which `target` can be reached.
pub(crate) fn reaches(nodes: &[NodeProto], targets: &[&str]) -> HashSet<String> {
    let mut needed: HashSet<String> = targets.iter().map(|s| (*s).to_owned()).collect();
    for n in nodes.iter().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            needed.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    needed
}

/// Indices of the nodes that need a backward pass: an output depends on a source and reaches a target.
pub(crate) fn backward_nodes(
    nodes: &[NodeProto],
    req: &HashSet<String>,
    needed: &HashSet<String>,
) -> Result<Vec<usize>> {
    let mut idx = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.output
            .iter()
            .any(|o| req.contains(o) && needed.contains(o))
        {
            if !crate::SUPPORTED_OPS.contains(&n.op_type.as_str()) {
                return Err(unsupported(
                    n,
                    format!(
                        "this op lies between a trainable parameter and the loss but has no gradient; supported: {}",
                        crate::SUPPORTED_OPS.join(", ")
                    ),
                ));
            }
            idx.push(i);
        }
    }
    Ok(idx)
}

/// The reverse sweep: seeds are (value, gradient value) pairs; returns the total gradient of
/// each value in `wanted` (None when it does not influence the seeds).
pub(crate) fn sweep(
    e: &mut Emit,
    nodes: &[NodeProto],
    order: &[usize],
    req: &HashSet<String>,
    seeds: &[(String, String)],
    wanted: &[String],
) -> Result<HashMap<String, Option<String>>> {
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    for (v, g) in seeds {
        grads.entry(v.clone()).or_default().push(g.clone());
    }
    for &i in order.iter().rev() {
        let node = &nodes[i];
        let mut gy = Vec::with_capacity(node.output.len());
        let mut any = false;
        for o in &node.output {
            let g = match grads.remove(o) {
                Some(parts) if !parts.is_empty() => {
                    let total = e.sum(&parts);
                    any = true;
                    // Keep the total in case the value is also wanted.
                    grads.insert(o.clone(), vec![total.clone()]);
                    Some(total)
                }
                _ => None,
            };
            gy.push(g);
        }
        if !any {
            continue;
        }
        let need: Vec<bool> = node
            .input
            .iter()
            .enumerate()
            .map(|(k, v)| {
                !v.is_empty() && req.contains(v) && differentiable_input(&node.op_type, k)
            })
            .collect();
        if !need.iter().any(|&b| b) {
            continue;
        }
        let gx = crate::vjp::vjp(e, node, &gy, &need)?;
        for (k, g) in gx.into_iter().enumerate() {
            if let Some(g) = g
                && need[k]
            {
                grads.entry(node.input[k].clone()).or_default().push(g);
            }
        }
    }
    let mut out = HashMap::new();
    for w in wanted {
        let total = match grads.get(w) {
            Some(parts) if !parts.is_empty() => Some(e.sum(parts)),
            _ => None,
        };
        out.insert(w.clone(), total);
    }
    Ok(out)
}
