//! Device-resident tensors and I/O bindings: tensors that live in a session's device memory
//! (CUDA memory for `cuda`/`tensorrt`, host memory for the CPU) and stay bound to session
//! inputs and outputs between runs, so that a loop of runs copies only what it asks for.
//!
//! A [`DeviceTensor`] is allocated once ([`DeviceMemory::upload`]) and bound by reference:
//! as an input ([`Binding::input`]) the session reads it where it is; as an output
//! ([`Binding::output`]) the session writes into it in place. Host data bound with
//! [`Binding::input_host`] is copied to the device once, when bound; outputs bound with
//! [`Binding::output_host`] come back to the host after each [`Model::run_bound`].

use ndarray::ArrayD;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::Tensor;

use crate::session::{Device, InputTensor, Model, OutputTensor, output_tensor};
use crate::{Error, Result};

/// Allocates [`DeviceTensor`]s in the memory of one session's device.
#[derive(Debug)]
pub struct DeviceMemory {
    allocator: Allocator,
    device: Device,
}

/// A float32 tensor in device memory (see [`DeviceMemory`]).
#[derive(Debug)]
pub struct DeviceTensor {
    value: Tensor<f32>,
    shape: Vec<usize>,
}

/// Inputs and outputs bound to one session for [`Model::run_bound`]; they stay bound until
/// bound again.
#[derive(Debug)]
pub struct Binding {
    io: IoBinding,
    /// Outputs that come back to the host, in binding order.
    host_outputs: Vec<String>,
}

fn ort_err(op: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Device {
        op: op.to_owned(),
        reason: e.to_string(),
    }
}

impl Model {
    /// The allocator of this session's device memory: CUDA memory when the session runs on
    /// `cuda` or `tensorrt`, host memory on the CPU (and for OpenVINO, which runs on it).
    pub fn device_memory(&self) -> Result<DeviceMemory> {
        let allocator = match self.device() {
            Device::Cpu | Device::OpenVino => Allocator::default(),
            Device::Cuda | Device::TensorRt => {
                let info = MemoryInfo::new(
                    AllocationDevice::CUDA,
                    0,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(ort_err("describing CUDA memory"))?;
                Allocator::new(&self.session, info)
                    .map_err(ort_err("creating the CUDA allocator"))?
            }
        };
        Ok(DeviceMemory {
            allocator,
            device: self.device(),
        })
    }

    /// An empty binding for this session.
    pub fn binding(&self) -> Result<Binding> {
        Ok(Binding {
            io: self
                .session
                .create_binding()
                .map_err(ort_err("creating an I/O binding"))?,
            host_outputs: Vec::new(),
        })
    }

    /// Runs the session on what `binding` binds. Outputs bound to device tensors are written
    /// in place; those bound with [`Binding::output_host`] are returned, in binding order.
    pub fn run_bound(&mut self, binding: &Binding) -> Result<Vec<(String, OutputTensor)>> {
        let run_err = |e: ort::Error| Error::Run {
            model: self.name.clone(),
            reason: e.to_string(),
        };
        let mut outputs = self.session.run_binding(&binding.io).map_err(run_err)?;
        let mut result = Vec::with_capacity(binding.host_outputs.len());
        for name in &binding.host_outputs {
            let value = outputs.remove(name.as_str()).ok_or_else(|| Error::Run {
                model: self.name.clone(),
                reason: format!("bound output `{name}` was not produced"),
            })?;
            let tensor = output_tensor(&self.name, name, &value)?;
            result.push((name.clone(), tensor));
        }
        Ok(result)
    }
}

impl DeviceMemory {
    /// The device this memory belongs to.
    pub fn device(&self) -> Device {
        self.device
    }

    /// A tensor of shape `shape` holding `data` (row-major), copied to the device.
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<DeviceTensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::Device {
                op: "uploading a tensor".to_owned(),
                reason: format!("shape {shape:?} holds {numel} values, given {}", data.len()),
            });
        }
        let mut value = Tensor::<f32>::new(&self.allocator, shape.to_vec())
            .map_err(ort_err("allocating device memory"))?;
        if value.memory_info().is_cpu_accessible() {
            value.extract_tensor_mut().1.copy_from_slice(data);
        } else {
            let host = Tensor::from_array((shape.to_vec(), data.to_vec()))
                .map_err(ort_err("staging a tensor on the host"))?;
            host.copy_into(&mut value)
                .map_err(ort_err("copying a tensor to the device"))?;
        }
        Ok(DeviceTensor {
            value,
            shape: shape.to_vec(),
        })
    }

    /// A tensor of zeros of shape `shape`.
    pub fn zeros(&self, shape: &[usize]) -> Result<DeviceTensor> {
        self.upload(shape, &vec![0.0; shape.iter().product()])
    }
}

impl DeviceTensor {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Copies the tensor back to the host (row-major).
    pub fn download(&self) -> Result<Vec<f32>> {
        if self.value.memory_info().is_cpu_accessible() {
            return Ok(self.value.extract_tensor().1.to_vec());
        }
        let host = self
            .value
            .to(AllocationDevice::CPU, 0)
            .map_err(ort_err("copying a tensor to the host"))?;
        Ok(host.extract_tensor().1.to_vec())
    }
}

impl Binding {
    /// Binds input `name` to `tensor` where it lives: the session reads its contents at
    /// each run.
    pub fn input(&mut self, name: &str, tensor: &DeviceTensor) -> Result<()> {
        self.io
            .bind_input(name, &tensor.value)
            .map_err(|e| bind_err(name, e))
    }

    /// Binds input `name` to host data, copied to the session's device now.
    pub fn input_host(&mut self, name: &str, tensor: &InputTensor<'_>) -> Result<()> {
        let bound = match tensor {
            InputTensor::F32(a) => {
                Tensor::from_array(to_owned(a)).and_then(|t| self.io.bind_input(name, &t))
            }
            InputTensor::I64(a) => {
                Tensor::from_array(to_owned(a)).and_then(|t| self.io.bind_input(name, &t))
            }
        };
        bound.map_err(|e| bind_err(name, e))
    }

    /// Binds output `name` to `tensor`: each run writes the output into it, on the device.
    pub fn output(&mut self, name: &str, tensor: &mut DeviceTensor) -> Result<()> {
        self.io
            .bind_output(name, &mut tensor.value)
            .map_err(|e| bind_err(name, e))
    }

    /// Binds output `name` to host memory: [`Model::run_bound`] returns it after each run.
    pub fn output_host(&mut self, name: &str) -> Result<()> {
        let info = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(|e| bind_err(name, e))?;
        self.io
            .bind_output_to_device(name, &info)
            .map_err(|e| bind_err(name, e))?;
        if !self.host_outputs.iter().any(|n| n == name) {
            self.host_outputs.push(name.to_owned());
        }
        Ok(())
    }
}

/// An owned, contiguous copy of `a` (ONNX Runtime keeps bound host inputs alive itself).
fn to_owned<T: Clone>(a: &ndarray::ArrayViewD<'_, T>) -> ArrayD<T> {
    a.as_standard_layout().into_owned()
}

fn bind_err(name: &str, e: ort::Error) -> Error {
    Error::Input {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}
