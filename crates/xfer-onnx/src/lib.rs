//! ONNX for xfer: the protobuf messages, reading and writing `.onnx` files,
//! tensor helpers and a small graph builder.
//!
//! The messages are generated at build time from the vendored
//! `proto/onnx.proto3` (ONNX 1.17) by `prost-build` with the pure-Rust
//! compiler `protox`, so the whole schema is declared: reading a user's model
//! and writing it back keeps every field (functions, sparse initializers,
//! training info, metadata, ...). xfer itself writes IR 9 / opset 17, which the
//! newer schema is a superset of.

mod builder;
pub mod fold;
mod io;
mod proto;
pub mod quant;
mod tensor;

pub use builder::{Dim, GraphBuilder, attr};
pub use io::{read_model, read_model_bytes, write_model, write_model_bytes};
/// Every message, enum and nested module of `onnx.proto3` (`ModelProto`,
/// `FunctionProto`, `type_proto`, ...), plus the [`AttributeType`] and
/// [`DataType`] enums at the top level.
pub use proto::*;

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
    /// Writing or reading a file failed (the operation and the file are in the error).
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
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
