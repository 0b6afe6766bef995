//! Sessions on a chosen execution provider, run on ndarray tensors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::{Error, Result};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (cargo feature `cuda`, onnxruntime-gpu library), in true fp32: xfer turns
    /// the provider's TF32 option off (its default allows TF32 in cuBLAS and cuDNN, 10-bit
    /// mantissa products that put features about 1.5e-3 from the CPU's).
    Cuda,
    /// NVIDIA TensorRT (cargo feature `tensorrt`).
    TensorRt,
    /// Intel OpenVINO on the CPU (onnxruntime-openvino's library, `just setup-openvino`): fp32,
    /// or bf16 on the CPU's matrix units ([`Precision`]).
    OpenVino,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::TensorRt => "tensorrt",
            Device::OpenVino => "openvino",
        })
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "tensorrt" | "trt" => Ok(Device::TensorRt),
            "openvino" | "ov" => Ok(Device::OpenVino),
            other => Err(format!(
                "unknown device `{other}`; expected cpu, cuda, tensorrt or openvino"
            )),
        }
    }
}

/// The numeric precision a session computes in (its inputs and outputs stay float32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit float everywhere, matrix products included (on `Device::Cuda` with TF32 off).
    #[default]
    Fp32,
    /// bfloat16 matrix products (fp32 accumulation), on `Device::OpenVino` only: 3-4x the
    /// images/s of fp32 on CPUs with AMX-BF16, features within a few percent (README).
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision `{other}`; expected fp32 or bf16"
            )),
        }
    }
}

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// ONNX Runtime library to load (else the search of [`crate::find_library`]).
    pub ort_lib: Option<PathBuf>,
    /// Execution provider.
    pub device: Device,
    /// Fall back to the CPU (with a warning) when `device` is unavailable.
    pub allow_cpu_fallback: bool,
    /// Threads used inside one operator (`None`: ONNX Runtime's default, all cores).
    pub intra_threads: Option<usize>,
    /// Disable ONNX Runtime's graph optimizations (for debugging).
    pub disable_optimizations: bool,
    /// Folder of TensorRT 10's libraries (`--trt-lib-dir`), for `Device::TensorRt`.
    pub trt_lib_dir: Option<PathBuf>,
    /// Numeric precision (`None`: the device's default, see [`SessionOptions::precision`]).
    pub precision: Option<Precision>,
    /// `Device::OpenVino` only: a fixed input shape, as the provider's `reshape_input` option
    /// writes it (`pixels[32,3,150,150]`); every run must then feed exactly that shape.
    pub static_input: Option<String>,
    /// How CPU tensors are allocated: ONNX Runtime's per-session arena (the default), one
    /// process-wide arena that grows by exactly what is asked, or the system allocator.
    pub cpu_arena: CpuArena,
    /// Do not pre-plan one block for a whole run from the first run's allocations
    /// (`enable_mem_pattern` off). With the pattern, the second run of a large graph holds the
    /// planned block on top of what the first run left in the arena: measured 5.4 GB against
    /// 3.05 GB (both off) for Xception's all-layers training step at batch 32. Results are
    /// unchanged.
    pub disable_mem_pattern: bool,
}

impl SessionOptions {
    /// The precision sessions of these options compute in: the one asked for, else bf16 for
    /// `Device::OpenVino` on a CPU with AMX-BF16 and fp32 everywhere else.
    pub fn precision(&self) -> Precision {
        match (self.precision, self.device) {
            (Some(p), _) => p,
            (None, Device::OpenVino) => crate::openvino::default_precision(),
            (None, _) => Precision::Fp32,
        }
    }

    /// Refuses a precision the device (or this CPU) cannot run, before anything is loaded.
    pub fn check(&self) -> Result<()> {
        let precision = self.precision();
        match self.device {
            Device::OpenVino => crate::openvino::check_precision(precision),
            _ if precision == Precision::Fp32 => Ok(()),
            device => Err(Error::PrecisionUnsupported {
                precision: precision.to_string(),
                device: device.to_string(),
                reason: "only --device openvino runs bf16 (fetch it with `just setup-openvino`)"
                    .to_owned(),
            }),
        }
    }

    /// These options with the exact-growth CPU arena and the memory pattern off: for large
    /// graphs run many times (training steps), where a doubling arena and the pattern only
    /// hold memory.
    pub fn low_memory(&self) -> Self {
        SessionOptions {
            cpu_arena: CpuArena::Exact,
            disable_mem_pattern: true,
            ..self.clone()
        }
    }
}

