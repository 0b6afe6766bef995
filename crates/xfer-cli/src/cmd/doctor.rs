//! `xfer doctor`: can this machine run a device? Prints the ONNX Runtime library in use, its
//! version and providers, every library the device's provider needs (found where, or what
//! provides it), the driver and the GPUs; exits non-zero when the device cannot work.

use std::path::PathBuf;

use xfer_runtime::Device;

/// Arguments of `xfer doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device to check: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort-gpu/ for a GPU device, then .ort/).
    #[arg(long, value_name = "FILE", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Folder with TensorRT 10's libraries (libnvinfer.so.10), for --device tensorrt.
    #[arg(long, value_name = "DIR", env = xfer_runtime::TRT_LIB_DIR_ENV)]
    pub trt_lib_dir: Option<PathBuf>,
}

/// Runs `xfer doctor`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = xfer_runtime::doctor(
        args.device,
        args.ort_lib.as_deref(),
        args.trt_lib_dir.as_deref(),
    )?;
    print!("{report}");
    if report.ok() {
        Ok(())
    } else {
        anyhow::bail!(
            "--device {} cannot work here (see the problems above)",
            args.device
        )
    }
}
