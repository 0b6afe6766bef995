//! Which initializers are parameters, and which of them a [`Trainable`] selection trains.

use std::collections::{HashMap, HashSet};

use xfer_onnx::{DataType, GraphProto, ModelProto};

use crate::builder::{HEAD_BIAS, HEAD_KERNEL};
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

/// Checks that `trainable` selects parameters that exist in the forward model (an
/// `--unfreeze-from` layer with parameters, named parameters) without building a
/// training graph, so that a run can refuse a bad selection before it trains.
pub fn check_trainable(forward: &ModelProto, trainable: &Trainable) -> Result<()> {
    let graph = forward
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
    let head = [HEAD_KERNEL.to_owned(), HEAD_BIAS.to_owned()];
    select(trainable, &parameter_candidates(graph), &head).map(|_| ())
}

/// How many of the closest layer names an unknown-layer error shows.
const CLOSEST_SHOWN: usize = 5;

/// The error for a layer that has no parameters: the layers closest to `layer` by edit
/// distance (ties in graph order), so a typo shows its correction.
fn unknown_layer(layer: &str, candidates: &[String]) -> Error {
    let mut layers: Vec<&str> = Vec::new();
    for c in candidates {
        if !layers.contains(&layer_of(c)) {
            layers.push(layer_of(c));
        }
    }
    let mut ranked: Vec<(usize, usize, &str)> = layers
        .iter()
        .enumerate()
        .map(|(i, name)| (edit_distance(layer, name), i, *name))
        .collect();
    ranked.sort_unstable();
    let closest: Vec<&str> = ranked
        .iter()
        .take(CLOSEST_SHOWN)
        .map(|(_, _, n)| *n)
        .collect();
    Error::Selection(format!(
        "no layer `{layer}` among the {} layers with parameters; closest: {}",
        layers.len(),
        closest.join(", ")
    ))
}

/// Levenshtein distance between `a` and `b`, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row.last().copied().unwrap_or(0)
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
                return Err(unknown_layer(layer, candidates));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("block2_cnv", "block2_conv"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn an_unknown_layer_names_the_closest_ones_first() {
        let candidates: Vec<String> = (0..30).map(|i| format!("block{i}_conv.kernel")).collect();
        let err = select(&Trainable::From("block27_cnv".into()), &candidates, &[])
            .expect_err("unknown layer");
        let text = err.to_string();
        assert!(text.contains("closest: block27_conv,"), "{text}");
    }
}
