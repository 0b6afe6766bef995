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
    /// NVIDIA CUDA (cargo feature `cuda`, onnxruntime-gpu library).
    Cuda,
    /// NVIDIA TensorRT (cargo feature `tensorrt`).
    TensorRt,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::TensorRt => "tensorrt",
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
            other => Err(format!(
                "unknown device `{other}`; expected cpu, cuda or tensorrt"
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
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("device", &self.device)
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
        let (builder, device) = register_device(builder, env, options)?;
        let mut builder = builder;
        let session = builder.commit_from_memory(bytes).map_err(load_err)?;
        Ok(Model {
            session,
            name: name.to_owned(),
            device,
        })
    }

    /// The device this session actually runs on.
    pub fn device(&self) -> Device {
        self.device
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
        let mut values: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::with_capacity(inputs.len());
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
        let run_err = |e: ort::Error| Error::Run {
            model: self.name.clone(),
            reason: e.to_string(),
        };
        let outputs = self.session.run(values).map_err(run_err)?;
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
    #[cfg(feature = "cuda")]
    if device != Device::Cpu {
        eps.push(ort::ep::CUDA::default().build().error_on_failure());
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
