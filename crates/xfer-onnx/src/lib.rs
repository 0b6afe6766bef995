//! ONNX for xfer: the protobuf messages as hand-written `prost` structs,
//! reading and writing `.onnx` files, tensor helpers and a small graph builder.
//!
//! Only the parts of `onnx.proto` xfer needs are declared; unknown fields of
//! files written by other tools are skipped when reading.

mod builder;
mod io;
mod proto;
mod tensor;

pub use builder::{Dim, GraphBuilder, attr};
pub use io::{read_model, read_model_bytes, write_file_atomic, write_model, write_model_bytes};
pub use proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};

/// ONNX IR version written by xfer (ONNX 1.15 and later).
pub const IR_VERSION: i64 = 9;
/// Default-domain opset version of the graphs xfer writes.
pub const DEFAULT_OPSET: i64 = 17;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`).
        op: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("{path} is not a valid ONNX model: {source}")]
    Decode {
        /// The file (or `<memory>`).
        path: String,
        /// What the decoder said.
        source: prost::DecodeError,
    },
    /// A tensor has an element type or a size an operation cannot handle.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A graph is malformed (missing value, duplicate name, ...).
    #[error("graph: {0}")]
    Graph(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