/// How a session allocates its CPU tensors. Results are the same bits with each.
///
/// Measured for Xception's all-layers training step (batch 32, 2 threads, ONNX Runtime 1.31.1,
/// memory pattern off): [`CpuArena::PerSession`] 3.78 s and 3.40 GB peak, [`CpuArena::Off`]
/// 5.55 s (every large buffer is a fresh `mmap` whose pages fault in again each step) and
/// 3.06 GB, [`CpuArena::Exact`] 3.59 s and 2.79 GB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuArena {
    /// ONNX Runtime's default: each session's own arena, grown in doubling chunks and never
    /// shrunk.
    #[default]
    PerSession,
    /// One arena for every session of the process that asks for it, grown by exactly the
    /// size of each allocation that does not fit (`arena_extend_strategy` kSameAsRequested):
    /// its memory is reused step after step, and sessions that run one after another (training,
    /// then validation) share it.
    Exact,
    /// The system allocator (`enable_cpu_mem_arena` off): memory goes back when a buffer dies,
    /// at the cost of faulting pages in again on every run.
    Off,
}

/// `inputs` as ONNX Runtime session inputs that view the arrays.
fn session_inputs<'a>(
    inputs: &'a [(&str, InputTensor<'_>)],
) -> Result<
    Vec<(
        std::borrow::Cow<'a, str>,
        ort::session::SessionInputValue<'a>,
    )>,
> {
    let mut values = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let input_err = |e: ort::Error| Error::Input {
            name: (*name).to_owned(),
            reason: e.to_string(),
        };
        let value: ort::session::SessionInputValue<'_> = match tensor {
            InputTensor::F32(a) => TensorRef::from_array_view(a.view())
                .map_err(input_err)?
                .into(),
            InputTensor::I64(a) => TensorRef::from_array_view(a.view())
                .map_err(input_err)?
                .into(),
        };
        values.push(((*name).into(), value));
    }
    Ok(values)
}

/// A tensor handed to [`Model::run`].
#[derive(Debug, Clone)]
pub enum InputTensor<'a> {
    /// 32-bit float tensor.
    F32(ArrayViewD<'a, f32>),
    /// 64-bit integer tensor.
    I64(ArrayViewD<'a, i64>),
}

impl<'a> From<ArrayViewD<'a, f32>> for InputTensor<'a> {
    fn from(v: ArrayViewD<'a, f32>) -> Self {
        InputTensor::F32(v)
    }
}

impl<'a> From<ArrayViewD<'a, i64>> for InputTensor<'a> {
    fn from(v: ArrayViewD<'a, i64>) -> Self {
        InputTensor::I64(v)
    }
}

/// A tensor returned by [`Model::run`].
#[derive(Debug, Clone)]
pub enum OutputTensor {
    /// 32-bit float tensor.
    F32(ArrayD<f32>),
    /// 64-bit integer tensor.
    I64(ArrayD<i64>),
}

impl OutputTensor {
    /// The tensor as f32, or `None` for other element types.
    pub fn into_f32(self) -> Option<ArrayD<f32>> {
        match self {
            OutputTensor::F32(a) => Some(a),
            OutputTensor::I64(_) => None,
        }
    }
}

/// An ONNX model loaded into an ONNX Runtime session.
pub struct Model {
    pub(crate) session: Session,
    pub(crate) name: String,
    device: Device,
    precision: Precision,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .finish()
    }
}

impl Model {
    /// Loads an ONNX file into a session.
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelLoad {
                path: path.display().to_string(),
                reason: "no such file (run `just setup` or `xfer convert` to create it)".to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::ModelLoad {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &path.display().to_string(), options)
    }

