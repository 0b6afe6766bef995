//! Reading and writing `.onnx` files.

use std::path::Path;

use prost::Message;

use crate::{Error, ModelProto, Result};

/// Decodes a model from protobuf bytes.
pub fn read_model_bytes(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|source| Error::Decode {
        path: "<memory>".to_owned(),
        source,
    })
}

/// Reads a `.onnx` file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = xfer_fs::read(path)?;
    ModelProto::decode(bytes.as_slice()).map_err(|source| Error::Decode {
        path: path.display().to_string(),
        source,
    })
}

/// Encodes a model to protobuf bytes.
pub fn write_model_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a `.onnx` file atomically (see [`xfer_fs::write_atomic`]), so readers never see a partial model.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    Ok(xfer_fs::write_atomic(path, &model.encode_to_vec())?)
}
