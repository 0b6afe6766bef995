//! What to build: head, loss, trainable selection; what was built: parameters and the graph description.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::random::dropout_mask;
use crate::{Error, Result};

/// The head appended to the backbone's feature output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadSpec {
    /// Dropout (training graph only) then Dense: `logits = dropout(features) @ head.kernel + head.bias`,
    /// `head.kernel` is `[features, units]` like Keras, Glorot-uniform initialized; `head.bias` zeros.
    Dense {
        /// Output units (1 for binary cross-entropy).
        units: usize,
        /// Dropout rate before the Dense layer (0 for none).
        dropout: f32,
    },
    /// No head: the named feature output already is the logits `[N, K]`.
    Existing,
}

impl FromStr for HeadSpec {
    type Err = String;
    /// `dense:UNITS`, `dense:UNITS:DROPOUT` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["none"] | ["existing"] => Ok(HeadSpec::Existing),
            ["dense", units] | ["dense", units, _] => {
                let units: usize = units.parse().map_err(|_| {
                    format!("head `{s}`: units `{units}` is not a positive integer")
                })?;
                if units == 0 {
                    return Err(format!("head `{s}`: units must be at least 1"));
                }
                let dropout = match parts.get(2) {
                    Some(d) => d
                        .parse::<f32>()
                        .map_err(|_| format!("head `{s}`: dropout `{d}` is not a number"))?,
                    None => 0.0,
                };
                if !(0.0..1.0).contains(&dropout) {
                    return Err(format!("head `{s}`: dropout must be in [0, 1)"));
                }
                Ok(HeadSpec::Dense { units, dropout })
            }
            _ => Err(format!(
                "head `{s}`: expected dense:UNITS[:DROPOUT] (e.g. dense:1:0.2) or none"
            )),
        }
    }
}

/// Which parameters are trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trainable {
    /// Every trainable parameter of the backbone (not BatchNorm moving statistics) and the head.
    All,
    /// Only the head's parameters.
    Head,
    /// The head and every backbone parameter whose layer (initializer name up to the last `.`)
    /// is first used at or after the named layer, in graph order.
    From(String),
    /// Exactly these parameter names (initializer names, or `head.kernel` / `head.bias`).
    Names(BTreeSet<String>),
}

impl FromStr for Trainable {
    type Err = String;
    /// `all`, `head`, `from:LAYER`, or `names:A,B,...`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Trainable::All),
            "head" => Ok(Trainable::Head),
            _ => {
                if let Some(layer) = s.strip_prefix("from:").filter(|l| !l.is_empty()) {
                    Ok(Trainable::From(layer.to_owned()))
                } else if let Some(names) = s.strip_prefix("names:") {
                    Ok(Trainable::Names(
                        names
                            .split(',')
                            .filter(|n| !n.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ))
                } else {
                    Err(format!(
                        "trainable `{s}`: expected all, head, from:LAYER or names:A,B"
                    ))
                }
            }
        }
    }
}

/// The loss, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Binary cross-entropy on logits `[N, 1]`; labels float32 `[N]` in {0, 1} (Keras
    /// `BinaryCrossentropy(from_logits=True)`).
    BinaryCrossEntropyWithLogits,
    /// Softmax cross-entropy on logits `[N, K]`; labels int64 `[N]` in `0..K`
    /// (Keras `SparseCategoricalCrossentropy(from_logits=True)`).
    SoftmaxCrossEntropy,
}

impl FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bce" | "binary" | "binary_crossentropy" => Ok(Loss::BinaryCrossEntropyWithLogits),
            "softmax" | "ce" | "sparse_categorical_crossentropy" => Ok(Loss::SoftmaxCrossEntropy),
            _ => Err(format!("loss `{s}`: expected bce or softmax")),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::BinaryCrossEntropyWithLogits => "bce",
            Loss::SoftmaxCrossEntropy => "softmax",
        })
    }
}

/// A named float32 parameter tensor owned by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// Name (the initializer name in the forward graph, e.g. `block1_conv1.kernel`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Parameter {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// A tensor in [`GraphSpec`]: name, element type and shape (`-1` for the batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Value name in the graph.
    pub name: String,
    /// `float32` or `int64`.
    pub dtype: String,
    /// Dimensions; `-1` is the batch size.
    pub shape: Vec<i64>,
}

