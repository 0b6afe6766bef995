//! Argument types shared by several subcommands: how a model runs, image sizes, unreadable images.

use std::path::PathBuf;

use xfer_data::{DEFAULT_SEED, DEMO_SPLITS, LoadSummary, OnError, SplitAssignment};
use xfer_runtime::{Device, Precision, SessionOptions};

/// How a model runs: the ONNX Runtime library, the execution provider and its threads.
/// Every subcommand that runs a model flattens this in, so the flags are the same everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/ up from here; for cuda and
    /// tensorrt .ort-gpu/ first, where `just setup-gpu` puts onnxruntime-gpu; for openvino
    /// only .ort-openvino/, where `just setup-openvino` puts onnxruntime-openvino).
    #[arg(long, value_name = "FILE", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: cpu, cuda (fp32, TF32 off), tensorrt or openvino (Intel OpenVINO on
    /// the CPU, fp32 or bf16; `just setup-openvino`). `xfer doctor --device D` checks what D
    /// needs.
    #[arg(long, default_value = "cpu", env = "XFER_DEVICE")]
    pub device: Device,
    /// Numeric precision: fp32, or bf16 (--device openvino only; about 4 % feature error,
    /// 3-4x faster on CPUs with AMX-BF16) [default: bf16 for openvino on a CPU with
    /// AMX-BF16, else fp32]. Stores record it and never mix precisions.
    #[arg(long, value_name = "P", env = "XFER_PRECISION")]
    pub precision: Option<Precision>,
    /// Folder with TensorRT 10's libraries (libnvinfer.so.10), for --device tensorrt
    /// [default: next to ONNX Runtime, then the system's library folders].
    #[arg(long, value_name = "DIR", env = xfer_runtime::TRT_LIB_DIR_ENV)]
    pub trt_lib_dir: Option<PathBuf>,
    /// Fall back to the CPU (with a warning) when the device is unavailable.
    #[arg(long)]
    pub allow_cpu_fallback: bool,
    /// Threads inside one ONNX Runtime operator (1 makes runs bit-reproducible) [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    /// The session options these flags ask for.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            ort_lib: self.ort_lib.clone(),
            device: self.device,
            allow_cpu_fallback: self.allow_cpu_fallback,
            intra_threads: self.threads,
            trt_lib_dir: self.trt_lib_dir.clone(),
            precision: self.precision,
            static_input: None,
            ..SessionOptions::default()
        }
    }
}

/// Which images go to which split, the same way in every subcommand that takes splits.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// Split tags: `name=SPEC,name=SPEC,...` (SPEC slices the seeded order of the whole
    /// dataset, e.g. `train[:70%]`, `train[70%:85%]`, unions with `+`), or one SPEC tagged
    /// with its own name. Splits that share images are refused; images in none are left out.
    #[arg(long = "split", default_value = DEMO_SPLITS, value_name = "SPEC")]
    pub splits: SplitAssignment,
    /// Seed of the split order.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Slice each class separately, so every split keeps the class balance.
    #[arg(long)]
    pub stratified: bool,
}

impl SplitArgs {
    /// The assignment asked for (stratified or not).
    pub fn assignment(&self) -> SplitAssignment {
        self.splits.clone().stratified(self.stratified)
    }
}

/// How images are fed to an exported model: batch size and decoder threads.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Images per inference batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Image decoding threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub decode_threads: Option<usize>,
}

/// What to do with images that cannot be read, for the subcommands that read images.
#[derive(Debug, Clone, clap::Args)]
pub struct OnErrorArgs {
    /// Unreadable images: `skip` (report each with its reason and go on) or `fail` (stop).
    #[arg(long, default_value = "skip", value_name = "skip|fail")]
    pub on_error: OnError,
}

/// Prints what a run skipped to stderr: the count per kind, then each file and its reason.
pub fn report_skipped(summary: &LoadSummary) {
    if summary.skipped.is_empty() {
        return;
    }
    eprintln!("{summary}");
    for s in &summary.skipped {
        eprintln!("  skipped {}: {}", s.path.display(), s.reason);
    }
}

/// Parses an image size `HxW` (or one number for a square), as a clap value parser.
pub fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let parse = |v: &str| -> Result<u32, String> {
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{s}` is not a size; write HxW with positive numbers, e.g. 150x150"
            )),
        }
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok([parse(h)?, parse(w)?]),
        None => {
            let n = parse(s)?;
            Ok([n, n])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("150x150").expect("size"), [150, 150]);
        assert_eq!(parse_size("131X97").expect("size"), [131, 97]);
        assert_eq!(parse_size("224").expect("size"), [224, 224]);
        assert!(parse_size("0x3").is_err());
        assert!(parse_size("ax3").is_err());
    }
}
