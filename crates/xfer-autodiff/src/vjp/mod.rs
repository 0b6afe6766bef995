//! Vector-Jacobian products of the supported operators, written in standard
//! ONNX ops (formulations chosen from measurements on ONNX Runtime 1.31 CPU;
//! see the notes at each operator).
//!
//! [`RULES`] is the one table of op → rule: which inputs receive a gradient,
//! which outputs carry one, and the function that emits the backward nodes.
//! [`SUPPORTED_OPS`], the ops whose outputs never carry a gradient, and the
//! per-input flow that the engine uses are all read from it. Each backward
//! function lives in the module of its op family.

mod conv;
mod elementwise;
mod linalg;
mod norm;
mod pool;
mod reduce;
mod shape;

use xfer_onnx::NodeProto;

pub(crate) use norm::inv_std_values;

use crate::emit::{Emit, node_label, unsupported};
use crate::{Error, Result};

/// Emits the gradients of a node's inputs into `out` (one slot per input), given the gradient
/// of its first output.
pub(crate) type Backward = fn(&mut Emit, &Vjp<'_>, &mut [Option<String>]) -> Result<()>;

/// Which inputs of an op receive a gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inputs {
    /// Every input.
    All,
    /// Only input 0 (the others are shapes, bounds, ratios, axes).
    First,
    /// Inputs `0..n` (BatchNormalization: X, scale, B; not the statistics).
    Leading(usize),
}

impl Inputs {
    /// Whether input `i` receives a gradient.
    pub(crate) const fn contains(self, i: usize) -> bool {
        match self {
            Inputs::All => true,
            Inputs::First => i == 0,
            Inputs::Leading(n) => i < n,
        }
    }
}

/// Which outputs of an op carry a gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outputs {
    /// Every output.
    All,
    /// Only output 0: MaxPool's Indices and Dropout's mask (output 1) carry none.
    First,
}

impl Outputs {
    /// How many of `n` outputs carry a gradient.
    pub(crate) fn count(self, n: usize) -> usize {
        match self {
            Outputs::All => n,
            Outputs::First => n.min(1),
        }
    }
}

/// How an op takes part in differentiation.
#[derive(Clone, Copy)]
pub(crate) enum Rule {
    /// The outputs never carry a gradient (shapes, indices, comparisons, constants).
    Constant,
    /// A gradient flows from `outputs` to `inputs`; `backward` emits it.
    Differentiable {
        /// Inputs that receive a gradient.
        inputs: Inputs,
        /// Outputs that carry a gradient.
        outputs: Outputs,
        /// The backward emitter.
        backward: Backward,
    },
}

const fn grad(inputs: Inputs, outputs: Outputs, backward: Backward) -> Rule {
    Rule::Differentiable {
        inputs,
        outputs,
        backward,
    }
}

use Inputs::{All, First, Leading};

/// The one table of op → rule, sorted by op name.
pub(crate) const RULES: &[(&str, Rule)] = &[
    ("Add", grad(All, Outputs::All, elementwise::arithmetic)),
    ("And", Rule::Constant),
    ("ArgMax", Rule::Constant),
    ("ArgMin", Rule::Constant),
    ("AveragePool", grad(All, Outputs::All, pool::average_pool)),
    (
        "BatchNormalization",
        grad(Leading(3), Outputs::All, norm::batch_norm),
    ),
    ("Clip", grad(First, Outputs::All, elementwise::clip)),
    ("Concat", grad(All, Outputs::All, shape::concat)),
    ("Constant", Rule::Constant),
    ("ConstantOfShape", Rule::Constant),
    ("Conv", grad(All, Outputs::All, conv::conv)),
    ("Div", grad(All, Outputs::All, elementwise::arithmetic)),
    ("Dropout", grad(First, Outputs::First, shape::identity)),
    ("Equal", Rule::Constant),
    ("Flatten", grad(All, Outputs::All, shape::reshape)),
    ("Gemm", grad(All, Outputs::All, linalg::gemm)),
    (
        "GlobalAveragePool",
        grad(All, Outputs::All, pool::global_average_pool),
    ),
    ("Greater", Rule::Constant),
    ("GreaterOrEqual", Rule::Constant),
    ("Identity", grad(All, Outputs::All, shape::identity)),
    ("Less", Rule::Constant),
    ("LessOrEqual", Rule::Constant),
    ("LogSoftmax", grad(All, Outputs::All, reduce::log_softmax)),
    ("MatMul", grad(All, Outputs::All, linalg::matmul)),
    ("MaxPool", grad(First, Outputs::First, pool::max_pool)),
    ("Mul", grad(All, Outputs::All, elementwise::arithmetic)),
    ("NonZero", Rule::Constant),
    ("Not", Rule::Constant),
    ("Or", Rule::Constant),
    ("Range", Rule::Constant),
    ("ReduceMean", grad(First, Outputs::All, reduce::reduce_mean)),
    ("Relu", grad(All, Outputs::All, elementwise::relu)),
    ("Reshape", grad(First, Outputs::All, shape::reshape)),
    ("Shape", Rule::Constant),
    ("Sigmoid", grad(All, Outputs::All, elementwise::sigmoid)),
    ("Size", Rule::Constant),
    ("Softmax", grad(All, Outputs::All, reduce::softmax)),
    ("Sub", grad(All, Outputs::All, elementwise::arithmetic)),
    ("Tanh", grad(All, Outputs::All, elementwise::tanh)),
    ("Transpose", grad(All, Outputs::All, shape::transpose)),
];