/// A dropout mask input the caller generates each step (see [`crate::dropout_mask`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskSpec {
    /// Graph input name.
    pub name: String,
    /// Shape; `-1` is the batch size.
    pub shape: Vec<i64>,
    /// Drop rate; kept entries hold `1 / (1 - rate)`.
    pub rate: f32,
    /// Stream number to pass to [`crate::dropout_mask`] so masks differ between dropout layers.
    pub stream: u64,
}

impl MaskSpec {
    /// The mask for training step `step` of a run seeded `seed`, at batch size `batch`
    /// ([`crate::dropout_mask`] over this mask's shape, `-1` replaced by `batch`).
    pub fn values(&self, seed: u64, step: u64, batch: usize) -> Result<ArrayD<f32>> {
        let shape: Vec<usize> = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(batch))
            .collect();
        let len = shape.iter().product();
        ArrayD::from_shape_vec(
            IxDyn(&shape),
            dropout_mask(seed, step, self.stream, len, self.rate),
        )
        .map_err(|e| Error::Graph(format!("dropout mask `{}`: {e}", self.name)))
    }
}

/// The description written as `graph.json`: what to feed and what comes out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// Data input of both graphs.
    pub data_input: TensorSpec,
    /// Labels input of the training graph.
    pub labels: TensorSpec,
    /// Dropout mask inputs of the training graph.
    pub dropout_masks: Vec<MaskSpec>,
    /// Trainable parameters: each is a training-graph input with this name and an output `<name>_grad`.
    pub parameters: Vec<TensorSpec>,
    /// Number of frozen parameter tensors kept as initializers.
    pub frozen_parameters: usize,
    /// Outputs of the training graph.
    pub training_outputs: Vec<TensorSpec>,
    /// Outputs of the eval graph.
    pub eval_outputs: Vec<TensorSpec>,
    /// The loss.
    pub loss: Loss,
    /// The head.
    pub head: HeadSpec,
    /// The backbone output the head is attached to.
    pub features: String,
    /// How a dropout mask is generated (so any binding can reproduce it).
    pub dropout_mask_rule: String,
    /// Notes for users of the graphs.
    pub notes: Vec<String>,
}

impl GraphSpec {
    /// The dropout mask feeds of the training graph for one step: (input name, mask), in input
    /// order. Every caller (trainer, benchmarks, tests) builds its masks here.
    pub fn dropout_feeds(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
    ) -> Result<Vec<(String, ArrayD<f32>)>> {
        self.dropout_masks
            .iter()
            .map(|m| Ok((m.name.clone(), m.values(seed, step, batch)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_feeds_fill_the_batch_and_follow_the_mask_rule() {
        let mask = |name: &str, shape: Vec<i64>, rate: f32, stream: u64| MaskSpec {
            name: name.to_owned(),
            shape,
            rate,
            stream,
        };
        let spec = GraphSpec {
            data_input: TensorSpec {
                name: "x".to_owned(),
                dtype: "float32".to_owned(),
                shape: vec![-1, 4],
            },
            labels: TensorSpec {
                name: "labels".to_owned(),
                dtype: "float32".to_owned(),
                shape: vec![-1],
            },
            dropout_masks: vec![
                mask("a", vec![-1, 3, 2], 0.5, 1),
                mask("b", vec![-1, 5], 0.2, 0),
            ],
            parameters: vec![],
            frozen_parameters: 0,
            training_outputs: vec![],
            eval_outputs: vec![],
            loss: Loss::BinaryCrossEntropyWithLogits,
            head: HeadSpec::Existing,
            features: "x".to_owned(),
            dropout_mask_rule: String::new(),
            notes: vec![],
        };
        let feeds = spec.dropout_feeds(9, 4, 7).expect("feeds");
        assert_eq!(feeds.len(), 2);
        assert_eq!(feeds[0].0, "a");
        assert_eq!(feeds[0].1.shape(), &[7, 3, 2]);
        let flat: Vec<f32> = feeds[0].1.iter().copied().collect();
        assert_eq!(flat, dropout_mask(9, 4, 1, 42, 0.5));
        assert_eq!(feeds[1].0, "b");
        assert_eq!(feeds[1].1.shape(), &[7, 5]);
        let flat: Vec<f32> = feeds[1].1.iter().copied().collect();
        assert_eq!(flat, dropout_mask(9, 4, 0, 35, 0.2));
    }
}
