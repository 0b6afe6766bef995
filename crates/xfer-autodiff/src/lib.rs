//! Reverse-mode differentiation of ONNX graphs into ONNX *training graphs*,
//! made only of standard ONNX operators, plus the optimizers that update the
//! parameters those graphs differentiate.
//!
//! * [`TrainingGraphBuilder`] takes a forward model (a backbone), appends a
//!   head ([`HeadSpec`]) and a loss ([`Loss`]), and differentiates the loss
//!   with respect to the selected parameters ([`Trainable`]). The result
//!   ([`TrainingGraphs`]) holds a training model (inputs: data, labels,
//!   dropout masks, trainable parameters; outputs: `loss`, `logits`,
//!   `<param>_grad`), an eval model (forward + head, dropout off, every
//!   parameter an initializer) and the initial parameter values.
//! * [`vjp_model`] is the lower-level entry point: a model that outputs the
//!   vector-Jacobian product of one forward output with respect to any set of
//!   inputs or initializers.
//! * [`Adam`] (Keras's rule) and [`Sgd`] (Keras's momentum rule) update the
//!   parameter buffers the caller owns, in parallel over parameters; as
//!   [`GraphOptimizer`]s they also build their update as a small standard-ONNX graph
//!   ([`UpdateGraph`]) with the same float32 arithmetic, for loops that keep parameters,
//!   gradients and slots on a device.
//!
//! Backward nodes are emitted only for nodes that lie between a trainable
//! parameter and the loss; frozen parameters stay initializers, so ONNX
//! Runtime keeps pre-packing them.
//!
//! Shapes that a backward formulation must know statically (spatial sizes,
//! padding, broadcast patterns) come from one forward run in ONNX Runtime at
//! a probe batch of [`PROBE_BATCH`]; the batch dimension stays dynamic in the
//! graphs produced, the spatial size is fixed to the probed one.

mod builder;
mod emit;
mod engine;
mod fold;
mod io;
mod loss;
mod nchwc;
mod optim;
mod probe;
mod random;
mod select;
mod spec;
mod vjp;

pub use builder::{TrainingGraphBuilder, TrainingGraphs, vjp_model};
pub use io::{load_params, save_params};
pub use nchwc::{
    CpuKernelChoice, CpuKernels, NCHWC_BLOCKS, NCHWC_DOMAIN, nchwc_block, nchwc_block_matches,
};
pub use optim::{
    Adam, GraphOptimizer, NamedTensor, Optimizer, Sgd, UpdateGraph, UpdateNames, state_tensors,
};
pub use random::{dropout_mask, glorot_uniform};
pub use select::check_trainable;
pub use spec::{GraphSpec, HeadSpec, Loss, MaskSpec, Parameter, TensorSpec, Trainable};

/// Batch size of the forward run that measures intermediate shapes.
pub const PROBE_BATCH: i64 = 2;

/// Ops this crate can differentiate: the differentiable rows of the VJP rule table.
pub const SUPPORTED_OPS: &[&str] = vjp::SUPPORTED_OPS;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node on the path from a trainable parameter to the loss cannot be differentiated.
    #[error("node `{node}` ({op_type}): {reason}")]
    Unsupported {
        /// Node name (or its first output when unnamed).
        node: String,
        /// Operator type.
        op_type: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A node lacks an input, output or attribute value that its op requires.
    #[error("node `{node}` ({op_type}) is malformed: it has no {expected}")]
    MalformedNode {
        /// Node name (or its first output when unnamed).
        node: String,
        /// Operator type.
        op_type: String,
        /// What the op expects and the node lacks (e.g. `input 1`).
        expected: String,
    },
    /// The forward graph is not what the builder needs (inputs, outputs, opset, shapes).
    #[error("forward graph: {0}")]
    Graph(String),
    /// The parameter selection names something that does not exist or selects nothing.
    #[error("trainable selection: {0}")]
    Selection(String),
    /// The forward run that measures shapes failed.
    #[error("measuring shapes with ONNX Runtime: {0}")]
    Probe(#[source] xfer_runtime::Error),
    /// An ONNX-level error (tensor decoding, file I/O).
    #[error(transparent)]
    Onnx(#[from] xfer_onnx::Error),
    /// Parameters, gradients or optimizer state disagree in names or sizes.
    #[error("optimizer: parameter `{name}`: {reason}")]
    Optimizer {
        /// Parameter name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a parameter file failed.
    #[error("{op} {path}: {reason}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
