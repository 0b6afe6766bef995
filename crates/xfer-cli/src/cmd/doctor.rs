//! `xfer doctor`: can this machine run a device? Prints the ONNX Runtime library in use, its
//! version and providers, every library the device's provider needs (found where, or what
//! provides it), the driver and the GPUs; exits non-zero when the device cannot work.

use crate::args::RuntimeArgs;

/// Arguments of `xfer doctor`: the runtime flags every model-running subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The device (--device), ONNX Runtime library and TensorRT folder to check. With
    /// --allow-cpu-fallback the exit status is 0 even when the device cannot work (commands
    /// given that flag run on the CPU then).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `xfer doctor`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = &args.runtime;
    let report = xfer_runtime::doctor(
        runtime.device,
        runtime.ort_lib.as_deref(),
        runtime.trt_lib_dir.as_deref(),
    )?;
    print!("{report}");
    if report.ok() {
        Ok(())
    } else if runtime.allow_cpu_fallback {
        eprintln!(
            "--device {} cannot work here; commands given --allow-cpu-fallback run on the CPU",
            runtime.device
        );
        Ok(())
    } else {
        anyhow::bail!(
            "--device {} cannot work here (see the problems above)",
            runtime.device
        )
    }
}
