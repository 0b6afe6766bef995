//! The ONNX protobuf messages, generated at build time from the vendored
//! `proto/onnx.proto3` (ONNX 1.17, IR 10; see `build.rs`).
//!
//! Every message and field of the schema is declared, so reading a model and
//! writing it back loses nothing (functions, sparse initializers, training
//! info, metadata, ...). The documentation of each message and field is the
//! comment above it in `proto/onnx.proto3`.

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rustdoc::all,
    rust_2018_idioms,
    unreachable_pub
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use generated::*;

/// The type tag of an attribute (`AttributeProto.type`).
pub use generated::attribute_proto::AttributeType;
/// Element types of tensors (`TensorProto.data_type`, `TypeProto.Tensor.elem_type`).
pub use generated::tensor_proto::DataType;