/// The rule of `op` (None: an op xfer knows nothing about).
pub(crate) fn rule(op: &str) -> Option<&'static Rule> {
    RULES
        .binary_search_by(|(name, _)| (*name).cmp(op))
        .ok()
        .map(|i| &RULES[i].1)
}

/// Which inputs receive and which outputs carry a gradient. An op without a rule is taken to
/// pass gradients through everything, so that reaching the loss through it is reported.
pub(crate) fn flow(op: &str) -> Option<(Inputs, Outputs)> {
    match rule(op) {
        Some(Rule::Constant) => None,
        Some(Rule::Differentiable {
            inputs, outputs, ..
        }) => Some((*inputs, *outputs)),
        None => Some((Inputs::All, Outputs::All)),
    }
}

/// The differentiable ops' names (at the front, in table order) and how many there are.
const DIFFERENTIABLE: ([&str; RULES.len()], usize) = {
    let mut names = [""; RULES.len()];
    let (mut i, mut n) = (0, 0);
    while i < RULES.len() {
        if matches!(RULES[i].1, Rule::Differentiable { .. }) {
            names[n] = RULES[i].0;
            n += 1;
        }
        i += 1;
    }
    (names, n)
};

/// Ops this crate can differentiate (the differentiable rows of [`RULES`], sorted).
pub(crate) const SUPPORTED_OPS: &[&str] = DIFFERENTIABLE.0.split_at(DIFFERENTIABLE.1).0;

/// The backward of one node: the node, the gradient of its first output, and which inputs need one.
pub(crate) struct Vjp<'a> {
    /// The forward node.
    pub node: &'a NodeProto,
    /// Gradient of output 0.
    pub g: &'a str,
    need: &'a [bool],
}

impl<'a> Vjp<'a> {
    /// Whether input `i` needs a gradient.
    pub fn wants(&self, i: usize) -> bool {
        self.need.get(i).copied().unwrap_or(false)
    }

    /// The name of input `i`; a typed error when the node lacks it.
    pub fn input(&self, i: usize) -> Result<&'a str> {
        match self.node.input.get(i) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(malformed(self.node, format!("input {i}"))),
        }
    }

    /// The name of an optional input (empty when absent).
    pub fn optional_input(&self, i: usize) -> &'a str {
        self.node.input.get(i).map_or("", String::as_str)
    }

    /// The name of output `i`; a typed error when the node lacks it.
    pub fn output(&self, i: usize) -> Result<&'a str> {
        output(self.node, i)
    }

    /// The probed shape of a value.
    pub fn shape(&self, e: &Emit, value: &str) -> Result<Vec<i64>> {
        e.shape(self.node, value)
    }

    /// An "unsupported" error for this node.
    pub fn unsupported(&self, reason: impl Into<String>) -> Error {
        unsupported(self.node, reason)
    }

    /// Axis attribute `name` (default `default`), made non-negative for a value of rank `rank`.
    pub fn axis(&self, name: &str, default: i64, rank: i64) -> i64 {
        let axis = self.node.attr_int(name, default);
        if axis < 0 { axis + rank } else { axis }
    }
}

/// Output `i` of `node`; a typed error when the node lacks it.
pub(crate) fn output(node: &NodeProto, i: usize) -> Result<&str> {
    match node.output.get(i) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(malformed(node, format!("output {i}"))),
    }
}

/// Input `i` of `node`; a typed error when the node lacks it.
pub(crate) fn input(node: &NodeProto, i: usize) -> Result<&str> {
    match node.input.get(i) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(malformed(node, format!("input {i}"))),
    }
}

/// A "malformed node" error: `expected` names what the node lacks.
pub(crate) fn malformed(node: &NodeProto, expected: String) -> Error {
    Error::MalformedNode {
        node: node_label(node),
        op_type: node.op_type.clone(),
        expected,
    }
}

/// Gradients of `node`'s inputs given the gradients of its outputs.
///
/// `gy[i]` is the gradient of output `i` (None: it does not reach the loss);
/// `need[i]` says whether input `i` needs a gradient. Returns one entry per input.
pub(crate) fn vjp(
    e: &mut Emit,
    node: &NodeProto,
    gy: &[Option<String>],
    need: &[bool],
) -> Result<Vec<Option<String>>> {
    let mut out: Vec<Option<String>> = vec![None; node.input.len()];
    let Some(g) = gy.first().cloned().flatten() else {
        return Ok(out);
    };
    let Some(Rule::Differentiable { backward, .. }) = rule(&node.op_type) else {
        return Err(unsupported(
            node,
            format!(
                "no gradient for `{}`; supported: {}",
                node.op_type,
                SUPPORTED_OPS.join(", ")
            ),
        ));
    };
    let ctx = Vjp { node, g: &g, need };
    backward(e, &ctx, &mut out)?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
