//! ONNX Runtime for xfer: finds the shared library, builds sessions on a
//! chosen execution provider and runs them on ndarray tensors.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), from the first
//! of: an explicit path (`--ort-lib`), `ORT_DYLIB_PATH`, or `.ort/` in the
//! working directory or one of its ancestors (where `just setup` puts it); for a GPU
//! device `.ort-gpu/` first (where `just setup-gpu` puts onnxruntime-gpu and the CUDA
//! libraries, which are preloaded by absolute path before the provider is registered); for
//! `--device openvino` only `.ort-openvino/` (where `just setup-openvino` puts
//! onnxruntime-openvino, whose libraries find each other by RPATH).

mod gpu;
mod library;
mod manifest;
mod native;
mod openvino;
mod resident;
mod session;

pub use gpu::{
    DoctorReport, Driver, GPU_LIBRARY_DIR, Home, LibraryStatus, NeededLibrary, TRT_LIB_DIR_ENV,
    doctor, driver, locate_libraries, needed_libraries,
};
pub use library::{LIBRARY_FILE_NAME, find_library, init, init_for, loaded_library};
pub use manifest::{Backbone, MANIFEST_FILE_NAME, ModelManifest, ModelSource, fingerprint};
pub use native::{DriverInfo, Gpu};
pub use openvino::{CpuBf16, OPENVINO_LIBRARY_DIR, cpu_bf16};
pub use resident::{Binding, DeviceMemory, DeviceTensor};
pub use session::{CpuArena, Device, InputTensor, Model, OutputTensor, Precision, SessionOptions};

/// Errors of the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No ONNX Runtime library was found at any of the places searched.
    #[error(
        "ONNX Runtime library not found; looked in:\n{}\nrun `{recipe}` to fetch it, or pass --ort-lib PATH / set ORT_DYLIB_PATH",
        .searched.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    LibraryNotFound {
        /// Every place that was searched, in order.
        searched: Vec<String>,
        /// The recipe that fetches the library the device needs (`just setup`, `just setup-openvino`).
        recipe: &'static str,
    },
    /// The library file exists but could not be loaded.
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    LibraryLoad {
        /// Path of the library file.
        path: String,
        /// What ONNX Runtime or the loader said.
        reason: String,
    },
    /// A different library was already loaded in this process.
    #[error(
        "ONNX Runtime was already loaded from {loaded}; cannot switch to {requested} in the same process"
    )]
    LibraryConflict {
        /// Library loaded first.
        loaded: String,
        /// Library asked for now.
        requested: String,
    },
    /// The requested execution provider is not available.
    #[error("execution provider `{device}` is not available: {reason}")]
    DeviceUnavailable {
        /// Device name (`cuda`, `tensorrt`).
        device: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The requested numeric precision cannot run on this device or CPU.
    #[error("--precision {precision} cannot run with --device {device}: {reason}")]
    PrecisionUnsupported {
        /// Precision asked for.
        precision: String,
        /// Device asked for.
        device: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The model file could not be read or is not a valid ONNX model.
    #[error("could not load ONNX model {path}: {reason}")]
    ModelLoad {
        /// Path of the model.
        path: String,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// A model manifest (`model.json`) is missing, unreadable or inconsistent.
    #[error("model manifest {path}: {reason}")]
    Manifest {
        /// Path of the manifest.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An input given to `run` does not match the model.
    #[error("input `{name}` does not match the model: {reason}")]
    Input {
        /// Input name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Allocating, copying or binding device-resident tensors failed.
    #[error("device memory: {op}: {reason}")]
    Device {
        /// What was being done.
        op: String,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("ONNX Runtime failed running {model}: {reason}")]
    Run {
        /// Model path or name.
        model: String,
        /// What ONNX Runtime said.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
