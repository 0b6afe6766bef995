//! The OpenVINO execution provider (`--device openvino`): where its library lives, which
//! precisions this CPU can run, and the provider options that ask OpenVINO for them.
//!
//! onnxruntime-openvino 1.24.1 ships its own ONNX Runtime (`libonnxruntime.so.1.24.1`) with
//! the provider and the OpenVINO 2025.4 runtime next to it; every library there finds the
//! others through RPATH `$ORIGIN`, so nothing is preloaded. The provider runs fp32 unless
//! asked otherwise: bf16 is asked for through `load_config`'s `INFERENCE_PRECISION_HINT`
//! (the provider's own `precision` option offers only FP32, FP16 and ACCURACY).

use std::path::Path;

use crate::{Error, Precision, Result};

/// Folder `just setup-openvino` fills with onnxruntime-openvino's libraries.
pub const OPENVINO_LIBRARY_DIR: &str = ".ort-openvino";

/// File name of the ONNX Runtime library in [`OPENVINO_LIBRARY_DIR`].
pub(crate) const LIBRARY_FILE_NAME: &str = "libonnxruntime.so.1.24.1";

/// The provider's name in ONNX Runtime's list of providers.
pub(crate) const PROVIDER_NAME: &str = "OpenVINOExecutionProvider";

/// The bf16 instructions this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBf16 {
    /// AMX-BF16 tile instructions (Intel Sapphire Rapids and later): bf16 is the default.
    pub amx: bool,
    /// AVX512-BF16 dot products (also AMD Zen 4 and later): bf16 runs, at a smaller gain.
    pub avx512: bool,
}

impl CpuBf16 {
    /// Whether OpenVINO can run bf16 here (on neither, it would silently run fp32).
    pub fn any(self) -> bool {
        self.amx || self.avx512
    }

    /// From the `flags` line of `/proc/cpuinfo`.
    fn from_flags(flags: &str) -> Self {
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        CpuBf16 {
            amx: has("amx_bf16"),
            avx512: has("avx512_bf16"),
        }
    }
}

/// The bf16 instructions of this CPU, as the kernel reports them (so only those the OS
/// enables); none where `/proc/cpuinfo` cannot be read.
pub fn cpu_bf16() -> CpuBf16 {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("flags"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    CpuBf16::from_flags(&flags)
}

/// The precision `--device openvino` runs when none is asked for: bf16 where the CPU has
/// AMX-BF16 (where it is 3-4x faster than fp32), fp32 elsewhere.
pub(crate) fn default_precision() -> Precision {
    if cpu_bf16().amx {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// Refuses a precision this CPU cannot run (OpenVINO would run fp32 and say nothing).
pub(crate) fn check_precision(precision: Precision) -> Result<()> {
    if precision == Precision::Bf16 && !cpu_bf16().any() {
        return Err(Error::PrecisionUnsupported {
            precision: precision.to_string(),
            device: "openvino".to_owned(),
            reason: "this CPU has neither AMX-BF16 nor AVX512-BF16 (see the flags in /proc/cpuinfo), so OpenVINO would run fp32; use --precision fp32".to_owned(),
        });
    }
    Ok(())
}

/// Why the loaded ONNX Runtime cannot run the OpenVINO provider, if it cannot.
pub(crate) fn provider_problem(ort_lib: &Path) -> Option<String> {
    let providers = crate::native::ort_providers().unwrap_or_default();
    (!providers.iter().any(|p| p == PROVIDER_NAME)).then(|| {
        format!(
            "the ONNX Runtime library in use ({}) has no {PROVIDER_NAME} (it has {}). Run `just setup-openvino` (it fills {OPENVINO_LIBRARY_DIR}/, which --device openvino finds by itself) or pass --ort-lib pointing at onnxruntime-openvino's libonnxruntime.so.1.24.1",
            ort_lib.display(),
            providers.join(", ")
        )
    })
}

/// OpenVINO's CPU configuration (`load_config`) for `precision` and `threads`: the
/// precision hint, latency mode (one stream, every thread on one batch) and the thread count.
pub(crate) fn load_config(precision: Precision, threads: Option<usize>) -> String {
    let hint = match precision {
        Precision::Fp32 => "f32",
        Precision::Bf16 => "bf16",
    };
    let mut cpu = serde_json::Map::new();
    cpu.insert("INFERENCE_PRECISION_HINT".to_owned(), hint.into());
    cpu.insert("PERFORMANCE_HINT".to_owned(), "LATENCY".into());
    if let Some(n) = threads {
        cpu.insert("INFERENCE_NUM_THREADS".to_owned(), n.to_string().into());
    }
    serde_json::json!({ "CPU": cpu }).to_string()
}

/// The provider, configured for `precision` (and `threads`, `static_input`), failing the
/// session when it cannot start.
pub(crate) fn dispatch(
    precision: Precision,
    threads: Option<usize>,
    static_input: Option<&str>,
) -> ort::ep::ExecutionProviderDispatch {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let mut ep = ort::ep::OpenVINO::default()
        .with_device_type("CPU")
        .with_arbitrary_config("load_config", load_config(precision, threads));
    if let Some(shape) = static_input {
        ep = ep.with_arbitrary_config("reshape_input", shape);
    }
    ep.build().error_on_failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_are_read_word_by_word() {
        let spr = CpuBf16::from_flags("flags : fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8");
        assert_eq!(
            spr,
            CpuBf16 {
                amx: true,
                avx512: true
            }
        );
        let zen4 = CpuBf16::from_flags("flags : fpu avx512f avx512_bf16 avx512_vnni");
        assert!(!zen4.amx && zen4.avx512 && zen4.any());
        // A flag that only contains the name is not the flag.
        let none = CpuBf16::from_flags("flags : fpu avx512f xamx_bf16x avx512_bf16_no");
        assert!(!none.any());
    }

    #[test]
    fn load_config_asks_for_the_precision_and_threads() {
        let v: serde_json::Value =
            serde_json::from_str(&load_config(Precision::Bf16, Some(2))).expect("json");
        assert_eq!(v["CPU"]["INFERENCE_PRECISION_HINT"], "bf16");
        assert_eq!(v["CPU"]["INFERENCE_NUM_THREADS"], "2");
        assert_eq!(v["CPU"]["PERFORMANCE_HINT"], "LATENCY");
        let v: serde_json::Value =
            serde_json::from_str(&load_config(Precision::Fp32, None)).expect("json");
        assert_eq!(v["CPU"]["INFERENCE_PRECISION_HINT"], "f32");
        assert!(v["CPU"].get("INFERENCE_NUM_THREADS").is_none());
    }
}
