//! Keras 3 models (`.keras` zip, or `.weights.h5` + `config.json`) converted to ONNX.
//!
//! [`KerasModel`] reads the functional graph (`config.json`) and the weights
//! (`model.weights.h5`, pure-Rust HDF5). [`convert`] walks the graph, nested
//! functional models included, and emits an ONNX graph through `xfer-onnx`.
//!
//! # The graphs written
//!
//! * Input `pixels`: float32 NCHW `[N, C, H, W]`, RGB, values 0..255; `N`, `H`,
//!   `W` are symbolic. The preprocessing (Xception: `x/127.5 - 1`) is inside
//!   the graph.
//! * Each layer's output value is named after the Keras layer (`block1_conv1_act`,
//!   `add_3`), so a graph can be cut or frozen at a named layer.
//! * Every activation inside the graph is NCHW (Keras is NHWC; values are the
//!   same, only the layout differs).
//! * Output `features` `[N, D]`: the base model's globally average-pooled
//!   output. With the head, also `probabilities` `[N, K]` (the head's own
//!   softmax/sigmoid, or one added when the head ends in logits, as a
//!   `from_logits=True` head does).
//! * 'same' padding: explicit symmetric pads for stride 1, ONNX
//!   `auto_pad = SAME_UPPER` for stride > 1 (TensorFlow's rule: the extra row
//!   and column go bottom/right, for any H and W).
//!
//! # Initializer names and layouts
//!
//! Initializers are named `<keras layer>.<keras variable>`:
//!
//! | Keras layer | initializers (ONNX layout) |
//! |---|---|
//! | Conv2D | `L.kernel` OIHW `[out, in/groups, kh, kw]`, `L.bias` `[out]` |
//! | DepthwiseConv2D | `L.kernel` `[C*M, 1, kh, kw]` (ONNX grouped conv, group = C), `L.bias` |
//! | SeparableConv2D | `L.depthwise_kernel` `[C*M, 1, kh, kw]`, `L.pointwise_kernel` `[F, C*M, 1, 1]`, `L.bias` |
//! | BatchNormalization | `L.gamma`, `L.beta`, `L.moving_mean`, `L.moving_variance` `[C]` (ONNX `BatchNormalization`, inference mode) |
//! | Dense | `L.kernel` `[in, out]` (as Keras; `MatMul`), `L.bias` `[out]` (`Add`) |
//! | Rescaling / preprocessing | `L.scale`, `L.offset`; `preprocess.scale`, `preprocess.offset` |
//!
//! With BatchNorm folding on (the inference graph), a BatchNormalization that
//! directly follows a convolution is folded into it: its tensors become
//! `L.kernel_folded` (or `L.pointwise_kernel_folded`) and `L.bias_folded`, and
//! the preprocessing is folded into a first convolution that has 'valid'
//! padding. Without folding (the training graph) every Keras variable keeps
//! its own initializer.
//!
//! # Keras 3 weight files
//!
//! Keras 3 stores a layer's variables at `layers/<class>[_k]/vars/<i>` where
//! `<class>` is the snake-cased class name and `k` counts the layers of that
//! class inside the same model, in layer order (`block1_conv1` →
//! `layers/functional/layers/conv2d/vars/0`). [`convert`] rebuilds that mapping
//! from `config.json`.

mod convert;
mod fold;
mod graph;
mod keras;
mod publish;

pub use convert::{ConvertOptions, Converted, Part, Preprocessing, convert};
pub use fold::fold_for_inference;
pub use graph::snake_case;
pub use keras::KerasModel;
pub use publish::{
    ConvertedPair, MODEL_FILE, PublishInfo, Published, TRAIN_FILE, convert_pair,
    current_conversion, publish,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a Keras model xfer can read.
    #[error("{path}: {reason}")]
    Format {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The model config (config.json) is malformed or uses something unsupported.
    #[error("model config: {0}")]
    Config(String),
    /// A layer xfer cannot convert.
    #[error("layer `{layer}` ({class}): {reason}")]
    Layer {
        /// Keras layer name.
        layer: String,
        /// Keras layer class.
        class: String,
        /// What is unsupported or wrong.
        reason: String,
    },
    /// A weight is missing or has the wrong shape.
    #[error("weights of layer `{layer}`: {reason}")]
    Weights {
        /// Keras layer name.
        layer: String,
        /// What is wrong (path, shape found, shape expected).
        reason: String,
    },
    /// Rewriting the ONNX graph failed in `xfer-onnx` (e.g. folding BatchNorm).
    #[error(transparent)]
    Onnx(#[from] xfer_onnx::Error),
    /// Building or rewriting the ONNX graph failed.
    #[error("graph: {0}")]
    Graph(String),
    /// Writing a model folder failed.
    #[error("{op} {path}: {reason}")]
    Publish {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
