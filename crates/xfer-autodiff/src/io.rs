//! Parameters as safetensors files (float32, little-endian), written atomically.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::spec::Parameter;
use crate::{Error, Result};

/// Writes tensors to a safetensors file (temporary name, then renamed), with optional metadata.
pub fn save_params(
    path: &Path,
    tensors: &[Parameter],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let io = |reason: String| Error::Io {
        op: "writing",
        path: path.display().to_string(),
        reason,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| io(format!("tensor `{}`: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let data = safetensors::serialize(views, metadata).map_err(|e| io(e.to_string()))?;
    xfer_fs::write_atomic(path, &data).map_err(|e| io(e.to_string()))
}

/// Reads every float32 tensor of a safetensors file, sorted by name.
pub fn load_params(path: &Path) -> Result<Vec<Parameter>> {
    let err = |reason: String| Error::Io {
        op: "reading",
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(format!(
                "tensor `{name}` is {:?}; xfer expects float32",
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(Parameter {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