    /// Builds a session from ONNX bytes already in memory; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: &str, options: &SessionOptions) -> Result<Self> {
        options.check()?;
        crate::init_for(options.ort_lib.as_deref(), options.device)?;
        let env = crate::library::environment().ok_or_else(|| Error::LibraryLoad {
            path: String::new(),
            reason: "ONNX Runtime environment missing after init".to_owned(),
        })?;
        let load_err = |e: ort::Error| Error::ModelLoad {
            path: name.to_owned(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(env).map_err(load_err)?;
        if let Some(n) = options.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| load_err(e.into()))?;
        }
        if options.disable_optimizations {
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(|e| load_err(e.into()))?;
        }
        let builder = memory_options(builder, options).map_err(load_err)?;
        let (builder, device) = register_device(builder, env, options)?;
        let mut builder = builder;
        let session = builder.commit_from_memory(bytes).map_err(load_err)?;
        let precision = if device == options.device {
            options.precision()
        } else {
            Precision::Fp32
        };
        Ok(Model {
            session,
            name: name.to_owned(),
            device,
            precision,
        })
    }

    /// The device this session actually runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The precision this session actually computes in (fp32 after a fallback to the CPU).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Names of the model's inputs, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect()
    }

    /// Names of the model's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect()
    }

    /// Runs the model on named inputs and returns every output, in the model's order.
    pub fn run(
        &mut self,
        inputs: &[(&str, InputTensor<'_>)],
    ) -> Result<Vec<(String, OutputTensor)>> {
        self.run_with(inputs, false)
    }

    /// [`Model::run`], then hands the CPU arena's free chunks back to the system (ONNX
    /// Runtime's `memory.enable_memory_arena_shrinkage`). For the last run of a pass after
    /// which the process does other memory-hungry work: with [`CpuArena::Exact`] the arena is
    /// shared, so this also returns what other sessions (the training step) freed.
    pub fn run_releasing_memory(
        &mut self,
        inputs: &[(&str, InputTensor<'_>)],
    ) -> Result<Vec<(String, OutputTensor)>> {
        self.run_with(inputs, self.device == Device::Cpu)
    }

    fn run_with(
        &mut self,
        inputs: &[(&str, InputTensor<'_>)],
        shrink_cpu_arena: bool,
    ) -> Result<Vec<(String, OutputTensor)>> {
        let values = session_inputs(inputs)?;
        let run_err = |e: ort::Error| Error::Run {
            model: self.name.clone(),
            reason: e.to_string(),
        };
        let shrink = if shrink_cpu_arena {
            let mut options = ort::session::RunOptions::new().map_err(run_err)?;
            options
                .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                .map_err(run_err)?;
            Some(options)
        } else {
            None
        };
        let outputs = match &shrink {
            Some(options) => self.session.run_with_options(values, options),
            None => self.session.run(values),
        }
        .map_err(run_err)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            result.push((name.to_owned(), output_tensor(&self.name, name, &value)?));
        }
        Ok(result)
    }

    /// Runs a model with one float input and returns its first float output.
    pub fn run_single(&mut self, input: &str, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let outputs = self.run(&[(input, InputTensor::F32(x))])?;
        let model = self.name.clone();
        outputs
            .into_iter()
            .next()
            .and_then(|(_, t)| t.into_f32())
            .ok_or(Error::Run {
                model,
                reason: "the model's first output is not a float32 tensor".to_owned(),
            })
    }
}

/// A copy of output `name` of `model` (a host value) as a float32 or int64 tensor.
pub(crate) fn output_tensor(
    model: &str,
    name: &str,
    value: &ort::value::DynValue,
) -> Result<OutputTensor> {
    if let Ok(a) = value.try_extract_array::<f32>() {
        Ok(OutputTensor::F32(a.to_owned()))
    } else if let Ok(a) = value.try_extract_array::<i64>() {
        Ok(OutputTensor::I64(a.to_owned()))
    } else {
        Err(Error::Run {
            model: model.to_owned(),
            reason: format!("output `{name}` is neither float32 nor int64"),
        })
    }
}

type Builder = ort::session::builder::SessionBuilder;

/// The arena and memory-pattern settings of `options`.
fn memory_options(mut builder: Builder, options: &SessionOptions) -> ort::Result<Builder> {
    if options.disable_mem_pattern {
        builder = builder
            .with_memory_pattern(false)
            .map_err(|e| -> ort::Error { e.into() })?;
    }
    match options.cpu_arena {
        CpuArena::PerSession => {}
        CpuArena::Exact => match exact_arena_registered() {
            Ok(()) => {
                builder = builder
                    .with_env_allocators()
                    .map_err(|e| -> ort::Error { e.into() })?;
            }
            Err(reason) => tracing::warn!(
                "could not register the exact-growth CPU arena ({reason}); using the session's own arena"
            ),
        },
        CpuArena::Off => {
            // Only sets the session's CPU-arena option: the CPU provider is always registered
            // last.
            let cpu = ort::ep::CPU::default().with_arena_allocator(false).build();
            builder = builder
                .with_execution_providers([cpu])
                .map_err(|e| -> ort::Error { e.into() })?;
        }
    }
    Ok(builder)
}

/// Registers the process-wide exact-growth CPU arena on the environment, once.
fn exact_arena_registered() -> std::result::Result<(), String> {
    static REGISTERED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let env = crate::library::environment()
                .ok_or_else(|| "ONNX Runtime is not loaded".to_owned())?;
            crate::native::register_exact_cpu_arena(env)
        })
        .clone()
}

fn register_device(
    builder: Builder,
    env: &ort::environment::Environment,
    options: &SessionOptions,
) -> Result<(Builder, Device)> {
    match options.device {
        Device::Cpu => Ok((builder, Device::Cpu)),
        device => match register_gpu(builder, device, options) {
            Ok(b) => Ok((b, device)),
            Err((b, reason)) => {
                if options.allow_cpu_fallback {
                    tracing::warn!(
                        "{device} unavailable ({reason}); falling back to the CPU as asked"
                    );
                    match b {
                        Some(b) => Ok((*b, Device::Cpu)),
                        None => {
                            let b = Session::builder(env).map_err(|e| Error::ModelLoad {
                                path: String::new(),
                                reason: e.to_string(),
                            })?;
                            Ok((b, Device::Cpu))
                        }
                    }
                } else {
                    Err(Error::DeviceUnavailable {
                        device: device.to_string(),
                        reason: format!("{reason}; or pass --allow-cpu-fallback to run on the CPU"),
                    })
                }
            }
        },
    }
}

/// Whether this build can register `device`'s execution provider (its cargo feature).
pub(crate) fn built_with(device: Device) -> bool {
    match device {
        Device::Cpu => true,
        Device::Cuda => cfg!(feature = "cuda"),
        Device::TensorRt => cfg!(feature = "tensorrt"),
        Device::OpenVino => true,
    }
}

/// The providers registered for `device`, in priority order: TensorRT hands what it cannot
/// run to CUDA (when built in) before the CPU.
#[cfg(any(feature = "cuda", feature = "tensorrt"))]
fn dispatches(device: Device) -> Vec<ort::ep::ExecutionProviderDispatch> {
    let mut eps = Vec::new();
    #[cfg(feature = "tensorrt")]
    if device == Device::TensorRt {
        eps.push(ort::ep::TensorRT::default().build().error_on_failure());
    }
    // TF32 off: the provider's default allows it, which put the real Xception's features
    // 1.5e-3 and its worst gradient 0.12 from the CPU's on an H200; fp32 kept them at 1.3e-6
    // and 4.1e-3 and was not slower there (README, GPU).
    #[cfg(feature = "cuda")]
    if device != Device::Cpu {
        eps.push(
            ort::ep::CUDA::default()
                .with_tf32(false)
                .build()
                .error_on_failure(),
        );
    }
    eps
}

#[allow(unused_mut, unused_variables)]
fn register_gpu(
    mut builder: Builder,
    device: Device,
    options: &SessionOptions,
) -> std::result::Result<Builder, (Option<Box<Builder>>, String)> {
    let feature = match device {
        Device::Cuda => "cuda",
        Device::TensorRt => "tensorrt",
        Device::OpenVino => return register_openvino(builder, options),
        Device::Cpu => return Ok(builder),
    };
    #[cfg(any(feature = "cuda", feature = "tensorrt"))]
    if built_with(device) {
        let ort_lib = crate::loaded_library().unwrap_or(Path::new(""));
        if let Err(e) = crate::gpu::prepare(device, ort_lib, options.trt_lib_dir.as_deref()) {
            let reason = match e {
                Error::DeviceUnavailable { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err((Some(Box::new(builder)), reason));
        }
        return builder
            .with_execution_providers(dispatches(device))
            .map_err(|e| {
                (
                    None,
                    format!(
                        "ONNX Runtime could not start it ({e}); `xfer doctor --device {device}` checks what it needs"
                    ),
                )
            });
    }
    Err((
        Some(Box::new(builder)),
        format!(
            "this xfer was built without the `{feature}` feature; rebuild with `cargo build --release --features {feature}`"
        ),
    ))
}

/// Registers the OpenVINO provider at the options' precision, after checking that the loaded
/// ONNX Runtime has it.
fn register_openvino(
    builder: Builder,
    options: &SessionOptions,
) -> std::result::Result<Builder, (Option<Box<Builder>>, String)> {
    let ort_lib = crate::loaded_library().unwrap_or(Path::new(""));
    if let Some(problem) = crate::openvino::provider_problem(ort_lib) {
        return Err((Some(Box::new(builder)), problem));
    }
    let ep = crate::openvino::dispatch(
        options.precision(),
        options.intra_threads,
        options.static_input.as_deref(),
    );
    builder.with_execution_providers([ep]).map_err(|e| {
        (
            None,
            format!("ONNX Runtime could not start the OpenVINO provider ({e})"),
        )
    })
}
