//! Finding and loading the ONNX Runtime shared library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::gpu::GPU_LIBRARY_DIR;
use crate::openvino::OPENVINO_LIBRARY_DIR;
use crate::{Device, Error, Result};

/// File name of the library `just setup` unpacks into `.ort/`.
pub const LIBRARY_FILE_NAME: &str = "libonnxruntime.so.1.31.1";

static LOADED: OnceLock<PathBuf> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The process-wide ONNX Runtime environment (after [`init`]).
pub(crate) fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

/// Returns the library this process loaded, if any.
pub fn loaded_library() -> Option<&'static Path> {
    LOADED.get().map(PathBuf::as_path)
}

/// Finds the ONNX Runtime library for `device`: `explicit`, then `ORT_DYLIB_PATH`, then
/// `.ort/` in the working directory and its ancestors, then next to the
/// running executable's ancestors. For a GPU device `.ort-gpu/` (where `just setup-gpu`
/// puts onnxruntime-gpu) comes before `.ort/` in each of those folders; for OpenVINO only
/// `.ort-openvino/` (where `just setup-openvino` puts onnxruntime-openvino) is searched, since
/// the CPU library has no OpenVINO provider.
pub fn find_library(explicit: Option<&Path>, device: Device) -> Result<PathBuf> {
    let recipe = match device {
        Device::OpenVino => "just setup-openvino",
        Device::Cpu | Device::Cuda | Device::TensorRt => "just setup",
    };
    let mut searched = Vec::new();
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        searched.push(format!("{} (--ort-lib: no such file)", path.display()));
        return Err(Error::LibraryNotFound { searched, recipe });
    }
    if let Some(env) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(env);
        if path.is_file() {
            return Ok(path);
        }
        searched.push(format!("{} (ORT_DYLIB_PATH: no such file)", path.display()));
    } else {
        searched.push("ORT_DYLIB_PATH (not set)".to_owned());
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if !roots.iter().any(|r| r == dir) {
                roots.push(dir.to_path_buf());
            }
        }
    }
    let folders: &[&str] = match device {
        Device::Cpu => &[".ort"],
        Device::Cuda | Device::TensorRt => &[GPU_LIBRARY_DIR, ".ort"],
        Device::OpenVino => &[OPENVINO_LIBRARY_DIR],
    };
    for root in roots {
        for folder in folders {
            let dir = root.join(folder);
            if let Some(found) = library_in(&dir) {
                return Ok(found);
            }
            searched.push(format!("{}/", dir.display()));
        }
    }
    Err(Error::LibraryNotFound { searched, recipe })
}

/// Looks for `libonnxruntime.so*` in `dir`, preferring the pinned version.
fn library_in(dir: &Path) -> Option<PathBuf> {
    for pinned in [LIBRARY_FILE_NAME, crate::openvino::LIBRARY_FILE_NAME] {
        let pinned = dir.join(pinned);
        if pinned.is_file() {
            return Some(pinned);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib"
                })
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

/// Loads ONNX Runtime once per process (later calls with the same or no path
/// are no-ops) and returns the path it was loaded from.
pub fn init(explicit: Option<&Path>) -> Result<&'static Path> {
    init_for(explicit, Device::Cpu)
}

/// [`init`], searching for the library `device` needs (see [`find_library`]).
pub fn init_for(explicit: Option<&Path>, device: Device) -> Result<&'static Path> {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(loaded) = LOADED.get() {
        if let Some(requested) = explicit {
            let same = std::fs::canonicalize(requested).ok() == std::fs::canonicalize(loaded).ok();
            if !same {
                return Err(Error::LibraryConflict {
                    loaded: loaded.display().to_string(),
                    requested: requested.display().to_string(),
                });
            }
        }
        return Ok(loaded.as_path());
    }
    let path = find_library(explicit, device)?;
    let builder = ort::init_from(&path).map_err(|e| Error::LibraryLoad {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let environment = builder
        .with_name("xfer")
        .build()
        .map_err(|e| Error::LibraryLoad {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    // The environment must outlive every session; keep it for the process.
    let _ = ENVIRONMENT.set(environment);
    tracing::debug!(path = %path.display(), "loaded ONNX Runtime");
    Ok(LOADED.get_or_init(|| path).as_path())
}
