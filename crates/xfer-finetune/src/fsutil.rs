//! Atomic file writes: a temporary file in the same folder, synced, then renamed.

use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` so that readers see the old file or the complete new one, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    xfer_onnx::write_file_atomic(path, bytes).map_err(|source| Error::Io {
        op: "writing",
        path: path.display().to_string(),
        source,
    })
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        op: "reading",
        path: path.display().to_string(),
        source,
    })
}
