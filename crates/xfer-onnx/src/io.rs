//! Reading and writing `.onnx` files.

use std::io::Write;
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
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        op: "reading",
        path: path.display().to_string(),
        source,
    })?;
    ModelProto::decode(bytes.as_slice()).map_err(|source| Error::Decode {
        path: path.display().to_string(),
        source,
    })
}

/// Encodes a model to protobuf bytes.
pub fn write_model_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a `.onnx` file atomically (see [`write_file_atomic`]), so readers never see a partial model.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    write_file_atomic(path, &model.encode_to_vec()).map_err(|source| Error::Io {
        op: "writing",
        path: path.display().to_string(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder
/// (created if missing), synced, then renamed over `path`; on failure the
/// temporary file is removed and `path` is untouched.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
