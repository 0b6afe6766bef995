//! Which nodes need a backward pass, and the reverse sweep that emits it.
//!
//! Which inputs receive and which outputs carry a gradient comes from the VJP rule table
//! ([`crate::vjp::RULES`]).

use std::collections::{HashMap, HashSet};

use xfer_onnx::NodeProto;

use crate::Result;
use crate::emit::{Emit, unsupported};
use crate::vjp::{self, Rule};

/// Whether input `i` of `node` is a value in `req` through which a gradient flows.
fn flows_from(node: &NodeProto, i: usize, value: &str, req: &HashSet<String>) -> bool {
    !value.is_empty()
        && req.contains(value)
        && vjp::flow(&node.op_type).is_some_and(|(inputs, _)| inputs.contains(i))
}

/// Values that depend on `sources` through differentiable paths, and the nodes that are not
/// differentiable but were reached (reported only if they also reach the loss).
pub(crate) fn requires_grad(nodes: &[NodeProto], sources: &HashSet<String>) -> HashSet<String> {
    let mut req = sources.clone();
    for n in nodes {
        let Some((_, outputs)) = vjp::flow(&n.op_type) else {
            continue;
        };
        let hit = n
            .input
            .iter()
            .enumerate()
            .any(|(i, v)| flows_from(n, i, v, &req));
        if hit {
            // Only the outputs the rule names carry a gradient: for MaxPool and Dropout only
            // output 0 (Y), not output 1 (MaxPool's Indices, Dropout's mask).
            let carrying = outputs.count(n.output.len());
            for o in n.output.iter().take(carrying).filter(|o| !o.is_empty()) {
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
            if !matches!(vjp::rule(&n.op_type), Some(Rule::Differentiable { .. })) {
                return Err(unsupported(
                    n,
                    format!(
                        "this op lies between a trainable parameter and the loss but has no gradient; supported: {}",
                        vjp::SUPPORTED_OPS.join(", ")
                    ),
                ));
            }
            idx.push(i);
        }
    }
    Ok(idx)
}

/// Gradient contributions collected during the sweep, by value.
#[derive(Default)]
struct Contributions(HashMap<String, Vec<String>>);

impl Contributions {
    fn add(&mut self, value: &str, grad: String) {
        self.0.entry(value.to_owned()).or_default().push(grad);
    }

    /// The total gradient of `value` (one Sum node when it has several parts), kept as the
    /// value's only part in case the value is also wanted.
    fn total(&mut self, e: &mut Emit, value: &str) -> Option<String> {
        match self.0.remove(value) {
            Some(parts) if !parts.is_empty() => {
                let total = e.sum(&parts);
                self.0.insert(value.to_owned(), vec![total.clone()]);
                Some(total)
            }
            _ => None,
        }
    }

    /// The total gradient of `value`, without recording it.
    fn final_total(&self, e: &mut Emit, value: &str) -> Option<String> {
        match self.0.get(value) {
            Some(parts) if !parts.is_empty() => Some(e.sum(parts)),
            _ => None,
        }
    }
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
    let mut grads = Contributions::default();
    for (v, g) in seeds {
        grads.add(v, g.clone());
    }
    for node in order.iter().rev().filter_map(|&i| nodes.get(i)) {
        let gy: Vec<Option<String>> = node.output.iter().map(|o| grads.total(e, o)).collect();
        if gy.iter().all(Option::is_none) {
            continue;
        }
        let need: Vec<bool> = node
            .input
            .iter()
            .enumerate()
            .map(|(k, v)| flows_from(node, k, v, req))
            .collect();
        if !need.iter().any(|&b| b) {
            continue;
        }
        let gx = vjp::vjp(e, node, &gy, &need)?;
        for ((g, input), needed) in gx.into_iter().zip(&node.input).zip(&need) {
            if let Some(g) = g
                && *needed
            {
                grads.add(input, g);
            }
        }
    }
    Ok(wanted
        .iter()
        .map(|w| (w.clone(), grads.final_total(e, w)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vjp::tests::node;

    #[test]
    fn maxpool_indices_and_dropout_mask_carry_no_gradient() {
        // What the comment in `requires_grad` says: output 0 (Y) carries a gradient, output 1
        // (MaxPool's Indices, Dropout's mask) does not; Reshape's shape input receives none.
        let nodes = [
            node("MaxPool", &["x"], &["pooled", "indices"]),
            node("Dropout", &["pooled", "ratio"], &["dropped", "mask"]),
            node("Reshape", &["shape_src", "dropped"], &["r"]),
            node("Shape", &["dropped"], &["s"]),
        ];
        let req = requires_grad(&nodes, &HashSet::from(["x".to_owned()]));
        for v in ["x", "pooled", "dropped"] {
            assert!(req.contains(v), "{v} requires a gradient");
        }
        for v in ["indices", "mask", "r", "s"] {
            assert!(!req.contains(v), "{v} carries no gradient");
        }
    }
}
